"""The probe in a hand-written training loop: per-step physics (loss, gradient norm, update
ratio, ...) into trajectory.parquet + run.json, read back as a DataFrame.

    python examples/probe_in_your_loop.py --out runs/probe-example
"""

import argparse

import torch
import torch.nn.functional as F
from torch import nn

from metalearner.observe import Probe, read_trajectory
from metalearner.tasks import ModelConfig, TaskConfig, make_task

p = argparse.ArgumentParser()
p.add_argument("--out", default="runs/probe-example")
p.add_argument("--epochs", type=int, default=2)
p.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
args = p.parse_args()

data = make_task(TaskConfig(dataset="digits", model=ModelConfig(depth=1, width=32))).data  # any tensors will do
model = nn.Sequential(nn.Linear(data.x_train.shape[1], 64), nn.ReLU(), nn.Linear(64, 10))
opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
probe = Probe(model, opt, out_dir=args.out, task="digits", overwrite=args.overwrite)  # hooks on the optimizer: nothing else changes

for epoch in range(args.epochs):
    perm = torch.randperm(len(data.x_train))
    for batch, i in enumerate(range(0, len(perm), 64)):
        idx = perm[i : i + 64]
        logits = model(data.x_train[idx])
        loss = F.cross_entropy(logits, data.y_train[idx])
        opt.zero_grad()
        loss.backward()
        probe.observe(loss, logits=logits, targets=data.y_train[idx], epoch=epoch, batch=batch)  # before step()
        opt.step()
    with torch.no_grad():
        val_logits = model(data.x_val)
        probe.log_eval(F.cross_entropy(val_logits, data.y_val).item(), (val_logits.argmax(-1) == data.y_val).float().mean().item())
probe.close("complete")

df = read_trajectory(args.out, format="pandas")
print(df[["step", "loss", "grad_norm", "update_ratio", "lr"]].tail(3).to_string(index=False))
print(f"{len(df)} steps recorded in {args.out}; final val acc {df['val_acc'].dropna().iloc[-1]:.3f}")
