"""The learned part, shared by Opt2Vec and the LR controller: features, weights, network.

Features come from :class:`~metalearner.observe.physics.StepPhysics` (the one physics
definition the probe also logs) plus the loss and the optimizer's own learning rate. One
*observation* is one row of features; a policy keeps the last ``history_length`` rows.

=====================  ========================================================  ==========
feature                raw value                                                 scaling
=====================  ========================================================  ==========
``log_loss``           ``log L`` (mean batch loss since the last observation)    online
                       (every ``log`` is the schema's :func:`~metalearner.observe.schema.log_feature`)
``log_loss_rel``       ``log L − log L₀`` (progress since the first observation)  raw
``log_loss_delta``     ``log L − log L_prev`` (slope between observations)       raw
``log_grad_norm``      ``log ‖g‖``                                               online
``log_lr_scale``       ``log(lr / base_lr)`` the scale currently applied          raw
``log_weight_norm``    ``log ‖θ‖``                                               online
``log_update_ratio``   ``log(‖Δθ‖ / ‖θ‖)``                                        online
``grad_cos``           cosine of consecutive gradients                          raw
``curvature``          ``sign(c)·log(1 + |c|)``, the secant curvature             online
``budget_fraction``    steps taken / budget (0 without a budget)                 raw
=====================  ========================================================  ==========

The batched kernels of :mod:`~metalearner.lopt.functional` (kind ``"learned"``) add two
horizon-free loss signals, two step-size signals and a static one (:data:`KERNEL_ONLY_FEATURES`):
``loss_vs_min`` (``log L − log min L``, the loss above its best window: a spike detector),
``loss_vs_ema`` (``log L`` against a slow average of past windows) and
``update_ratio_level`` (``log₁₀(‖Δθ‖/‖θ‖) + 3``: decades above an update ratio of 1e-3, not
normalised, so that a policy can see whether steps are large or small in absolute terms) and
``motion_cos`` (the cosine between a tensor's gradient and the direction its weights have been
moving: Schedule-Free's ``z − y``, Adam's ``−m/√v``; the sign of the learning rate's
hypergradient: clearly negative while the loss still falls along the path, i.e. the lr is too
low, near zero or positive at and past the best lr); and, as an experiment,
``log10_fan_in`` (a tensor's fan-in, its size over its first dimension, in decades; 0 for
vectors, not normalised): what a tensor is, which per-tensor physics does not say.

"online" features are standardised with bias-corrected exponential moving averages of
their mean and variance (:func:`normalise`); all features are clipped to ``[-5, 5]``.

The network (:func:`policy_forward`) is a small MLP over the flattened history::

    e   = act(W₁ · act(W₀ · vec(history) + b₀) + b₁)          # the embedding
    out = W_h · e + b_h + W_s · latest                          # heads (+ a linear skip)

``W_h``, ``b_h`` and ``W_s`` start at zero, so an untrained policy outputs zeros, which both
learned optimizers map to "do what the base optimizer does" (lr scale 1, momentum 0.9).
"""

from __future__ import annotations

import hashlib
import json
import math
import numbers
import os
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np
import torch
import torch.nn.functional as F

from metalearner.atomic import atomic_path
from metalearner.errors import ConfigError, MetalearnerError, MetalearnerWarning, first_line
from metalearner.observe.schema import PHYSICS, feature, log_feature

if TYPE_CHECKING:
    from metalearner.observe.physics import StepPhysics

BASE_FEATURES: tuple[str, ...] = ("log_loss", "log_loss_rel", "log_loss_delta", "log_grad_norm", "log_lr_scale")
EXTENDED_FEATURES: tuple[str, ...] = ("log_weight_norm", "log_update_ratio", "grad_cos", "curvature", "budget_fraction")
CONTROLLER_FEATURES: tuple[str, ...] = (*BASE_FEATURES, "log_weight_norm", "log_update_ratio")
FAN_IN_SCOPES = ("all", "input")  # which tensors the fixed fan-in factor scales: every one, or the input layer only
KERNEL_ONLY_FEATURES: tuple[str, ...] = ("loss_vs_min", "loss_vs_ema", "update_ratio_level", "motion_cos", "log10_fan_in")
KINDS: tuple[str, ...] = ("opt2vec", "controller", "learned")
ONLINE = frozenset({"log_loss", "log_grad_norm", "log_weight_norm", "log_update_ratio", "curvature"})
ACTIVATIONS = {"gelu": F.gelu, "relu": F.relu, "tanh": torch.tanh, "silu": F.silu}
CLIP = 5.0
MAX_LOG_SCALE = 3.0  # lr scale is exp(3·tanh(z/3)): within [1/20, 20] of base_lr
PRETRAINED = Path(__file__).resolve().parent / "pretrained"


