"""Meta-training the learned optimizers: the outer-training protocol and antithetic ES.

The protocol has four parts, each a plain function, so another strategy (PES, truncated
backprop) can replace :func:`es_update` without touching the rest:

1. **init** — :func:`init_state`: the untrained policy (zero heads, i.e. exactly the base
   optimizer: Adam for Opt2Vec, the wrapped optimizer for the controller) and the outer
   ``torch.optim.Adam`` over θ. Starting from a strong, safe optimizer means every ES step only has to
   find an improvement on it.
2. **unroll** — :func:`unroll`: train a freshly initialised model of a sampled task
   (:func:`sample_task`: data set, architecture, activation, width, batch size, base lr and
   an input-scale augmentation, drawn from :class:`MetaTrainConfig`) for ``unroll_steps``
   inner steps with the learned optimizer under meta-parameters θ, through the same
   :func:`~metalearner.train.train_step` every other training uses.
3. **meta-loss** — :func:`meta_loss`: the mean over the unroll of ``log(L_t / L_0)`` (the
   inner training losses relative to the first one) plus ``val_weight · log(L_val / L_0)``
   at the end; a non-finite loss costs the maximum ``+2`` per remaining step. The reward of
   the controller is its negative: loss improvement.
4. **update** — :func:`es_update`: antithetic evolution strategies. For ``pairs`` tasks,
   draw ε_i ~ N(0, I) and unroll θ + σε_i and θ − σε_i on the *same* task, initial weights
   and batches (common random numbers), and step the outer Adam along

   .. math:: \\hat g = \\frac{1}{2σ N} \\sum_i (\\mathcal L(θ+σε_i) - \\mathcal L(θ-σε_i))\\, ε_i

   The 2N unrolls of a step run through an executor of :mod:`metalearner.parallel` (local processes, inline, Ray).

Each outer step draws its tasks and noise from ``(seed, step)`` only, and the checkpoint
(``checkpoint.safetensors``: θ and the outer Adam's ``state_dict`` tensors, with the config,
step, its param groups, the meta-loss curve and the tasks seen in its metadata; ``state.json``
a readable copy) is written atomically after every step, so a killed run resumes exactly where
it stopped.
"""

from __future__ import annotations

import functools
import json
import math
import os
import time
from collections import Counter
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from metalearner.atomic import atomic_path, write_json
from metalearner.errors import ConfigError, DataError, MetalearnerError
from metalearner.lopt.policy import BASE_FEATURES, CONTROLLER_FEATURES, EXTENDED_FEATURES, META_SPIKE_GUARD, PolicyConfig, PolicyWeights
from metalearner.tasks.sampling import draw
from metalearner.tasks.task import TaskFamily
from metalearner.train.run import check_device, resolve_device


