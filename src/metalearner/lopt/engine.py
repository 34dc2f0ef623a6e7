"""The meta-training engine: estimators × batched populations × a torch outer optimizer.

One outer step::

    g_i  = estimator_i.estimate(θ, state_i, key(seed, step, i)).grad   # one per population
    θ.grad = mean_i g_i;  torch.optim.Adam([θ]).step()

Three things are kept apart (``docs/meta_training.md``):

- the **meta-parameters** θ, a flat vector owned by the learned optimizer
  (:class:`~metalearner.lopt.functional.LearnedKernel`: ``init_theta``; saved as its policy's
  safetensors);
- the **truncated state** of each population of inner problems
  (:class:`~metalearner.lopt.truncation.PopulationStep`), carried across outer steps by PES;
- the **estimator** (:class:`~metalearner.lopt.estimators.PES` or
  :class:`~metalearner.lopt.estimators.AntitheticES`).

Every random choice comes from ``(seed, step)`` or from the population's key, so the same
config gives the same θ, and a resumed run continues bit for bit: the checkpoint
(``engine.safetensors``, written atomically every ``checkpoint_every`` steps) holds θ, the
outer Adam's ``state_dict`` and every estimator's state (PES: the populations' weights,
optimizer states, data positions and accumulators); its metadata holds the config, the step
and the meta-loss curve (also written to ``engine.json`` for reading).

    cfg = EngineConfig(outer_steps=100)
    theta, record = run(cfg, "runs/engine")
"""

from __future__ import annotations

import functools
import json
import os
import time
from dataclasses import asdict, dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from metalearner.atomic import atomic_path, write_json
from metalearner.errors import ConfigError, MetalearnerError
from metalearner.lopt.estimators import PES, AntitheticES, Estimate, GradientEstimator
from metalearner.lopt.functional import KERNEL_FEATURES, PRIORS, LearnedKernel
from metalearner.lopt.policy import PolicyWeights, fan_in_metadata
from metalearner.lopt.truncation import PopulationConfig, PopulationStep, preload_splits

ESTIMATORS = ("pes", "es")
CHECKPOINT = "engine.safetensors"
WEIGHTS = "learned.safetensors"


# The default task family: small and large training sets, inputs of 20 to 128 features, MLPs of
# depth 1-3 and width 48-128 and a CNN, five activations, batch 32-128, base lrs from 1e-3 to
# 3e-2 (above the best lr of many of these tasks, so that raising the lr is not always right).
# (The seventh meta-training, shipped briefly and withdrawn, added each population's best
# lr times 1/30..3 and weight_scales=(1/3, 3): docs/meta_training.md, Experiments.)
# No MNIST, no Fashion-MNIST and no benchmark cell's network (the MNIST-1D CNN cell is 2x32;
# here 1x8, flagged in the README).
_LRS = (1e-3, 2.5e-3, 2.5e-3, 1e-2, 3e-2)
TASK_FAMILY: tuple[PopulationConfig, ...] = (
    PopulationConfig(dataset="mnist1d", depth=2, width=48, activation="relu", base_lrs=_LRS),
    PopulationConfig(dataset="synthetic", depth=1, width=96, activation="tanh", batch_size=128, base_lrs=_LRS),
    PopulationConfig(dataset="digits", n_train=1198, depth=2, width=64, activation="gelu", batch_size=32, base_lrs=_LRS),
    PopulationConfig(dataset="mnist1d", n_train=20000, depth=3, width=64, activation="elu", batch_size=128, base_lrs=_LRS),
    PopulationConfig(dataset="synthetic", n_train=20000, data_options=(("n_features", 128), ("n_classes", 10)), depth=2,
                     width=128, activation="silu", batch_size=128, base_lrs=_LRS),
    PopulationConfig(dataset="mnist1d", family="cnn", depth=1, width=8, activation="relu", base_lrs=_LRS),
)  # fmt: skip
BALANCE_DECAY = 0.9