class WeightsError(MetalearnerError):
    """A weights file is missing, corrupt, not safetensors, or does not fit the optimizer."""


@dataclass(frozen=True)
class PolicyConfig:
    """Shape of a policy network; saved inside every weights file."""

    kind: str = "opt2vec"  # "opt2vec" (outputs: log lr scale, momentum logit), "controller" or "learned" (log lr scale)
    features: tuple[str, ...] = (*BASE_FEATURES, *EXTENDED_FEATURES)
    history_length: int = 16
    hidden_dim: int = 32
    embedding_dim: int = 64
    activation: str = "gelu"
    observe_every: int = 16  # steps between observations (physics is measured on those only)

    def __post_init__(self) -> None:
        object.__setattr__(self, "features", tuple(self.features))
        if self.kind not in KINDS:
            raise ConfigError(f"unknown policy kind {self.kind!r}; choose from {', '.join(KINDS)}")
        unknown = sorted(set(self.features) - {*BASE_FEATURES, *EXTENDED_FEATURES, *KERNEL_ONLY_FEATURES})
        if unknown:
            raise ConfigError(f"unknown feature(s) {', '.join(unknown)}")
        if self.activation not in ACTIVATIONS:
            raise ConfigError(f"unknown activation {self.activation!r}; choose from {', '.join(ACTIVATIONS)}")
        for name in ("history_length", "hidden_dim", "embedding_dim", "observe_every"):
            check_count(name, getattr(self, name))

    @property
    def n_features(self) -> int:
        return len(self.features)

    @property
    def n_outputs(self) -> int:
        return 2 if self.kind == "opt2vec" else 1

    def shapes(self) -> dict[str, tuple[int, ...]]:
        H, Fn, D, E, O = self.history_length, self.n_features, self.hidden_dim, self.embedding_dim, self.n_outputs
        return {
            "enc0.weight": (D, H * Fn), "enc0.bias": (D,),
            "enc1.weight": (E, D), "enc1.bias": (E,),
            "head.weight": (O, E), "head.bias": (O,),
            "skip.weight": (O, Fn),
        }  # fmt: skip

    @classmethod
    def from_dict(cls, d: Mapping) -> "PolicyConfig":
        return cls(**d)