@dataclass(frozen=True)
class MetaTrainConfig:
    """Everything a meta-training run depends on; saved whole in its state and model card."""

    kind: str = "opt2vec"  # or "controller"
    seed: int = 0
    outer_steps: int = 40
    pairs: int = 6  # antithetic pairs (= tasks) per outer step; 2 * pairs unrolls
    sigma: float = 0.05
    outer_lr: float = 0.02
    unroll_steps: int = 512
    val_weight: float = 1.0
    # the task distribution: 4000 examples, batches of 64-128 and 512-step unrolls, so that an
    # unroll spans about 8-16 epochs, the regime the benchmark runs in. On 512-example tasks
    # an unroll was 16-32 epochs (64-128 at 1024 steps), and the policies learned to raise the
    # lr 4-5x, which stalled them on MNIST (README, time to target). Widths avoid the
    # benchmark's 128 and 256.
    datasets: tuple[str, ...] = ("mnist1d", "synthetic")
    depths: tuple[int, ...] = (1, 2)
    widths: tuple[int, ...] = (48, 96, 192)
    activations: tuple[str, ...] = ("relu", "tanh", "gelu", "silu")
    batch_sizes: tuple[int, ...] = (64, 128)
    n_train: int = 4000
    data_seeds: tuple[int, ...] = (0, 1)
    base_lrs: tuple[float, ...] = (3e-4, 1e-3, 3e-3)
    input_scales: tuple[float, ...] = (0.5, 1.0, 2.0)  # augmentation: inputs times this factor
    base_optimizers: tuple[str, ...] = ("adam",)  # what the controller wraps ("adam", "momentum")
    eval_tasks: int = 8  # fixed tasks scored before and after training
    # the policy
    history_length: int = 16
    hidden_dim: int = 32
    embedding_dim: int = 64
    activation: str = "gelu"
    observe_every: int = 16
    extended: bool = True
    device: str = "cpu"  # where the unrolls run: cpu, cuda or auto

    def __post_init__(self) -> None:
        for f in fields(self):
            if isinstance(getattr(self, f.name), list):
                object.__setattr__(self, f.name, tuple(getattr(self, f.name)))
        if self.kind not in ("opt2vec", "controller"):
            raise ConfigError(f"unknown kind {self.kind!r}; choose from opt2vec, controller (or learned: the batched engine)")
        check_device(self.device)
        if self.outer_steps < 0 or self.pairs < 1 or self.unroll_steps < 2 or self.sigma <= 0 or self.outer_lr <= 0:
            raise ConfigError("outer_steps >= 0, pairs >= 1, unroll_steps >= 2, sigma > 0 and outer_lr > 0 are required")

    def policy(self) -> PolicyConfig:
        if self.kind == "opt2vec":
            features = (*BASE_FEATURES, *EXTENDED_FEATURES) if self.extended else BASE_FEATURES
        else:
            features = CONTROLLER_FEATURES
        return PolicyConfig(kind=self.kind, features=features, history_length=self.history_length, hidden_dim=self.hidden_dim,
                            embedding_dim=self.embedding_dim, activation=self.activation, observe_every=self.observe_every)  # fmt: skip

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "MetaTrainConfig":
        return cls(**d)


# Shapes of the shipped policies: Opt2Vec 7.5k parameters, the controller 1.2k.
CONTROLLER_DEFAULTS = dict(kind="controller", history_length=8, hidden_dim=16, embedding_dim=16, activation="tanh")


def default_config(kind: str = "opt2vec", **overrides: Any) -> MetaTrainConfig:
    base = dict(CONTROLLER_DEFAULTS) if kind == "controller" else {"kind": kind}
    return MetaTrainConfig(**{**base, **overrides})


# -- tasks ------------------------------------------------------------------------------------


def task_family(cfg: MetaTrainConfig) -> TaskFamily:
    """The distribution of inner problems' tasks (data set, data seed, architecture, batch size)."""
    return TaskFamily(datasets=cfg.datasets, depths=cfg.depths, widths=cfg.widths, activations=cfg.activations,
                      batch_sizes=cfg.batch_sizes, n_train=cfg.n_train, data_seeds=cfg.data_seeds)  # fmt: skip


def sample_task(cfg: MetaTrainConfig, rng: np.random.Generator) -> dict[str, Any]:
    """One inner problem as a plain dict (picklable, JSON-able): a task from
    :func:`task_family`, then the optimizer side (base lr, input-scale augmentation, base
    optimizer) and the seeds of the initial weights and of the batches."""
    task = task_family(cfg).sample(rng)
    return {
        "dataset": task.dataset,
        "data_seed": task.seed,
        "depth": task.model.depth,
        "width": task.model.width,
        "activation": task.model.activation,
        "batch_size": task.batch_size,
        "base_lr": float(draw(cfg.base_lrs, rng)),
        "input_scale": float(draw(cfg.input_scales, rng)),
        "optimizer": draw(cfg.base_optimizers, rng),
        "init_seed": int(rng.integers(2**31)),
        "batch_seed": int(rng.integers(2**31)),
        "n_train": cfg.n_train,
    }


@functools.lru_cache(maxsize=32)
def _splits(dataset: str, data_seed: int, n_train: int):
    from metalearner.tasks.data import load_dataset_capped

    options = {"num_samples": 2000} if dataset == "mnist1d" else {}
    return load_dataset_capped(dataset, seed=data_seed, n_train=n_train, **options)