SAVED_WITHOUT: dict[str, Any] = {"fan_in_power": 0.0, "fan_in_scope": "all"}  # fields a saved EngineConfig may lack: what they were then


@dataclass(frozen=True)
class EngineConfig:
    """Everything a meta-training run depends on; saved whole in its checkpoint."""

    seed: int = 0
    outer_steps: int = 500
    estimator: str = "pes"  # or "es" (full unrolls)
    pairs: int = 16  # antithetic pairs per population: 2 * pairs members run batched
    sigma: float = 0.05
    truncation: int = 64  # PES: inner steps per outer step
    outer_lr: float = 3e-3
    populations: tuple[PopulationConfig, ...] = TASK_FAMILY
    balance: bool = True  # scale each population's estimate by a running mean of its norm
    # the learned optimizer: its base and its policy
    base: str = "schedulefree"
    scales: str = "per_tensor"  # or "global": one multiplier per network (an ablation; docs/meta_training.md)
    # the fixed lr factor min(1, (128/fan_in)^power) (functional.ParamLayout.fan_in_factor) on the tensors of fan_in_scope,
    # "all" or "input" (the input layer only); the default's is 1 on every tensor of the family, so it acts only beyond it
    fan_in_power: float = 0.5
    fan_in_scope: str = "input"
    history_length: int = 8
    hidden_dim: int = 16
    embedding_dim: int = 16
    activation: str = "tanh"
    observe_every: int = 16
    features: tuple[str, ...] = KERNEL_FEATURES
    prior: str = "none"  # θ's start: "none" (zero heads, the plain base) or "integrator" (LearnedKernel.init_theta; docs/meta_training.md, twelfth attempt)
    # the yardstick: θ unperturbed on fixed tasks, before and after
    eval_members: int = 8
    eval_epochs: float = 2.0
    checkpoint_every: int = 10

    def __post_init__(self) -> None:
        pops = tuple(p if isinstance(p, PopulationConfig) else PopulationConfig(**p) for p in self.populations)
        object.__setattr__(self, "populations", pops)
        object.__setattr__(self, "features", tuple(self.features))
        if self.prior not in PRIORS:
            raise ConfigError(f"unknown policy prior {self.prior!r}; choose from {', '.join(PRIORS)}")
        if self.prior == "integrator" and "motion_cos" not in self.features:
            raise ConfigError("the integrator prior reads motion_cos; add it to features or use prior='none'")
        self.lopt()  # the kernel refuses an unknown base or scales, in one line
        if self.estimator not in ESTIMATORS:
            raise ConfigError(f"unknown estimator {self.estimator!r}; choose from {', '.join(ESTIMATORS)}")
        if self.outer_steps < 0 or self.outer_lr <= 0 or not pops or self.checkpoint_every < 1 or self.eval_members < 1:
            raise ConfigError("outer_steps >= 0, outer_lr > 0, at least one population, checkpoint_every >= 1 and eval_members >= 1 are required")

    def lopt(self) -> LearnedKernel:
        return LearnedKernel(LearnedKernel.policy_config(self.history_length, self.hidden_dim, self.embedding_dim,
                                                         self.activation, self.observe_every, self.features), base=self.base, scales=self.scales,
                            fan_in_power=self.fan_in_power, fan_in_scope=self.fan_in_scope)  # fmt: skip

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "EngineConfig":
        """A config saved by ``asdict``; a field added since the save takes what its absence
        meant then (``SAVED_WITHOUT``), not today's default."""
        return cls(**{**SAVED_WITHOUT, **d})


def make_estimator(cfg: EngineConfig, step: PopulationStep) -> GradientEstimator:
    if cfg.estimator == "pes":
        return PES(step, pairs=cfg.pairs, sigma=cfg.sigma, truncation=cfg.truncation)
    return AntitheticES(step, pairs=cfg.pairs, sigma=cfg.sigma)


def _key(*parts: int) -> int:
    return int(np.random.default_rng(list(parts)).integers(2**62))