@dataclass
class PolicyWeights:
    """Meta-parameters of a policy: its config and named tensors (kept outside any optimizer)."""

    config: PolicyConfig
    tensors: dict[str, torch.Tensor] = field(repr=False)
    metadata: dict[str, str] = field(default_factory=dict, repr=False)

    @classmethod
    def init(cls, config: PolicyConfig, seed: int = 0) -> "PolicyWeights":
        """Untrained weights: a random encoder and zero heads (= the base optimizer)."""
        gen = torch.Generator().manual_seed(seed)
        tensors = {}
        for name, shape in config.shapes().items():
            if name.startswith("enc") and name.endswith("weight"):
                tensors[name] = torch.randn(shape, generator=gen) / math.sqrt(shape[1])
            else:
                tensors[name] = torch.zeros(shape)
        return cls(config, tensors)

    @property
    def n_params(self) -> int:
        return sum(t.numel() for t in self.tensors.values())

    def flat(self) -> torch.Tensor:
        return torch.cat([self.tensors[k].reshape(-1) for k in self.config.shapes()])

    def fingerprint(self) -> str:
        """A short hash of the config, the tensor values (not of the file's bytes, whose
        header order differs between saves of the same weights) and a nonzero ``fan_in_power``
        in the metadata with its ``fan_in_scope`` unless "all" (they change the steps; absent
        or 0, the hash is what it always was)."""
        h = hashlib.sha256(json.dumps(asdict(self.config), sort_keys=True).encode())
        h.update(self.flat().to(torch.float32).contiguous().numpy().tobytes())
        power = self.fan_in_power()
        if power:
            h.update(f"fan_in_power={power!r}".encode())
            if self.fan_in_scope() != "all":
                h.update(f"fan_in_scope={self.fan_in_scope()}".encode())
        return h.hexdigest()[:16]

    def fan_in_power(self) -> float:
        """The metadata's ``fan_in_power`` (0 when absent): the learned optimizer's fixed
        fan-in factor (:meth:`~metalearner.lopt.functional.ParamLayout.fan_in_factor`)."""
        raw = self.metadata.get("fan_in_power", "0")
        try:
            value = float(raw)
        except (TypeError, ValueError):
            value = math.nan
        if not (math.isfinite(value) and value >= 0):
            raise WeightsError(f"fan_in_power in the weights' metadata must be a finite number >= 0, got {raw!r}")
        return value

    def fan_in_scope(self) -> str:
        """The metadata's ``fan_in_scope`` ("all" when absent): which tensors the fan-in factor
        scales, every one or the input layer only."""
        raw = self.metadata.get("fan_in_scope", "all")
        if raw not in FAN_IN_SCOPES:
            raise WeightsError(f"fan_in_scope in the weights' metadata must be one of {', '.join(FAN_IN_SCOPES)}, got {raw!r}")
        return raw

    def with_flat(self, vector: torch.Tensor) -> "PolicyWeights":
        tensors, i = {}, 0
        for name, shape in self.config.shapes().items():
            n = math.prod(shape)
            tensors[name] = vector[i : i + n].reshape(shape).to(torch.float32).clone()
            i += n
        if i != len(vector):
            raise WeightsError(f"flat vector has {len(vector)} values, the policy needs {i}")
        return PolicyWeights(self.config, tensors, dict(self.metadata))

    def save(self, path: str | os.PathLike, metadata: Mapping[str, str] | None = None) -> None:
        """Atomically write safetensors; the config travels in the file's metadata."""
        from safetensors.torch import save_file

        meta = {**self.metadata, **(metadata or {}), "config": json.dumps(asdict(self.config))}
        with atomic_path(path) as tmp:
            save_file({k: v.contiguous() for k, v in self.tensors.items()}, str(tmp), metadata=meta)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "PolicyWeights":
        """Read a safetensors file (never unpickles); any problem raises :class:`WeightsError`."""
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise WeightsError(f"weights file {path} {'is a folder' if path.is_dir() else 'does not exist'}")
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = dict(f.metadata() or {})
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as e:  # SafetensorError, OSError, a pickle renamed .safetensors ...
            raise WeightsError(f"{path} is not a readable safetensors file: {first_line(e)}") from None
        try:
            config = PolicyConfig.from_dict(json.loads(meta.pop("config")))
        except (KeyError, TypeError, ValueError) as e:
            raise WeightsError(f"{path} has no valid policy config in its metadata ({e})") from None
        expected = config.shapes()
        if set(tensors) != set(expected) or any(tuple(tensors[k].shape) != s for k, s in expected.items()):
            raise WeightsError(f"{path}: tensors do not match the policy config {asdict(config)}")
        if not all(torch.isfinite(t).all() for t in tensors.values()):
            raise WeightsError(f"{path}: weights contain NaN or Inf")
        weights = cls(config, {k: v.float() for k, v in tensors.items()}, meta)
        try:
            weights.fan_in_power(), weights.fan_in_scope()
        except WeightsError as e:
            raise WeightsError(f"{path}: {e}") from None
        return weights


def check_fan_in_scope(scope: str) -> str:
    """``scope`` if it is one of :data:`FAN_IN_SCOPES`, else a one-line :class:`ConfigError`."""
    if scope not in FAN_IN_SCOPES:
        raise ConfigError(f"unknown fan_in_scope {scope!r}; choose from {', '.join(FAN_IN_SCOPES)}")
    return scope


def fan_in_metadata(power: float, scope: str) -> dict[str, str]:
    """The weights' metadata for a fan-in factor: none when it is off, the scope only when not
    "all" (so such weights keep the fingerprint they had before scopes existed)."""
    if not power:
        return {}
    return {"fan_in_power": str(float(power)), **({"fan_in_scope": scope} if scope != "all" else {})}


def default_weights(kind: str) -> PolicyWeights:
    """The pretrained weights shipped in ``metalearner/lopt/pretrained``."""
    return PolicyWeights.load(PRETRAINED / f"{kind}.safetensors")