def _optimizer(kind: str, weights: PolicyWeights, params, spec: dict[str, Any], steps: int):
    """The learned optimizer of an unroll, from the method registry (with meta-training's
    looser loss-spike guard)."""
    from metalearner.methods import get_method

    if kind == "opt2vec":
        ext = "budget_fraction" in weights.config.features
        return get_method("opt2vec").build(params, lr=spec["base_lr"], total_steps=steps, weights=weights, use_extended_features=ext,
                                           spike_guard=META_SPIKE_GUARD)[0]  # fmt: skip
    lr = spec["base_lr"] * (30.0 if spec["optimizer"] == "momentum" else 1.0)
    return get_method(spec["optimizer"] + "+controller").build(params, lr=lr, weights=weights, spike_guard=META_SPIKE_GUARD)[0]


def unroll(kind: str, weights: PolicyWeights, spec: dict[str, Any], steps: int, device: str = "cpu") -> tuple[list[float], float]:
    """Train the task's model for ``steps`` steps on ``device``; returns the batch losses and
    the final validation loss (NaN on divergence)."""
    from metalearner.tasks.models import ModelConfig, build_model
    from metalearner.train import evaluate, train_step
    import torch.nn.functional as F

    data = _splits(spec["dataset"], spec["data_seed"], spec["n_train"])
    model = build_model(ModelConfig(depth=spec["depth"], width=spec["width"], activation=spec["activation"]),
                        data.input_shape, data.n_classes, seed=spec["init_seed"]).to(device)  # fmt: skip
    opt = _optimizer(kind, weights, model.parameters(), spec, steps)
    x, y = (data.x_train * spec["input_scale"]).to(device), data.y_train.to(device)
    gen = torch.Generator().manual_seed(spec["batch_seed"])
    losses: list[float] = []
    for _ in range(steps):
        idx = torch.randint(0, len(x), (spec["batch_size"],), generator=gen).to(device)
        losses.append(float(train_step(model, opt, F.cross_entropy, x[idx], y[idx]).detach()))
        if not math.isfinite(losses[-1]):
            return losses, math.nan
    val_loss, _ = evaluate(model, (data.x_val * spec["input_scale"]).to(device), data.y_val.to(device), F.cross_entropy)
    return losses, val_loss


def meta_loss(losses: list[float], val_loss: float, steps: int, val_weight: float = 1.0) -> float:
    """Mean ``log(L_t / L_0)`` over the unroll (+2 per step lost to divergence) plus
    ``val_weight · log(L_val / L_0)``; clipped to ``[-10, 2]`` per term."""
    l0 = losses[0]
    if not (math.isfinite(l0) and l0 > 0):
        return 2.0 * (1 + val_weight)
    terms = [min(2.0, max(-10.0, math.log(l / l0))) if math.isfinite(l) and l > 0 else 2.0 for l in losses]
    terms += [2.0] * (steps - len(terms))
    val = min(2.0, max(-10.0, math.log(val_loss / l0))) if math.isfinite(val_loss) and val_loss > 0 else 2.0
    return float(np.mean(terms)) + val_weight * val


def evaluate_member(item: tuple) -> float:
    """Executor work item: ``(kind, policy config dict, flat θ (numpy), spec, steps, val_weight,
    device)`` -> meta-loss. Module-level so process pools can pickle it."""
    kind, policy, flat, spec, steps, val_weight, device = item
    torch.manual_seed(spec["init_seed"])
    weights = PolicyWeights.init(PolicyConfig.from_dict(policy)).with_flat(torch.from_numpy(np.asarray(flat)))
    losses, val = unroll(kind, weights, spec, steps, resolve_device(device))
    return meta_loss(losses, val, steps, val_weight)


# -- outer state ------------------------------------------------------------------------------


@dataclass
class MetaState:
    theta: torch.nn.Parameter  # flat meta-parameters
    outer: torch.optim.Adam  # over [theta]
    step: int = 0
    curve: list[dict[str, float]] = field(default_factory=list)
    tasks_seen: list[dict[str, Any]] = field(default_factory=list)
    evaluation: dict[str, Any] = field(default_factory=dict)