# -- populations on workers --------------------------------------------------------------------


@functools.lru_cache(maxsize=16)
def _worker_estimator(cfg_json: str, i: int) -> GradientEstimator:
    """A worker's estimator of population ``i``, built the first time it is handed that one
    (its data set with it) and kept for the process's next steps."""
    cfg = EngineConfig.from_dict(json.loads(cfg_json))
    return make_estimator(cfg, PopulationStep(cfg.populations[i], cfg.lopt()))


def _estimate_item(item: tuple[str, int, torch.Tensor, Any, int]) -> Estimate:
    cfg_json, i, theta, state, key = item
    with torch.no_grad():
        return _worker_estimator(cfg_json, i).estimate(theta, state, key)


def _estimate_on(executor: Any, cfg: EngineConfig, theta: torch.Tensor, states: list[Any], keys: list[int]) -> list[Estimate]:
    """Every population's estimate through ``executor``, in population order."""
    cfg_json = json.dumps(asdict(cfg), sort_keys=True)
    out: dict[int, Estimate] = {}
    for item, res in executor.map_unordered(_estimate_item, [(cfg_json, i, theta, s, key) for i, (s, key) in enumerate(zip(states, keys))]):
        if isinstance(res, BaseException):
            raise MetalearnerError(f"population {item[1]} ({cfg.populations[item[1]].dataset}) failed on a worker: {res!r}") from res
        out[item[1]] = res
    return [out[i] for i in range(len(states))]


# -- state trees (dataclasses of tensors) <-> flat safetensors dicts ---------------------------


def tree_tensors(obj: Any, prefix: str) -> dict[str, torch.Tensor]:
    """Every tensor in a (nested) dataclass, keyed by its path."""
    if obj is None:
        return {}
    if isinstance(obj, torch.Tensor):
        return {prefix: obj.contiguous()}
    if is_dataclass(obj):
        return {k: v for f in fields(obj) for k, v in tree_tensors(getattr(obj, f.name), f"{prefix}/{f.name}").items()}
    raise TypeError(f"cannot checkpoint {type(obj).__name__} at {prefix}")


def tree_load(template: Any, tensors: dict[str, torch.Tensor], prefix: str) -> Any:
    """``template`` with every tensor replaced by ``tensors[path]`` (the inverse of :func:`tree_tensors`)."""
    if template is None:
        return None
    if isinstance(template, torch.Tensor):
        return tensors[prefix]
    return replace(template, **{f.name: tree_load(getattr(template, f.name), tensors, f"{prefix}/{f.name}") for f in fields(template)})


def optimizer_tensors(opt: torch.optim.Optimizer, prefix: str = "outer") -> tuple[dict[str, torch.Tensor], list[dict[str, Any]]]:
    """The ``state_dict`` of an optimizer whose per-parameter state is all tensors (Adam's:
    ``step``, ``exp_avg``, ``exp_avg_sq``) as safetensors-ready tensors (``PREFIX/PARAM_ID/NAME``)
    and its JSON-able param groups: a checkpoint without pickle."""
    sd = opt.state_dict()
    tensors = {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if not isinstance(v, torch.Tensor):
                raise TypeError(f"optimizer_tensors takes tensor-valued state; {type(opt).__name__} has {k}={v!r}")
            tensors[f"{prefix}/{pid}/{k}"] = v.contiguous()
    return tensors, sd["param_groups"]


def load_optimizer_tensors(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], param_groups: list[dict[str, Any]],
                           prefix: str = "outer") -> None:  # fmt: skip
    """The inverse of :func:`optimizer_tensors`."""
    state: dict[int, dict[str, torch.Tensor]] = {}
    for k, v in tensors.items():
        if k.startswith(f"{prefix}/"):
            pid, name = k[len(prefix) + 1 :].split("/", 1)
            state.setdefault(int(pid), {})[name] = v
    opt.load_state_dict({"state": state, "param_groups": param_groups})


# -- the run -----------------------------------------------------------------------------------