def resolve_weights(weights: "PolicyWeights | str | os.PathLike | None", kind: str, config: PolicyConfig) -> PolicyWeights:
    """``"default"`` -> shipped, a path -> that file, ``None`` -> untrained ``config``."""
    if weights is None:
        return PolicyWeights.init(config)
    if isinstance(weights, PolicyWeights):
        w = weights
    elif isinstance(weights, str) and weights == "default":
        w = default_weights(kind)
    else:
        w = PolicyWeights.load(weights)
    if w.config.kind != kind:
        raise WeightsError(f"these weights are for {w.config.kind!r}, not {kind!r}")
    return w


# -- the functional kernel ------------------------------------------------------------------


def policy_forward(
    theta: Mapping[str, torch.Tensor], history: torch.Tensor, activation: str = "gelu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Outputs ``(O,)`` and embedding ``(E,)`` from a normalised history ``(H, F)`` (last row
    is the latest observation). Pure: no state, works batched over leading dims too; with
    ``theta`` batched too (``(P, *shape)`` tensors, one policy per member) ``history`` is
    ``(P, J, H, F)`` and the outputs ``(P, J, O)``, ``(P, J, E)``: the same numbers as
    ``torch.func.vmap`` over the members, without its per-call overhead."""
    if theta["enc0.weight"].dim() == 3 and history.dim() != 4:  # one policy per member: (P, J, H, F) only
        raise ValueError(f"batched policy weights need a (P, J, H, F) history, got shape {tuple(history.shape)}")
    act = ACTIVATIONS[activation]
    x = history.reshape(*history.shape[:-2], -1)
    h = act(_linear(x, theta["enc0.weight"], theta["enc0.bias"]))
    e = act(_linear(h, theta["enc1.weight"], theta["enc1.bias"]))
    out = _linear(e, theta["head.weight"], theta["head.bias"]) + history[..., -1, :] @ theta["skip.weight"].transpose(-1, -2)
    return out, e


def _linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``x W^T + b``; a batched ``(P, out, in)`` weight maps ``(P, J, in)`` to ``(P, J, out)``."""
    return x @ weight.transpose(-1, -2) + (bias if weight.dim() == 2 else bias.unsqueeze(-2))


def lr_scale_from(z: torch.Tensor | float) -> float:
    """``exp(3·tanh(z/3))``: 1 at z = 0, bounded to [1/20, 20]."""
    return math.exp(MAX_LOG_SCALE * math.tanh(float(z) / MAX_LOG_SCALE))


# The safety rules every learned lr obeys (the batched kernel applies them in tensor form).
MAX_MOVE = math.log(1.5)  # the lr scale moves at most this much (log) per observation
META_SPIKE_GUARD = 3.0  # in meta-training a window whose mean loss is 3x its best window's halves the scale instead
SPIKE_GUARD = 2.0  # in a user's run, 2x: at ten times its default lr on digits learned_sf sank 9-13 points below its best under 3x, 5-7 under 2x
MAX_MOMENTUM_MOVE = 0.5  # a learned momentum's logit moves at most this much per observation