def init_state(cfg: MetaTrainConfig) -> MetaState:
    """Protocol step 1: the untrained policy (= the base optimizer) and a fresh outer Adam."""
    theta = torch.nn.Parameter(PolicyWeights.init(cfg.policy(), seed=cfg.seed).flat())
    return MetaState(theta=theta, outer=torch.optim.Adam([theta], lr=cfg.outer_lr))


def _run_population(executor, items: list[tuple]) -> list[float]:
    out: list[float] = [math.nan] * len(items)
    for item, result in executor.map_unordered(_indexed, list(enumerate(items))):
        if isinstance(result, BaseException):
            raise MetalearnerError(f"an unroll failed: {type(result).__name__}: {result}")
        out[item[0]] = result
    return out


def _indexed(item: tuple[int, tuple]) -> float:
    return evaluate_member(item[1])


def es_update(cfg: MetaTrainConfig, state: MetaState, executor) -> dict[str, float]:
    """Protocol steps 2-4 for one outer step of antithetic ES; updates ``state`` in place."""
    rng = np.random.default_rng([cfg.seed, state.step])
    specs = [sample_task(cfg, rng) for _ in range(cfg.pairs)]
    theta = state.theta.detach()
    noise = torch.randn(cfg.pairs, len(theta), generator=torch.Generator().manual_seed(int(rng.integers(2**62))))
    policy = asdict(cfg.policy())
    items = []
    for i, spec in enumerate(specs):
        for sign in (1.0, -1.0):
            flat = (theta + sign * cfg.sigma * noise[i]).numpy()
            items.append((cfg.kind, policy, flat, spec, cfg.unroll_steps, cfg.val_weight, cfg.device))
    losses = torch.tensor(_run_population(executor, items)).view(cfg.pairs, 2)
    diff = losses[:, 0] - losses[:, 1]
    grad = (diff[:, None] * noise).sum(0) / (2 * cfg.sigma * cfg.pairs)
    state.theta.grad = grad
    state.outer.step()
    state.step += 1
    record = {"step": state.step, "meta_loss": float(losses.mean()), "grad_norm": float(grad.norm())}
    state.curve.append(record)
    state.tasks_seen.extend(specs)
    return record


def eval_specs(cfg: MetaTrainConfig) -> list[dict[str, Any]]:
    rng = np.random.default_rng([cfg.seed, 10**9])
    return [sample_task(cfg, rng) for _ in range(cfg.eval_tasks)]


def evaluate_theta(cfg: MetaTrainConfig, theta: torch.Tensor, executor, specs: list[dict[str, Any]] | None = None) -> list[float]:
    """Meta-loss of θ (no noise) on fixed tasks: the yardstick for before/after."""
    specs = eval_specs(cfg) if specs is None else specs
    policy = asdict(cfg.policy())
    items = [(cfg.kind, policy, theta.detach().numpy(), s, cfg.unroll_steps, cfg.val_weight, cfg.device) for s in specs]
    return _run_population(executor, items)


# -- checkpoints ------------------------------------------------------------------------------


def save_checkpoint(out_dir: Path, cfg: MetaTrainConfig, state: MetaState) -> None:
    """θ, the outer Adam's state and the record in one atomic safetensors file (the record in
    its metadata, so that a kill can never leave them from different steps); ``state.json`` is
    a readable copy of the record."""
    from safetensors.torch import save_file

    from metalearner.lopt.engine import optimizer_tensors  # here: importing the package need not load the batched engine

    outer, groups = optimizer_tensors(state.outer)
    record = {"config": asdict(cfg), "step": state.step, "outer_param_groups": groups, "curve": state.curve,
              "tasks_seen": state.tasks_seen, "evaluation": state.evaluation}  # fmt: skip
    with atomic_path(out_dir / "checkpoint.safetensors") as tmp:
        save_file({"theta": state.theta.detach().contiguous(), **outer}, str(tmp), metadata={"state": json.dumps(record)})
    write_json(out_dir / "state.json", record)