@dataclass
class EngineRecord:
    """What a run reports besides θ (also in ``engine.json``)."""

    step: int = 0
    curve: list[dict[str, float]] = field(default_factory=list)
    evaluation: dict[str, Any] = field(default_factory=dict)


class Engine:
    """θ, the outer ``torch.optim.Adam``, and one estimator (with its state) per population."""

    def __init__(self, cfg: EngineConfig):
        self.cfg = cfg
        self.lopt = cfg.lopt()
        preload_splits(cfg.populations)  # the data generators' libraries stay out of this process
        self.steps = [PopulationStep(p, self.lopt) for p in cfg.populations]
        self.estimators = [make_estimator(cfg, s) for s in self.steps]
        self.theta = torch.nn.Parameter(self.lopt.init_theta(cfg.seed, cfg.prior))
        self.outer = torch.optim.Adam([self.theta], lr=cfg.outer_lr)
        with torch.no_grad():
            self.states = [e.init(self.theta.detach(), _key(cfg.seed, 2**32, i)) for i, e in enumerate(self.estimators)]
        self.record = EngineRecord()
        self.norms = torch.zeros(len(self.steps), dtype=torch.float64)  # EMA of each population's estimate norm

    @torch.no_grad()
    def step(self, executor: Any = None) -> dict[str, float]:
        """One outer step; returns its record (``meta_loss``: mean over populations).

        The populations' estimates are independent given θ, their states and their keys: with
        an ``executor`` (:mod:`metalearner.parallel`: local processes or Ray) each population
        runs as one item, its state shipped to the worker and back; without one they run here.
        With ``balance`` each population's estimate is divided by the bias-corrected running
        mean of its norm, so that a family whose meta-loss moves a lot (small data sets,
        short episodes) does not drown the others out; the outer Adam sets the step size."""
        theta, k = self.theta.detach(), self.record.step
        keys = [_key(self.cfg.seed, k, i) for i in range(len(self.estimators))]
        if executor is None:
            ests = [e.estimate(theta, s, key) for e, s, key in zip(self.estimators, self.states, keys)]
        else:
            ests = _estimate_on(executor, self.cfg, theta, self.states, keys)
        self.states = [e.state for e in ests]
        grads = torch.stack([e.grad for e in ests])
        if self.cfg.balance:
            self.norms = BALANCE_DECAY * self.norms + (1 - BALANCE_DECAY) * grads.double().norm(dim=1)
            scale = (1 - BALANCE_DECAY ** (k + 1)) / self.norms.clamp_min(1e-12)
            grads = grads * scale.to(grads.dtype)[:, None]
        grad = grads.mean(0)
        self.theta.grad = grad
        self.outer.step()
        self.record.step += 1
        rec = {"step": self.record.step, "meta_loss": float(np.mean([e.loss for e in ests])), "grad_norm": float(grad.norm())}
        self.record.curve.append(rec)
        return rec

    @torch.no_grad()
    def meta_loss(self, theta: torch.Tensor | None = None) -> list[float]:
        """The yardstick: the meta-loss of θ (unperturbed) per population, each a mean over
        ``eval_members`` fixed tasks of ``eval_epochs`` epochs."""
        theta = self.theta.detach() if theta is None else theta
        out = []
        for i, step in enumerate(self.steps):
            horizon, n = step.horizon_steps(self.cfg.eval_epochs), self.cfg.eval_members
            state = step.init_step_state(torch.arange(n), _key(self.cfg.seed, 10**9, i), horizon=horizon)
            _, res = step.unroll_step(theta.expand(n, -1), state, horizon)
            out.append(float(res.loss.sum(1).mean()))
        return out

    # -- checkpoints -------------------------------------------------------------------------

    def save(self, out_dir: Path) -> None:
        from safetensors.torch import save_file

        outer, groups = optimizer_tensors(self.outer)
        tensors = {"theta": self.theta.detach().contiguous(), "norms": self.norms.contiguous(), **outer}
        for i, s in enumerate(self.states):
            tensors.update(tree_tensors(s, f"estimator/{i}"))
        meta = {"config": asdict(self.cfg), "outer_param_groups": groups, **asdict(self.record)}
        with atomic_path(out_dir / CHECKPOINT) as tmp:
            save_file(tensors, str(tmp), metadata={"state": json.dumps(meta)})
        write_json(out_dir / "engine.json", meta)

    def load(self, out_dir: Path) -> bool:
        """Restore from ``out_dir``'s checkpoint; False when there is none."""
        path = out_dir / CHECKPOINT
        if not path.is_file():
            return False
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                meta = json.loads(f.metadata()["state"])
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as e:
            raise MetalearnerError(f"{path} is not a readable engine checkpoint: {e}") from None
        different = ConfigError(f"{out_dir} holds a run with a different config; use a new directory or the same config")
        try:  # through EngineConfig, so that a field added since reads as its default (which must reproduce the old behaviour)
            saved = EngineConfig.from_dict(meta["config"])
        except (TypeError, ConfigError):  # a field this version does not know, or a value it refuses
            raise different from None
        mine, saved = (json.loads(json.dumps(asdict(c))) for c in (self.cfg, saved))
        if {**saved, "outer_steps": 0} != {**mine, "outer_steps": 0}:  # a run may be extended; nothing else may change
            raise different
        with torch.no_grad():
            self.theta.copy_(tensors["theta"])
            self.norms = tensors["norms"].clone()
        load_optimizer_tensors(self.outer, tensors, meta["outer_param_groups"])
        self.states = [tree_load(s, tensors, f"estimator/{i}") for i, s in enumerate(self.states)]
        self.record = EngineRecord(step=meta["step"], curve=meta["curve"], evaluation=meta["evaluation"])
        return True

    def weights(self) -> PolicyWeights:
        """θ as policy weights, with the base and scales that ``LearnedOptimizer`` builds its kernel from."""
        w = PolicyWeights.init(self.lopt.config).with_flat(self.theta.detach())
        w.metadata.update(base=self.cfg.base, scales=self.cfg.scales, **fan_in_metadata(self.cfg.fan_in_power, self.cfg.fan_in_scope))
        return w