def check_count(name: str, value: Any) -> int:
    """``value`` as an int, or a one-line error unless it is a whole number >= 1 (``observe_every``
    of 2.5 would otherwise be cut to 2 without a word)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ConfigError(f"{name} must be a whole number >= 1, got {value!r}")
    return int(value)


def check_spike_guard(spike_guard: float) -> float:
    """``spike_guard`` as a float (``inf``: the guard off), or a one-line error unless it is a
    factor above 1."""
    try:
        value = float(spike_guard)
    except (TypeError, ValueError):
        value = math.nan
    if not value > 1:  # also refuses NaN
        raise ConfigError(f"spike_guard must be > 1 (a window's loss over its best window's), got {spike_guard!r}")
    return value


NO_LOSS_STEPS = 64  # steps without ever a loss before a learned optimizer says it is running as its base


def check_loss(loss: Any, optimizer: Any = None) -> Any:
    """``loss`` if a learned optimizer can read it (``None``, a real number, or a one-element
    tensor), else a one-line error, raised before the step touches anything. Reads no device
    value (``numel`` is metadata). Given the ``optimizer``, warns once when it has taken
    :data:`NO_LOSS_STEPS` steps and never had a loss (``scaler.step(opt)`` without ``loss=``):
    with nothing to observe it is its base optimizer."""
    if optimizer is not None and not optimizer.__dict__.get("_had_loss", False):
        _count_loss(optimizer, loss)
    if loss is None or (torch.is_tensor(loss) and loss.numel() == 1 and loss.is_floating_point()):
        return loss
    if torch.is_tensor(loss) and loss.numel() == 1:
        raise ConfigError(f"step() takes the loss as a floating-point tensor (the value the gradients came from), got {loss.dtype}")
    if torch.is_tensor(loss) or getattr(loss, "size", 1) != 1:  # a tensor or array of several values
        raise ConfigError(f"step() takes the loss as a scalar (reduce it first, e.g. loss.mean()); got shape {tuple(loss.shape)}")
    if isinstance(loss, (numbers.Real, np.ndarray, np.generic)) and not isinstance(loss, (bool, np.bool_)):
        return float(loss)  # Python and numpy numbers, 0-d arrays
    raise ConfigError(f"step() takes the loss as a number or a one-element tensor, got {type(loss).__name__}")


def _count_loss(optimizer: Any, loss: Any) -> None:
    if loss is not None:
        optimizer._had_loss = True
        return
    n = optimizer.__dict__.get("_steps_without_loss", 0) + 1
    optimizer._steps_without_loss = n
    if n == NO_LOSS_STEPS:
        warnings.warn(f"{type(optimizer).__name__} has taken {n} steps without a loss, so its policy has nothing to observe and it "
                      "runs as its base optimizer: pass the loss, opt.step(loss=loss) (with a GradScaler: scaler.step(opt, loss=loss))",
                      MetalearnerWarning, stacklevel=4)  # fmt: skip


OPTIMIZER_HOOKS = ("_optimizer_step_pre_hooks", "_optimizer_step_post_hooks", "_optimizer_state_dict_pre_hooks",
                   "_optimizer_state_dict_post_hooks", "_optimizer_load_state_dict_pre_hooks",
                   "_optimizer_load_state_dict_post_hooks")  # fmt: skip


def optimizer_getstate(optimizer: torch.optim.Optimizer, *drop: str) -> dict[str, Any]:
    """What ``copy.deepcopy`` and ``pickle`` keep of a learned optimizer: all of it (its policy,
    counters and buffers live outside ``defaults``/``state``/``param_groups``, all that
    ``torch.optim.Optimizer.__getstate__`` keeps), less the users' hooks and an LR scheduler's
    wrapper of ``step`` (it points at the original), as torch leaves them out
    (``Optimizer.__setstate__`` makes the hooks anew), and ``drop``."""
    return {k: v for k, v in optimizer.__dict__.items() if k not in OPTIMIZER_HOOKS and k not in ("step", "_opt_called", *drop)}


def guarded_lr_scale(state: dict[str, Any], proposed: float, mean_loss: float, spike_guard: float) -> float:
    """The scale to apply after an observation: ``proposed`` reached at most a factor 1.5 per
    observation from ``state["lr_scale"]``; if the window's loss is a spike (``spike_guard``
    times the best window's, tracked in ``state["min_loss"]``), half the smaller of the two
    instead, counted in ``state["spike_guards"]``. Within ``[1/20, 20]``."""
    old, best = state["lr_scale"], state.get("min_loss", math.inf)
    floor = math.exp(-MAX_LOG_SCALE)
    moved = old * math.exp(max(-MAX_MOVE, min(MAX_MOVE, math.log(proposed) - math.log(old))))
    if mean_loss > 0:
        state["min_loss"] = min(best, mean_loss)
        if math.isfinite(best) and best > 0 and math.log(mean_loss) - math.log(best) > math.log(spike_guard):
            state["spike_guards"] = state.get("spike_guards", 0) + 1
            return max(floor, min(moved, old) / 2)
    return max(floor, moved)


def guarded_momentum(old: float, proposed: float) -> float:
    """``proposed`` reached at most ``MAX_MOMENTUM_MOVE`` in logit per observation from ``old``."""
    lo, hi = (math.log(m / (1 - m)) for m in (old, proposed))
    return 1.0 / (1.0 + math.exp(-(lo + max(-MAX_MOMENTUM_MOVE, min(MAX_MOMENTUM_MOVE, hi - lo)))))


def momentum_from(z: torch.Tensor | float, base: float = 0.9) -> float:
    """``sigmoid(logit(base) + z)`` clipped to [0, 0.995]: ``base`` at z = 0."""
    logit = math.log(base / (1 - base)) + max(-20.0, min(20.0, float(z)))
    return min(0.995, 1.0 / (1.0 + math.exp(-logit)))


# -- features -------------------------------------------------------------------------------


# features read from the physics, each the schema's transform of the named column
PHYSICS_FEATURES: dict[str, str] = {
    "log_grad_norm": "grad_norm", "log_weight_norm": "weight_norm", "log_update_ratio": "update_ratio",
    "grad_cos": "grad_cos", "curvature": "curvature",
}  # fmt: skip


def raw_features(
    names: tuple[str, ...],
    *,
    loss: float,
    first_loss: float,
    prev_loss: float,
    lr_scale: float,
    physics: Mapping[str, float],
    budget_fraction: float,
) -> list[float]:
    """One observation's raw feature values, in the order of ``names`` (non-finite -> 0 later).
    ``physics`` maps schema names to host floats (:meth:`StepPhysics.scalars`)."""
    log_loss, log_first, log_prev, log_scale = log_feature([loss, first_loss, prev_loss, lr_scale]).tolist()
    values = {
        "log_loss": log_loss, "log_loss_rel": log_loss - log_first, "log_loss_delta": log_loss - log_prev,
        "log_lr_scale": log_scale, "budget_fraction": budget_fraction,
    }  # fmt: skip
    wanted = [(n, PHYSICS_FEATURES[n]) for n in names if n in PHYSICS_FEATURES]
    for name, field in wanted:
        values[name] = float(feature(field, physics.get(field, math.nan)))
    return [values[n] for n in names]


def close_window(state: dict, physics: "StepPhysics") -> tuple[bool, int, float, dict[str, float]]:
    """End an observation window with the one device read both learned optimizers make:
    ``state["loss_sum"]`` (a device tensor) and this step's physics. Returns whether the
    window was finite, its number of losses, their mean, and the physics as host floats;
    the loss sum starts again."""
    phys = physics.scalars()  # a non-finite layer makes its global norm non-finite too
    loss_sum, count = float(state["loss_sum"]), state["loss_count"]
    state["loss_sum"], state["loss_count"] = torch.zeros((), dtype=torch.float64), 0
    finite = math.isfinite(loss_sum) and all(math.isfinite(phys[k]) for k in PHYSICS)
    return finite, count, loss_sum / max(count, 1), phys


def push_observation(state: dict, config: PolicyConfig, *, mean_loss: float, physics: Mapping[str, float],
                     budget_fraction: float) -> torch.Tensor:  # fmt: skip
    """Features of one observation, normalised online, appended to ``state["history"]``
    (``state`` holds ``first_loss``, ``prev_loss``, ``lr_scale``, ``stats``, ``history``)."""
    if math.isnan(state["first_loss"]):
        state["first_loss"] = state["prev_loss"] = mean_loss
    raw = raw_features(config.features, loss=mean_loss, first_loss=state["first_loss"], prev_loss=state["prev_loss"],
                       lr_scale=state["lr_scale"], physics=physics, budget_fraction=budget_fraction)  # fmt: skip
    row = torch.tensor(normalise(raw, config.features, state["stats"]), dtype=torch.float32)
    state["history"] = torch.cat([state["history"][1:], row[None]])
    state["prev_loss"] = mean_loss
    return state["history"]


def normalise(raw: list[float], names: tuple[str, ...], stats: dict[str, list[float]], decay: float = 0.9) -> list[float]:
    """Update the online statistics ``stats`` (``mean``, ``sq``, ``count``) with ``raw`` and
    return the scaled, clipped feature row (NaN -> 0)."""
    n = stats["count"][0] + 1
    stats["count"][0] = n
    corr = 1 - decay**n
    out = []
    for i, (x, name) in enumerate(zip(raw, names)):
        if not math.isfinite(x):
            out.append(0.0)
            continue
        if name in ONLINE:
            stats["mean"][i] = decay * stats["mean"][i] + (1 - decay) * x
            stats["sq"][i] = decay * stats["sq"][i] + (1 - decay) * x * x
            mean, sq = stats["mean"][i] / corr, stats["sq"][i] / corr
            x = (x - mean) / (math.sqrt(max(sq - mean * mean, 0.0)) + 0.1)
        out.append(max(-CLIP, min(CLIP, x)))
    return out


def new_stats(n_features: int) -> dict[str, list[float]]:
    return {"mean": [0.0] * n_features, "sq": [0.0] * n_features, "count": [0]}
