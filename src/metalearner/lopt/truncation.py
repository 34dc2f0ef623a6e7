"""The inner problem of meta-training, carried across truncated unrolls.

A :class:`TruncatedStep` owns everything below the meta-parameters: the population of
inner problems (model weights, the learned optimizer's state, the data position, the step
count and the horizon of each member) and the meta-objective. An estimator
(:mod:`metalearner.lopt.estimators`) only ever calls

1. ``init_step_state(slots, key, horizon=None) -> state`` — a fresh population; members with
   the same ``slot`` get the same task, initial weights and batches (the antithetic pairs);
2. ``unroll_step(theta, state, n_steps) -> (state, UnrollOut)`` — ``n_steps`` inner steps of
   every member under its own row of ``theta (P, D)``; a member whose episode ends restarts
   on a new task within the call, and ``UnrollOut.done`` says where;
3. ``sample_horizon(rng) -> int`` — a horizon for a whole population (full-unroll ES).

The meta-loss terms ``UnrollOut.loss`` are defined so that their sum over an episode is that
episode's meta-loss. For :class:`PopulationStep`, with ``r(x) = clip(log(x / V_0), −10, 2)``
(``+2`` when not finite), ``V_t`` the validation loss after step ``t``, ``L_t`` the batch
loss, ``T`` the horizon and ``e`` the evaluation interval:

.. math::

    J = λ_{train} \\frac{1}{T}\\sum_{t=1}^{T} r(L_t)
      + λ_{val} \\frac{e}{T} \\sum_{k=1}^{T/e} r(V_{ke})
      + λ_{final}\\, r(V_T)

The middle term is the area under the (log) validation curve: it rewards reaching a low
validation loss *early*; the last rewards where the run ends. Horizons are drawn
log-uniformly in epochs (``horizon_epochs``) and rounded up to a multiple of
``lcm(eval_every, observe_every)``, so every member of a population evaluates and observes
on the same steps (one batched evaluation, no masks) while its own clock starts at its reset.
"""

from __future__ import annotations

import functools
import json
import math
import subprocess
import sys
import tempfile
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Callable, NamedTuple, Protocol, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from metalearner.errors import ConfigError
from metalearner.lopt.functional import KernelState, LearnedKernel, ParamLayout, reset_rows
from metalearner.tasks.models import ACTIVATIONS, ModelConfig, attention_weights, build_model

MAX_TERM = 2.0  # a diverged (non-finite) loss costs this much per term
MIN_TERM = -10.0


class UnrollOut(NamedTuple):
    """What an unroll reports per member and step: ``(P, n_steps)`` each."""

    loss: torch.Tensor  # meta-loss terms; an episode's terms sum to its meta-loss
    done: torch.Tensor  # bool: the member's episode ended at this step (next step is a new task)


class TruncatedStep(Protocol):
    """The inner problem as the estimators see it (see the module docstring)."""

    def sample_horizon(self, rng: np.random.Generator) -> int: ...

    def init_step_state(self, slots: torch.Tensor, key: int, horizon: int | None = None) -> Any: ...

    def unroll_step(self, theta: torch.Tensor, state: Any, n_steps: int) -> tuple[Any, UnrollOut]: ...


