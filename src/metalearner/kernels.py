"""Functional optimizer math shared by the learned optimizers (``lopt``) and the towers (``meta``),
and the check of a loaded state they share."""

from __future__ import annotations

import math

import torch

from metalearner.errors import ConfigError


def adam_moments_(
    grads: list[torch.Tensor],
    exp_avgs: list[torch.Tensor],
    exp_avg_sqs: list[torch.Tensor],
    *,
    beta1: float,
    beta2: float,
    bias_correction2: float,
    eps: float,
) -> list[torch.Tensor]:
    """Adam's moment update, in place, and its denominator:
    ``m ← β₁m + (1−β₁)g``, ``v ← β₂v + (1−β₂)g²``; returns ``√(v / bias_correction2) + ε``."""
    torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)
    torch._foreach_mul_(exp_avg_sqs, beta2)
    torch._foreach_addcmul_(exp_avg_sqs, grads, grads, 1 - beta2)
    denom = torch._foreach_sqrt(exp_avg_sqs)
    torch._foreach_div_(denom, math.sqrt(bias_correction2))
    torch._foreach_add_(denom, eps)
    return denom


def check_state_fits(optimizer: torch.optim.Optimizer, state_dict: dict, keys: tuple[str, ...] | None = None) -> None:
    """Before ``load_state_dict``: every per-parameter state tensor (beyond 0-d counters) of
    ``state_dict`` has the shape of the parameter it will be given to (torch pairs them by
    order), else a one-line error (another model's state, or its parameters in another order),
    before the optimizer changes or a step fails on it. ``keys``: only these entries (the
    others may have other shapes), else every one."""
    params = [p for g in optimizer.param_groups for p in g["params"]]
    saved = [i for g in state_dict.get("param_groups", []) for i in g.get("params", [])]
    if len(saved) != len(params):
        return  # torch refuses it in its own words
    for p, i in zip(params, saved):
        for name, v in state_dict.get("state", {}).get(i, {}).items():
            if torch.is_tensor(v) and v.dim() > 0 and v.shape != p.shape and (keys is None or name in keys):
                raise ConfigError(f"this state does not fit the parameters: {name!r} has shape {tuple(v.shape)} for a parameter "
                                  f"of shape {tuple(p.shape)} (another model's state, or its parameters in another order)")  # fmt: skip


def check_dense_grads(params: list[torch.Tensor], name: str) -> None:
    """A one-line error, before a step changes anything, for a sparse gradient (``nn.Embedding(...,
    sparse=True)``): these optimizers' ``foreach`` kernels take dense tensors, as torch's Adam does."""
    if any(p.grad is not None and p.grad.is_sparse for p in params):
        raise ConfigError(f"{name} does not take sparse gradients; use a dense embedding (sparse=False) or torch.optim.SparseAdam")
