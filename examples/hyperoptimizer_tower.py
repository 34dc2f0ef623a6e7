"""A hyperoptimizer tower in an ordinary loop: SGD started at a learning rate 1000x too small,
its learning rate learned by gradient descent, whose own step size is learned by one more
level. Prints the learning rate the tower found and each level's hyperparameters.

    python examples/hyperoptimizer_tower.py --steps 600
"""

import argparse

import torch
import torch.nn.functional as F
from torch import nn

from metalearner.meta.towers import Tower, tower_hparams
from metalearner.tasks import ModelConfig, TaskConfig, make_task

p = argparse.ArgumentParser()
p.add_argument("--steps", type=int, default=600)
p.add_argument("--lr", type=float, default=1e-4, help="the starting learning rate (SGD's good one is about 0.1)")
args = p.parse_args()

data = make_task(TaskConfig(dataset="digits", model=ModelConfig(depth=1, width=32))).data
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(data.x_train.shape[1], 64), nn.ReLU(), nn.Linear(64, 10))
opt = Tower(model.parameters(), lr=args.lr, base="sgd", height=2)  # was: torch.optim.SGD(..., lr=args.lr)

for step in range(args.steps):
    idx = torch.randint(0, len(data.x_train), (64,))
    loss = F.cross_entropy(model(data.x_train[idx]), data.y_train[idx])
    opt.zero_grad()
    loss.backward()
    opt.step()

with torch.no_grad():
    acc = (model(data.x_val).argmax(-1) == data.y_val).float().mean().item()
levels = tower_hparams(opt)  # lr (level 0), then hyper_lr_1, hyper_lr_2, ...
print(f"started at lr {args.lr:g}, learned lr {levels['lr']:.3g}; levels: {levels}; val acc {acc:.3f}")
