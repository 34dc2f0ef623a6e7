"""Functional optimizer math shared by the learned optimizers (``lopt``) and the towers (``meta``)."""

from __future__ import annotations

import math

import torch


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