def log_ratio(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """``clip(log(x / ref), −10, 2)``, and ``+2`` where that is not finite."""
    r = torch.log(x / ref)
    return torch.where(torch.isfinite(r), r.clamp(MIN_TERM, MAX_TERM), torch.full_like(r, MAX_TERM))


@dataclass(frozen=True)
class PopulationConfig:
    """A family of inner problems sharing one architecture and data set, and the meta-loss."""

    dataset: str = "mnist1d"
    n_train: int = 4000
    data_seed: int = 0
    data_options: tuple[tuple[str, Any], ...] = ()  # (name, value) pairs for load_dataset, e.g. (("n_features", 128),)
    family: str = "mlp"
    depth: int = 2
    width: int = 48
    activation: str = "relu"
    batch_size: int = 64
    base_lrs: tuple[float, ...] = (3e-4, 1e-3, 3e-3)
    input_scales: tuple[float, ...] = (0.5, 1.0, 2.0)  # augmentation: inputs times this factor
    # augmentation: the model computes with w = s * w' and the optimizer moves w', one s per
    # tensor drawn log-uniformly from this range each episode; (1, 1) is off
    weight_scales: tuple[float, float] = (1.0, 1.0)
    horizon_epochs: tuple[float, float] = (0.5, 10.0)  # log-uniform
    eval_every: int = 16
    n_val: int = 256  # validation examples scored at every evaluation (the same for every member)
    train_weight: float = 0.0
    val_weight: float = 1.0
    final_weight: float = 1.0

    def __post_init__(self) -> None:
        for f in fields(self):
            if isinstance(getattr(self, f.name), list):
                object.__setattr__(self, f.name, tuple(getattr(self, f.name)))
        object.__setattr__(self, "data_options", tuple(tuple(kv) for kv in self.data_options))  # JSON gives lists
        lo, hi = self.horizon_epochs
        if len(self.weight_scales) != 2 or not 0 < self.weight_scales[0] <= self.weight_scales[1]:
            raise ConfigError(f"weight_scales must be (lo, hi) with 0 < lo <= hi, got {self.weight_scales}")
        if not 0 < lo <= hi or self.eval_every < 1 or self.batch_size < 1 or self.n_val < 1:
            raise ConfigError("0 < horizon_epochs[0] <= horizon_epochs[1], eval_every >= 1, batch_size >= 1 and n_val >= 1 are required")
        self.model()  # validates family, depth, width, activation

    @property
    def reparameterise(self) -> bool:
        return self.weight_scales != (1.0, 1.0)  # a tuple since __post_init__

    def model(self) -> ModelConfig:
        return ModelConfig(family=self.family, depth=self.depth, width=self.width, activation=self.activation)


SplitsKey = tuple[str, int, int, tuple[tuple[str, Any], ...]]
_PRELOADED: dict[SplitsKey, Any] = {}
# the generators whose libraries are heavy: MNIST-1D imports matplotlib and scipy, digits scikit-learn
_HEAVY = {"mnist1d": "mnist1d", "digits": "sklearn"}


def load_splits(dataset: str, data_seed: int, n_train: int, data_options: tuple[tuple[str, Any], ...] = ()):
    """The data set with at least ``n_train`` training examples where the generator allows
    (MNIST-1D and synthetic are generated 1.5x larger: a test and a validation split come off)."""
    key = (dataset, data_seed, n_train, tuple(data_options))
    return _PRELOADED[key] if key in _PRELOADED else _load_splits(*key)


@functools.lru_cache(maxsize=16)
def _load_splits(dataset: str, data_seed: int, n_train: int, data_options: tuple[tuple[str, Any], ...]):
    from metalearner.tasks.data import load_dataset_capped

    size_option = {"mnist1d": "num_samples", "synthetic": "n_samples"}.get(dataset)
    options = {size_option: math.ceil(1.5 * n_train) + 1} if size_option else {}
    return load_dataset_capped(dataset, seed=data_seed, n_train=n_train, **options, **dict(data_options))


def _write_splits(keys_json: str, out_dir: str) -> None:
    """The child's side of :func:`preload_splits`: each key's splits, their tensors as ``i.npz``
    and their other fields as ``i.json``."""
    for i, (dataset, seed, n_train, options) in enumerate(json.loads(keys_json)):
        sp = vars(_load_splits(dataset, seed, n_train, tuple(tuple(o) for o in options)))
        np.savez(Path(out_dir) / f"{i}.npz", **{k: v.numpy() for k, v in sp.items() if isinstance(v, torch.Tensor)})
        (Path(out_dir) / f"{i}.json").write_text(json.dumps({k: v for k, v in sp.items() if not isinstance(v, torch.Tensor)}))


def preload_splits(configs: Sequence[PopulationConfig]) -> None:
    """Make the populations' data sets in a short-lived child process when their generators'
    libraries are not loaded here yet, so that a long meta-training process never holds them
    (about 175 MB resident of its 1 GB budget); the same arrays as loading them here. Should
    the child fail, nothing is preloaded and loading here reports the error."""
    from metalearner.tasks.data import Splits

    keys = [k for k in dict.fromkeys((c.dataset, c.data_seed, c.n_train, tuple(c.data_options)) for c in configs) if k not in _PRELOADED]
    if not any(k[0] in _HEAVY and _HEAVY[k[0]] not in sys.modules for k in keys):
        return
    code = "import sys; from metalearner.lopt.truncation import _write_splits; _write_splits(sys.argv[1], sys.argv[2])"
    with tempfile.TemporaryDirectory(prefix="metalearner_splits_") as tmp:
        if subprocess.run([sys.executable, "-c", code, json.dumps(keys), tmp], capture_output=True).returncode:
            return
        for i, key in enumerate(keys):
            with np.load(Path(tmp) / f"{i}.npz", allow_pickle=False) as z:
                tensors = {k: torch.from_numpy(z[k]) for k in z.files}
            other = json.loads((Path(tmp) / f"{i}.json").read_text())
            _PRELOADED[key] = Splits(**tensors, **{k: tuple(v) if isinstance(v, list) else v for k, v in other.items()})


def _linear(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Each member's ``nn.Linear``: ``(P, B, I)``, ``(P, O, I)``, ``(P, O)`` -> ``(P, B, O)``."""
    return torch.baddbmm(bias.unsqueeze(1), h, weight.transpose(1, 2))


def batched_forward(cfg: ModelConfig, layout: ParamLayout, module: torch.nn.Module) -> Callable:
    """``(params (P, N), x (P, B, ...)) -> logits (P, B, C)`` for the model ``build_model`` makes.

    MLPs run as batched matrix products (``torch.baddbmm``), GRUs likewise step by step
    (:func:`_batched_gru`), CNNs through ``torch.func.vmap`` over ``functional_call`` of the
    module itself.
    """
    if cfg.family == "mlp":
        act = ACTIVATIONS[cfg.activation]()
        linear = [n[: -len(".weight")] for n in layout.names if n.endswith(".weight")]

        def mlp(params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
            p = layout.views(params)
            h = x.flatten(2)
            for i, name in enumerate(linear):
                h = _linear(h, p[f"{name}.weight"], p[f"{name}.bias"])
                h = act(h) if i < len(linear) - 1 else h
            return h

        return mlp
    if cfg.family == "rnn":
        return _batched_gru(cfg, layout, module)
    if cfg.family == "transformer":
        return _batched_transformer(cfg, layout, module)
    call = torch.func.vmap(lambda p, x: torch.func.functional_call(module, p, (x,)))
    return lambda params, x: call(layout.views(params), x)


def _batched_gru(cfg: ModelConfig, layout: ParamLayout, module: torch.nn.Module) -> Callable:
    """The ``rnn`` family's GRU classifier (``torch.func.vmap`` has no batching rule for
    ``aten::gru``): ``nn.GRU``'s equations step by step, as batched products over members."""
    act = ACTIVATIONS[cfg.activation]()

    def gru(params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        p = layout.views(params)
        n_members, n = x.shape[:2]
        seq = module.sequence(x.reshape(n_members * n, *x.shape[2:])).reshape(n_members, n, -1, module.gru.input_size)
        for layer in range(cfg.depth):
            w_ih, w_hh, b_ih, b_hh = (p[f"gru.{t}_l{layer}"] for t in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))
            gates_x = _linear(seq.flatten(1, 2), w_ih, b_ih).unflatten(1, seq.shape[1:3])  # every step's input at once
            h = seq.new_zeros(n_members, n, cfg.width)
            outputs = []
            last = layer == cfg.depth - 1  # the head reads only the last step of the last layer
            for x_t in gates_x.unbind(2):  # (unbind, not indexing: its backward is one stack, not a zero tensor per step)
                x_rz, x_new = x_t.split((2 * cfg.width, cfg.width), -1)
                h_rz, h_new = _linear(h, w_hh, b_hh).split((2 * cfg.width, cfg.width), -1)
                r, z = torch.sigmoid(x_rz + h_rz).chunk(2, -1)
                h = torch.lerp(torch.tanh(x_new + r * h_new), h, z)  # (1 - z)·new + z·h
                if not last:
                    outputs.append(h)
            if not last:
                seq = torch.stack(outputs, 2)
        return _linear(act(h), p["head.weight"], p["head.bias"])

    return gru


def _batched_transformer(cfg: ModelConfig, layout: ParamLayout, module: torch.nn.Module) -> Callable:
    """The ``transformer`` family's forward (``models._Transformer``) as batched products over
    members: the same operations as the module's, without ``vmap``'s per-operation cost."""
    act = ACTIVATIONS[cfg.activation]()
    heads = module.blocks[0].heads if cfg.depth else 1

    def linear(h: torch.Tensor, p: dict[str, torch.Tensor], name: str) -> torch.Tensor:  # (P, B, T, I) -> (P, B, T, O)
        return _linear(h.flatten(1, 2), p[f"{name}.weight"], p[f"{name}.bias"]).unflatten(1, h.shape[1:3])

    def norm(h: torch.Tensor, p: dict[str, torch.Tensor], name: str) -> torch.Tensor:
        w, b = (p[f"{name}.{t}"][:, None, None] for t in ("weight", "bias"))
        return torch.addcmul(b, F.layer_norm(h, h.shape[-1:]), w)

    def transformer(params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        p = layout.views(params)
        n_members, n = x.shape[:2]
        h = linear(module.sequence(x.reshape(n_members * n, *x.shape[2:])).unflatten(0, (n_members, n)), p, "embed")
        h = h + p["position.weight"]  # (P, 1, T, d) broadcasts over the batch
        for i in range(cfg.depth):
            b = f"blocks.{i}"
            q, k, v = linear(norm(h, p, f"{b}.norm1"), p, f"{b}.qkv").unflatten(-1, (3, heads, -1)).movedim(-3, 0).transpose(-2, -3)
            h = h + linear((attention_weights(q, k) @ v).transpose(-2, -3).flatten(-2), p, f"{b}.proj")
            h = h + linear(act(linear(norm(h, p, f"{b}.norm2"), p, f"{b}.fc1")), p, f"{b}.fc2")
        h = norm(h, p, "norm").mean(-2)
        return _linear(h, p["head.weight"], p["head.bias"])

    return transformer


def member_losses(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``(P, B, C)``, ``(P, B)`` -> mean cross-entropy per member ``(P,)``. (Classes as
    dimension 1 with the batch innermost: 3-5x faster on CPU than flattening to ``(P·B, C)``.)"""
    return F.cross_entropy(logits.transpose(1, 2), y, reduction="none").mean(1)


_RNN_TENSORS = ("weight_ih_l", "weight_hh_l", "bias_ih_l", "bias_hh_l")


def default_init_bound(layout: ParamLayout) -> torch.Tensor:
    """``(N,)``: PyTorch's default initialisation of ``Linear`` and ``Conv`` layers draws each
    weight and bias from ``U(−b, b)``, ``b = 1/√fan_in`` (``GRU``: ``1/√hidden``), tensor after tensor; so
    ``(2u − 1)·b`` with ``u = torch.rand(N)`` under seed ``s`` is bit for bit the flat
    ``build_model(..., seed=s)``, without building a module per member."""
    shapes = dict(zip(layout.names, layout.shapes))
    bounds = []
    for name, size in zip(layout.names, layout.sizes):
        module, leaf = name.rsplit(".", 1)
        if leaf.startswith(_RNN_TENSORS):  # nn.GRU draws every tensor from U(−b, b), b = 1/√hidden
            fan_in = shapes[f"{module}.weight_hh_l0"][1]
        else:
            fan_in = math.prod(shapes[f"{module}.weight"][1:])
        bounds.append(torch.full((size,), fan_in**-0.5))
    return torch.cat(bounds)


@dataclass
class PopulationState:
    """The truncated state of a population of ``P`` members (all ``(P, ...)`` unless noted)."""

    params: torch.Tensor  # (P, N) model weights
    opt: KernelState  # the inner optimizer's state
    perm: torch.Tensor  # (P, n_train) the member's shuffle of the training set, cycled
    pos: torch.Tensor  # examples consumed: the data position
    step: torch.Tensor  # inner steps taken in the current episode
    horizon: torch.Tensor  # episode length T
    base_lr: torch.Tensor
    input_scale: torch.Tensor
    val0: torch.Tensor  # validation loss of the initial weights: the meta-loss's yardstick
    weight_scale: torch.Tensor | None  # (P, N) the model computes with weight_scale * params; None: off
    slot: torch.Tensor  # members with equal (key, slot, episode) train the same task
    episode: torch.Tensor
    key: torch.Tensor  # () the population's seed
    clock: torch.Tensor  # () steps since init: every member's step is ≡ clock mod sync


class PopulationStep:
    """A population of classification problems, trained as one batched computation."""

    def __init__(self, config: PopulationConfig, lopt: LearnedKernel):
        self.config, self.lopt = config, lopt
        self.data = load_splits(config.dataset, config.data_seed, config.n_train, config.data_options)
        self.module = build_model(config.model(), self.data.input_shape, self.data.n_classes, seed=0)
        self.layout = ParamLayout.of(self.module)
        self.forward = batched_forward(config.model(), self.layout, self.module)
        self.sync = math.lcm(config.eval_every, lopt.observe_every)
        # every tensor of an MLP, CNN or GRU starts uniform (default_init_bound); a transformer's do not
        self.init_bound = None if config.family == "transformer" else default_init_bound(self.layout)
        self.x_val, self.y_val = self.data.x_val[: config.n_val], self.data.y_val[: config.n_val]

    # -- tasks ---------------------------------------------------------------------------------

    def horizon_steps(self, epochs: float) -> int:
        """``epochs`` of the training set in steps, rounded up to a multiple of ``sync``."""
        steps = epochs * self.data.n_train / self.config.batch_size
        return max(1, math.ceil(steps / self.sync)) * self.sync

    def sample_horizon(self, rng: np.random.Generator) -> int:
        lo, hi = self.config.horizon_epochs
        return self.horizon_steps(math.exp(rng.uniform(math.log(lo), math.log(hi))))

    def _task(self, key: int, slot: int, episode: int) -> dict[str, Any]:
        rng = np.random.default_rng([key, slot, episode])
        cfg = self.config
        return {
            "horizon": self.sample_horizon(rng),
            "base_lr": float(cfg.base_lrs[int(rng.integers(len(cfg.base_lrs)))]),
            "input_scale": float(cfg.input_scales[int(rng.integers(len(cfg.input_scales)))]),
            "init_seed": int(rng.integers(2**31)),
            "data_seed": int(rng.integers(2**31)),
            **self._weight_scales(rng),
        }

    def _initial_weights(self, seed: int) -> torch.Tensor:
        """``(N,)``: the flat ``build_model(..., seed=seed)``, drawn without building it where
        every tensor starts uniform."""
        if self.init_bound is None:
            cfg = self.config
            return self.layout.flatten(build_model(cfg.model(), self.data.input_shape, self.data.n_classes, seed=seed))
        u = torch.rand(self.layout.n_params, generator=torch.Generator().manual_seed(seed))
        return (2 * u - 1) * self.init_bound

    def _weight_scales(self, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        """The re-parameterisation's ``(N,)`` scale, one log-uniform draw per tensor (drawn
        after the other task draws, so turning it on changes nothing else about a task)."""
        if not self.config.reparameterise:
            return {}
        lo, hi = (math.log(v) for v in self.config.weight_scales)
        per_tensor = torch.from_numpy(np.exp(rng.uniform(lo, hi, len(self.layout.sizes)))).float()
        return {"weight_scale": per_tensor.repeat_interleave(torch.tensor(self.layout.sizes))}

    def _weights(self, params: torch.Tensor, weight_scale: torch.Tensor | None) -> torch.Tensor:
        """The weights the model computes with: ``params`` themselves, or scaled."""
        return params if weight_scale is None else params * weight_scale

    def _reset(self, state: PopulationState, mask: torch.Tensor, horizon: int | None = None) -> PopulationState:
        """Members in ``mask`` start a new episode (episode counter already advanced)."""
        rows = mask.nonzero().flatten().tolist()
        params, perm = state.params.clone(), state.perm.clone()
        horizon_t, base_lr, scale = state.horizon.clone(), state.base_lr.clone(), state.input_scale.clone()
        weight_scale = None if state.weight_scale is None else state.weight_scale.clone()
        key = int(state.key)
        for i in rows:
            task = self._task(key, int(state.slot[i]), int(state.episode[i]))
            params[i] = self._initial_weights(task["init_seed"])
            if weight_scale is not None:  # the same initial weights w, held as w' = w / s
                weight_scale[i] = task["weight_scale"]
                params[i] /= weight_scale[i]
            perm[i] = torch.randperm(self.data.n_train, generator=torch.Generator().manual_seed(task["data_seed"]))
            horizon_t[i] = task["horizon"] if horizon is None else horizon
            base_lr[i], scale[i] = task["base_lr"], task["input_scale"]
        zero = torch.zeros_like(state.pos)
        val0 = state.val0.clone()
        val0[mask] = self._val_loss(self._weights(params, weight_scale)[mask], scale[mask])
        return replace(state, params=params, opt=reset_rows(state.opt, mask), perm=perm, pos=torch.where(mask, zero, state.pos),
                       step=torch.where(mask, zero, state.step), horizon=horizon_t, base_lr=base_lr, input_scale=scale, val0=val0,
                       weight_scale=weight_scale)  # fmt: skip

    def init_step_state(self, slots: torch.Tensor, key: int, horizon: int | None = None) -> PopulationState:
        """A fresh population; ``horizon`` fixes every member's first episode length
        (a multiple of ``lcm(eval_every, observe_every)``), else each draws its own."""
        if horizon is not None and horizon % self.sync:
            raise ConfigError(f"horizon must be a multiple of {self.sync} (eval_every and observe_every), got {horizon}")
        P, i64 = len(slots), torch.int64
        zeros = torch.zeros(P)
        state = PopulationState(
            params=torch.zeros(P, self.layout.n_params), opt=self.lopt.init_state(P, self.layout),
            perm=torch.zeros(P, self.data.n_train, dtype=i64), pos=torch.zeros(P, dtype=i64), step=torch.zeros(P, dtype=i64),
            horizon=torch.zeros(P, dtype=i64), base_lr=zeros, input_scale=zeros, val0=zeros,
            weight_scale=torch.ones(P, self.layout.n_params) if self.config.reparameterise else None,
            slot=torch.as_tensor(slots, dtype=i64).clone(), episode=torch.zeros(P, dtype=i64),
            key=torch.tensor(key, dtype=i64), clock=torch.tensor(0, dtype=i64),
        )  # fmt: skip
        return self._reset(state, torch.ones(P, dtype=torch.bool), horizon)

    # -- training ------------------------------------------------------------------------------

    def _scaled(self, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        return x * scale.view(-1, *[1] * (x.dim() - 1))

    @torch.no_grad()
    def _val_loss(self, params: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        P = len(params)
        x = self._scaled(self.x_val.expand(P, *self.x_val.shape), scale)
        return member_losses(self.forward(params, x), self.y_val.expand(P, -1))

    def unroll_step(self, theta: torch.Tensor, state: PopulationState, n_steps: int) -> tuple[PopulationState, UnrollOut]:
        """``n_steps`` inner steps of every member (see the module docstring for the terms)."""
        cfg, B, n = self.config, self.config.batch_size, self.data.n_train
        offsets = torch.arange(B)
        terms, dones = [], []
        for _ in range(n_steps):
            idx = state.perm.gather(1, (state.pos[:, None] + offsets) % n).flatten()
            x = self._scaled(self.data.x_train.index_select(0, idx).view(-1, B, *self.data.input_shape), state.input_scale)
            y = self.data.y_train.index_select(0, idx).view(-1, B)
            w = state.params.detach().requires_grad_(True)
            with torch.enable_grad():
                losses = member_losses(self.forward(self._weights(w, state.weight_scale), x), y)
                (grad,) = torch.autograd.grad(losses.sum(), w)
            losses = losses.detach()
            clock = int(state.clock) + 1
            params, opt = self.lopt.update(theta, state.opt, self.layout, state.params, grad, losses, state.base_lr,
                                           observe=clock % self.lopt.observe_every == 0)  # fmt: skip
            step, T = state.step + 1, state.horizon
            state = replace(state, params=params, opt=opt, pos=state.pos + B, step=step, clock=torch.tensor(clock))
            term = cfg.train_weight * log_ratio(losses, state.val0) / T
            done = torch.zeros_like(step, dtype=torch.bool)
            if clock % cfg.eval_every == 0:
                at = self._weights(self.lopt.eval_params(params, opt), state.weight_scale)
                val = log_ratio(self._val_loss(at, state.input_scale), state.val0)
                done = step >= T
                term = term + cfg.val_weight * val * cfg.eval_every / T + torch.where(done, cfg.final_weight * val, 0.0)
            terms.append(term)
            dones.append(done)
            if bool(done.any()):
                state = self._reset(replace(state, episode=state.episode + done), done)
        return state, UnrollOut(torch.stack(terms, 1), torch.stack(dones, 1))
