"""A learned optimizer dropped into an existing loop: Opt2Vec replaces Adam in one line.
Its learning rate stays yours in ``param_groups[i]["lr"]``; what it applied at each step is
in ``param_groups[i]["effective_lr"]``. Plots that lr next to the loss.

    python examples/learned_optimizer_drop_in.py --plot lr.png
"""

import argparse

import torch
import torch.nn.functional as F
from torch import nn

from metalearner.lopt import Opt2Vec
from metalearner.tasks import ModelConfig, TaskConfig, make_task

p = argparse.ArgumentParser()
p.add_argument("--steps", type=int, default=400)
p.add_argument("--plot", default="learned_lr.png")
args = p.parse_args()

data = make_task(TaskConfig(dataset="digits", model=ModelConfig(depth=1, width=32))).data
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(data.x_train.shape[1], 128), nn.GELU(), nn.Linear(128, 10))
opt = Opt2Vec(model.parameters(), lr=1e-3, budget=args.steps)  # was: torch.optim.Adam(model.parameters(), lr=1e-3); shipped weights

losses, lrs = [], []
for step in range(args.steps):
    idx = torch.randint(0, len(data.x_train), (64,))
    loss = F.cross_entropy(model(data.x_train[idx]), data.y_train[idx])
    opt.zero_grad()
    loss.backward()
    opt.step(loss=loss)  # the learned policy reads the loss (a closure works too)
    losses.append(loss.item())
    lrs.append(opt.param_groups[0]["effective_lr"])

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

fig, (a, b) = plt.subplots(2, 1, figsize=(6, 5), sharex=True)
a.plot(losses, lw=0.8)
a.set_yscale("log")
a.set_ylabel("training loss")
b.plot(lrs, lw=0.9)
b.set_yscale("log")
b.set_ylabel("applied learning rate")
b.set_xlabel("step")
fig.tight_layout()
fig.savefig(args.plot, dpi=110)
print(f"loss {losses[0]:.3f} -> {losses[-1]:.3f}; applied lr {min(lrs):.2g}..{max(lrs):.2g} (yours: {opt.param_groups[0]['lr']:g}); plot: {args.plot}")