def load_checkpoint(out_dir: Path, cfg: MetaTrainConfig) -> MetaState | None:
    ckpt = out_dir / "checkpoint.safetensors"
    if not ckpt.is_file():
        return None
    from safetensors import safe_open

    from metalearner.lopt.engine import load_optimizer_tensors

    try:
        with safe_open(str(ckpt), framework="pt") as f:
            meta = f.metadata() or {}
            t = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:
        raise MetalearnerError(f"{ckpt} is not a readable safetensors checkpoint: {e}") from None
    if "theta" not in t:
        raise DataError(f"{ckpt} is not a meta-train checkpoint (no theta); use a new --out")
    if "state" not in meta:
        raise ConfigError(f"{out_dir} holds a run of an older version (its own outer Adam, not torch.optim.Adam); use a new --out")
    saved = json.loads(meta["state"])
    # a run may be extended (more outer steps); anything else must match
    if {**saved["config"], "outer_steps": 0} != {**json.loads(json.dumps(asdict(cfg))), "outer_steps": 0}:
        raise ConfigError(f"{out_dir} holds a run with a different config; use a new --out or the same config")
    state = init_state(cfg)
    with torch.no_grad():
        state.theta.copy_(t["theta"])
    load_optimizer_tensors(state.outer, t, saved["outer_param_groups"])
    return replace(state, step=int(saved["step"]), curve=saved["curve"], tasks_seen=saved["tasks_seen"],
                   evaluation=saved.get("evaluation", {}))  # fmt: skip


def summarise_tasks(tasks: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "unroll_tasks": len(tasks),
        "datasets": dict(Counter(t["dataset"] for t in tasks)),
        "activations": dict(Counter(t["activation"] for t in tasks)),
        "architectures": dict(Counter(f"mlp depth {t['depth']} width {t['width']}" for t in tasks)),
    }


# -- the driver -------------------------------------------------------------------------------


def meta_train(
    cfg: MetaTrainConfig,
    out_dir: str | os.PathLike,
    *,
    executor: Any = None,
    workers: int | None = None,
    resume: bool = True,
    progress: bool = True,
    on_step: Callable[[dict[str, float]], None] | None = None,
) -> tuple[PolicyWeights, MetaState]:
    """Run (or resume) meta-training; writes ``out_dir/{kind}.safetensors`` and the state."""
    from metalearner.parallel import make_executor
    from metalearner.progress import Progress

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = load_checkpoint(out, cfg) if resume else None
    state = state or init_state(cfg)
    own = executor is None
    ex = executor or make_executor("local", workers if workers is not None else 2)
    t0 = time.perf_counter()
    earlier = state.curve[-1].get("elapsed_s", 0.0) if state.curve else 0.0  # cumulative across resumes
    try:
        with Progress(progress) as display:
            bar = display.bar(f"meta-train {cfg.kind}", cfg.outer_steps, completed=state.step, info="meta-loss {meta_loss:.4f}", meta_loss=math.nan)
            if "initial" not in state.evaluation:
                state.evaluation["initial"] = evaluate_theta(cfg, state.theta, ex)
                save_checkpoint(out, cfg, state)
            while state.step < cfg.outer_steps:
                record = es_update(cfg, state, ex)
                record["elapsed_s"] = earlier + time.perf_counter() - t0
                save_checkpoint(out, cfg, state)
                bar.update(state.step, meta_loss=record["meta_loss"])
                if on_step:
                    on_step(record)
            if state.evaluation.get("final_at") != state.step:
                state.evaluation["final_at"] = state.step
                state.evaluation["final"] = evaluate_theta(cfg, state.theta, ex)
    finally:
        if own:
            ex.close()
    ev = state.evaluation
    ev["initial_mean"] = float(np.mean(ev["initial"]))
    ev["final_mean"] = float(np.mean(ev["final"]))
    save_checkpoint(out, cfg, state)
    weights = PolicyWeights.init(cfg.policy()).with_flat(state.theta.detach())
    meta = {"meta_train_config": json.dumps(asdict(cfg)), "outer_steps_done": str(state.step)}
    weights.save(out / f"{cfg.kind}.safetensors", metadata=meta)
    return weights, state