def run(
    cfg: EngineConfig,
    out_dir: str | os.PathLike,
    *,
    resume: bool = True,
    evaluate: bool = True,
    on_step: Callable[[dict[str, float]], None] | None = None,
    executor: Any = None,
) -> tuple[torch.Tensor, EngineRecord]:
    """Run (or resume) meta-training to ``cfg.outer_steps``; writes the checkpoint and
    ``learned.safetensors`` (θ as policy weights, the base in its metadata: what
    :class:`~metalearner.lopt.learned.LearnedOptimizer` loads) to ``out_dir``. ``executor``
    spreads each outer step's populations over workers (see :meth:`Engine.step`); the
    default runs them in this process, as the shipped weights were trained."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    engine = Engine(cfg)
    if resume:
        engine.load(out)
    rec = engine.record
    if evaluate and "initial" not in rec.evaluation:
        rec.evaluation["initial"] = engine.meta_loss()
    t0, earlier = time.perf_counter(), rec.curve[-1]["elapsed_s"] if rec.curve else 0.0
    while rec.step < cfg.outer_steps:
        r = engine.step(executor)
        r["elapsed_s"] = earlier + time.perf_counter() - t0
        if rec.step % cfg.checkpoint_every == 0 or rec.step == cfg.outer_steps:
            engine.save(out)
        if on_step:
            on_step(r)
    if evaluate and rec.evaluation.get("final_at") != rec.step:
        rec.evaluation.update(final=engine.meta_loss(), final_at=rec.step)
    engine.save(out)
    engine.weights().save(out / WEIGHTS, metadata={"engine_config": json.dumps(asdict(cfg)), "outer_steps_done": str(rec.step)})
    return engine.theta.detach().clone(), rec
