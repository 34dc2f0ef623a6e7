"""Few-shot meta-learning, functional (``torch.func``): MAML, Meta-SGD and a learned meta-level.

Three levels of learning. The **base** learner adapts weights ``θ`` to a task's support set
by ``S`` gradient steps with inner step sizes ``α``::

    θ_{s+1} = θ_s − α ⊙ ∇_θ L_support(θ_s)          (θ_0 = the meta-learned initialisation)

The **meta** learner minimises the query loss after adaptation, averaged over a batch of
tasks, by an outer optimizer with learning rate ``β`` (the meta-learning rate)::

    min_{θ_0, α}  E_task L_query(θ_S)

- ``maml``: ``α`` a fixed scalar, only ``θ_0`` is meta-learned (Finn et al., 2017);
- ``meta_sgd``: ``α`` per parameter, meta-learned with ``θ_0`` (Li et al., 2017); the
  hypergradient of the query loss w.r.t. the inner step sizes;
- ``meta_meta``: Meta-SGD whose outer optimizer is a hyperoptimizer tower
  (:class:`~metalearner.meta.towers.Tower`), so the meta-learning rate ``β`` is itself
  learned by one-step hypergradients: the **meta-meta** level. By default its hypergradient
  is the training meta-loss's (``hyper_source="train"``), which cannot see the meta-learner
  fit its training classes at the cost of new ones; ``"heldout"`` takes it from episodes of
  training classes set aside from meta-training (:meth:`ClassSplit.hold_out`), so the level
  tunes ``β`` for classes it does not train on (better on digits, worse on MNIST: ``docs/meta.md``).

On classification episodes any of them can start each task from a **prototype head**
(``head="prototypes"``, ProtoMAML: Triantafillou et al., 2020): the output layer is set from
the support set's class means in feature space, so the unadapted network is a nearest-mean
classifier on the meta-learned features, and the inner steps refine it.

Second order differentiates through the inner gradients; first order (``first_order=True``)
stops them (``∇L_support`` detached), which keeps ``∂θ_S/∂α = −∇L_support``: the rates still
get their gradient (a known bug elsewhere drops it). Tasks are batched with ``vmap`` over
``functional_call``; nothing is held across meta-iterations but the meta-parameters and the
outer optimizer's state, so memory is flat.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap
from torch.optim.lr_scheduler import LambdaLR

from metalearner.checkpoint import load_state, save_state
from metalearner.errors import ConfigError, DataError
from metalearner.meta.towers import Tower

Params = dict[str, Tensor]
METHODS = ("maml", "meta_sgd", "meta_meta")
HYPER_SOURCES = ("train", "heldout")  # meta_meta: the hypergradient of the training meta-loss, or of held-out classes'
HEADS = ("learned", "prototypes")
# class augmentation for meta-training: each class under the square's symmetries counts as a class of its own
AUGMENTS = {"none": 1, "rotations": 4, "dihedral": 8}  # -> symmetries per class (4 turns; with the transpose, 8)
BACKBONES = ("mlp", "conv")  # image episodes' network: an MLP 784-128-128-N, or three conv blocks (ClassSplit.model)


def symmetries(augment: str) -> int:
    """How many classes each class becomes under ``augment`` (one of ``AUGMENTS``)."""
    if augment not in AUGMENTS:
        raise ConfigError(f"unknown class augmentation {augment!r}; choose from {', '.join(AUGMENTS)}")
    return AUGMENTS[augment]

# ---------------------------------------------------------------------------- task families


class Episodes(NamedTuple):
    """A batch of tasks: support and query sets with a leading task dimension."""

    x_support: Tensor
    y_support: Tensor
    x_query: Tensor
    y_query: Tensor


@dataclass(frozen=True)
class Sinusoid:
    """Regression on ``y = A sin(x − φ)``, ``A ~ U[0.1, 5]``, ``φ ~ U[0, π]``, ``x ~ U[−5, 5]``
    (the MAML / Meta-SGD protocol); ``k_shot`` support points, ``k_query`` query points."""

    k_shot: int = 10
    k_query: int = 10

    def sample(self, n_tasks: int, gen: torch.Generator) -> Episodes:
        amp = torch.empty(n_tasks, 1, 1).uniform_(0.1, 5.0, generator=gen)
        phase = torch.empty(n_tasks, 1, 1).uniform_(0.0, math.pi, generator=gen)
        x = torch.empty(n_tasks, self.k_shot + self.k_query, 1).uniform_(-5.0, 5.0, generator=gen)
        y = amp * torch.sin(x - phase)
        k = self.k_shot
        return Episodes(x[:, :k], y[:, :k], x[:, k:], y[:, k:])

    def model(self) -> nn.Module:
        """The classic regressor: 1-40-40-1, ReLU."""
        return nn.Sequential(nn.Linear(1, 40), nn.ReLU(), nn.Linear(40, 40), nn.ReLU(), nn.Linear(40, 1))

    loss = staticmethod(F.mse_loss)
    metric = "mse"


CONV_BLOCKS, CONV_CHANNELS = 3, 32


def check_backbone(backbone: str) -> None:
    """A one-line error for a backbone that is not one of ``BACKBONES``."""
    if backbone not in BACKBONES:
        raise ConfigError(f"unknown backbone {backbone!r}; choose from {', '.join(BACKBONES)}")


def check_n_way(n_way: int) -> None:
    """Classification episodes need two classes or more (one makes every answer right)."""
    if not (isinstance(n_way, int) and n_way >= 2):
        raise ConfigError(f"n_way must be an integer >= 2 (one class leaves nothing to classify), got {n_way}")


class ClassSplit:
    """N-way K-shot classification episodes drawn from some classes of an image set.

    Each episode picks ``n_way`` of ``classes`` and relabels them ``0 … n_way−1`` in a random
    order; ``k_shot`` support and ``k_query`` query images per class. Meta-train and meta-test
    use disjoint class lists, so the test classes are never seen.

    ``augment`` (square images; for meta-training): every class turned by 90°, 180° and 270°
    (``"rotations"``) and also transposed (``"dihedral"``) is a class of its own, so five
    training classes become 20 or 40 (the Omniglot practice of Santoro et al., 2016). The
    symmetry is applied to the images an episode draws, so no copy of the data set is made.
    """

    metric = "acc"
    loss = staticmethod(F.cross_entropy)

    def __init__(self, x: Tensor, y: Tensor, classes: tuple[int, ...], *, n_way: int = 5, k_shot: int = 1,
                 k_query: int = 15, augment: str = "none", backbone: str = "mlp") -> None:  # fmt: skip
        n_sym = symmetries(augment)
        check_n_way(n_way)
        check_backbone(backbone)
        if len(classes) * n_sym < n_way:
            raise ConfigError(f"{n_way}-way episodes need at least {n_way} classes, got {len(classes) * n_sym}")
        self._source, self.classes, self.augment, self.backbone = (x, y), tuple(classes), augment, backbone
        self.x = x.reshape(len(x), -1)
        self.by_class = [torch.nonzero(y == c).flatten() for c in classes]
        if min(len(i) for i in self.by_class) < k_shot + k_query:
            raise ConfigError(f"a class has fewer than {k_shot + k_query} examples")
        self.n_way, self.k_shot, self.k_query = n_way, k_shot, k_query
        self.symmetries, self.side = n_sym, math.isqrt(self.x.shape[1])
        channels = math.prod(x.shape[1:-2]) if x.dim() >= 3 else 1
        square = self.side**2 == self.x.shape[1] and channels == 1
        if (self.symmetries > 1 or backbone == "conv") and not square:
            shape = "x".join(map(str, x.shape[1:]))
            what = f"class augmentation {augment!r}" if self.symmetries > 1 else "the conv backbone"
            raise ConfigError(f"{what} needs square one-channel images, got {shape}")
        if backbone == "conv" and self.side < 2**CONV_BLOCKS:
            raise ConfigError(f"the conv backbone needs images of at least {2**CONV_BLOCKS}x{2**CONV_BLOCKS}, got {self.side}x{self.side}")

    def sample(self, n_tasks: int, gen: torch.Generator) -> Episodes:
        per = self.k_shot + self.k_query
        picks = []
        turns = []
        for _ in range(n_tasks):
            chosen = torch.randperm(len(self.by_class) * self.symmetries, generator=gen)[: self.n_way].tolist()
            picks.append(torch.stack([self._draw(c // self.symmetries, per, gen) for c in chosen]))  # (n_way, per)
            turns.append([c % self.symmetries for c in chosen])
        idx = torch.stack(picks)  # (tasks, n_way, per)
        labels = torch.arange(self.n_way).view(1, -1, 1).expand_as(idx)
        x, k = self.x[idx], self.k_shot
        if self.symmetries > 1:
            x = self._turn(x, turns)
        flat = lambda t: t.reshape(n_tasks, -1, *t.shape[3:])  # noqa: E731
        return Episodes(flat(x[:, :, :k]), flat(labels[:, :, :k]), flat(x[:, :, k:]), flat(labels[:, :, k:]))

    def hold_out(self) -> tuple["ClassSplit", "ClassSplit"]:
        """``(train, held out)``: the last ``ceil(n_way / symmetries)`` classes (each under its
        symmetries, so enough for an episode) set aside, the way few-shot benchmarks keep
        validation classes apart from training ones."""
        k = -(-self.n_way // self.symmetries)
        if (len(self.classes) - k) * self.symmetries < self.n_way:
            raise ConfigError(f"holding out {k} of {len(self.classes)} classes leaves too few for {self.n_way}-way episodes")
        x, y = self._source
        make = lambda cs: ClassSplit(x, y, cs, n_way=self.n_way, k_shot=self.k_shot, k_query=self.k_query, augment=self.augment,  # noqa: E731
                                     backbone=self.backbone)
        return make(self.classes[:-k]), make(self.classes[-k:])

    def _turn(self, x: Tensor, turns: list[list[int]]) -> Tensor:
        """``x (tasks, n_way, per, D)`` with each class's images under its symmetry: ``s % 4``
        quarter turns, of the transposed image when ``s >= 4``."""
        out = torch.empty_like(x)
        for t, row in enumerate(turns):
            for w, sym in enumerate(row):
                img = x[t, w].view(-1, self.side, self.side)
                img = img.transpose(1, 2) if sym >= 4 else img
                out[t, w] = img.rot90(sym % 4, (1, 2)).reshape(len(img), -1)
        return out

    def _draw(self, c: int, n: int, gen: torch.Generator) -> Tensor:
        pool = self.by_class[c]
        return pool[torch.randperm(len(pool), generator=gen)[:n]]

    def model(self) -> nn.Module:
        """``backbone="mlp"``: an MLP 784-128-128-N (ReLU). ``"conv"``: three blocks of a 3x3
        convolution with 32 channels, ReLU and 2x2 max-pooling (28x28 -> 3x3), then a linear
        layer: the "Conv-4" of MAML's image experiments made smaller for a CPU, without batch
        normalisation (whose batch statistics would mix support and query images)."""
        if self.backbone == "mlp":
            d = self.x.shape[1]
            return nn.Sequential(nn.Linear(d, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, self.n_way))
        layers: list[nn.Module] = [nn.Unflatten(1, (1, self.side, self.side))]
        for i in range(CONV_BLOCKS):
            layers += [nn.Conv2d(1 if i == 0 else CONV_CHANNELS, CONV_CHANNELS, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
        return nn.Sequential(*layers, nn.Flatten(), nn.Linear(CONV_CHANNELS * (self.side // 2**CONV_BLOCKS) ** 2, self.n_way))


def image_splits(splits: Any, *, n_way: int, k_shot: int, k_query: int = 15,
                 train_classes: tuple[int, ...] = (0, 1, 2, 3, 4), augment: str = "dihedral",
                 backbone: str = "mlp") -> tuple[ClassSplit, ClassSplit]:  # fmt: skip
    """Meta-train episodes on ``train_classes`` (training images), each under the square's
    symmetries as classes of their own (``augment``, see :class:`ClassSplit`; ``"dihedral"``
    was chosen on scikit-learn's digits, ``docs/meta.md``), and meta-test episodes on the
    other classes (test images, upright): classes and images never seen in meta-training."""
    test_classes = tuple(c for c in range(splits.n_classes) if c not in train_classes)
    return (ClassSplit(splits.x_train, splits.y_train, train_classes, n_way=n_way, k_shot=k_shot, k_query=k_query,
                       augment=augment, backbone=backbone),
            ClassSplit(splits.x_test, splits.y_test, test_classes, n_way=n_way, k_shot=k_shot, k_query=k_query, backbone=backbone))  # fmt: skip


# --------------------------------------------------------------------------- functional core


def prototype_head(model: nn.Module, params: Params, x: Tensor, y: Tensor) -> Params:
    """``params`` with the output layer set from the support set (ProtoMAML, Triantafillou et
    al. 2020): row ``k`` of the last ``Linear`` is ``2 c_k``, its bias ``−‖c_k‖²``, ``c_k`` the
    mean penultimate features of class ``k``'s support examples, so before any inner step the
    network labels a query by its nearest class mean in feature space. Differentiable: the
    meta-gradient reaches the body through the prototypes. Labels are ``0 … n_way−1`` (a class
    without support examples gets a zero centre)."""
    if not isinstance(model, nn.Sequential) or not isinstance(model[-1], nn.Linear):
        raise ConfigError("the prototype head needs an nn.Sequential model whose last module is nn.Linear")
    last = list(model.named_children())[-1][0]
    body = {k: v for k, v in params.items() if not k.startswith(f"{last}.")}
    features = functional_call(model[:-1], body, (x,))
    n_way = params[f"{last}.weight"].shape[0]
    onehot = (y[:, None] == torch.arange(n_way, device=y.device)).to(features.dtype)  # vmap-safe one_hot
    centres = (onehot.T @ features) / onehot.sum(0).clamp_min(1)[:, None]
    return {**params, f"{last}.weight": 2 * centres, f"{last}.bias": -centres.square().sum(1)}


def adapt(
    model: nn.Module, params: Params, rates: Params, x: Tensor, y: Tensor, loss_fn: Callable[..., Tensor],
    steps: int, *, first_order: bool = False, head: str = "learned",
) -> Params:  # fmt: skip
    """``steps`` inner steps ``θ ← θ − α ⊙ ∇L_support(θ)`` from ``params`` (one task); with
    ``head="prototypes"`` the output layer is first set from the support set
    (:func:`prototype_head`)."""
    if head == "prototypes":
        params = prototype_head(model, params, x, y)

    def support_loss(p: Params) -> Tensor:
        return loss_fn(functional_call(model, p, (x,)), y)

    for _ in range(steps):
        grads = grad(support_loss)(params)
        if first_order:
            grads = {k: g.detach() for k, g in grads.items()}
        params = {k: p - rates[k] * grads[k] for k, p in params.items()}
    return params


def task_loss(meta: Params, fixed: Params, model: nn.Module, loss_fn: Callable[..., Tensor], steps: int,
              first_order: bool, head: str, xs: Tensor, ys: Tensor, xq: Tensor, yq: Tensor) -> Tensor:  # fmt: skip
    """Query loss of one task after adaptation from the meta-parameters."""
    params, rates = _split(meta, fixed)
    adapted = adapt(model, params, rates, xs, ys, loss_fn, steps, first_order=first_order, head=head)
    return loss_fn(functional_call(model, adapted, (xq,)), yq)


def meta_loss(meta: Params, fixed: Params, model: nn.Module, loss_fn: Callable[..., Tensor], steps: int,
              first_order: bool, batch: Episodes, head: str = "learned") -> Tensor:  # fmt: skip
    """Mean query loss over a batch of tasks (``vmap`` over the task dimension)."""
    per_task = vmap(task_loss, in_dims=(None, None, None, None, None, None, None, 0, 0, 0, 0))
    return per_task(meta, fixed, model, loss_fn, steps, first_order, head, *batch).mean()


def _split(meta: Params, fixed: Params) -> tuple[Params, Params]:
    """Weights ``θ_0`` and inner rates ``α`` from the meta-parameters (``rate/…`` keys) or,
    for MAML, from the fixed ones."""
    both = {**fixed, **meta}
    params = {k: v for k, v in both.items() if not k.startswith("rate/")}
    return params, {k: both[f"rate/{k}"] for k in params}


# ------------------------------------------------------------------------------ meta-training


@dataclass(frozen=True)
class FewShotConfig:
    """One meta-learner: method, inner loop, outer loop (``outer_lr`` is the meta-learning rate,
    the start value for ``meta_meta``, whose tower of ``height`` learns it with ``hyper_lr``)."""

    method: str = "maml"
    first_order: bool = False
    inner_steps: int = 1
    inner_lr: float = 0.01
    outer_lr: float = 1e-3
    meta_batch: int = 25
    iterations: int = 10_000
    height: int = 1
    hyper_lr: float = 0.03
    head: str = "learned"  # or "prototypes": the output layer set from the support set (classification)
    seed: int = 0
    # meta_meta: the level's hypergradient from the training meta-loss ("train") or from held-out classes ("heldout",
    # hold_out: better on digits, worse on MNIST, docs/meta.md); the other methods have no level ("train": nothing to do)
    hyper_source: str = "train"
    # the outer step's linear warm-up: iteration t applies outer_lr * min(1, t / outer_warmup) (0: off); for meta_meta the
    # level learns outer_lr itself meanwhile (the towers' warm-up), for the others a LambdaLR on their Adam
    outer_warmup: int = 0

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"unknown few-shot method {self.method!r}; choose from {', '.join(METHODS)}")
        if self.head not in HEADS:
            raise ConfigError(f"unknown head {self.head!r}; choose from {', '.join(HEADS)}")
        if self.hyper_source not in HYPER_SOURCES:
            raise ConfigError(f"unknown hyper_source {self.hyper_source!r}; choose from {', '.join(HYPER_SOURCES)}")
        if self.hyper_source != "train" and self.method != "meta_meta":
            raise ConfigError("hyper_source is the meta_meta level's; the other methods have no hypergradient")
        for name in ("inner_steps", "meta_batch", "iterations", "height"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not (isinstance(self.outer_warmup, int) and self.outer_warmup >= 0):
            raise ConfigError(f"outer_warmup must be an integer >= 0, got {self.outer_warmup}")
        for name in ("inner_lr", "outer_lr", "hyper_lr"):
            value = getattr(self, name)
            if not (value > 0 and math.isfinite(value)):
                raise ConfigError(f"{name} must be a positive number, got {value}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class MetaLearner:
    """A meta-trained learner: the model (for its structure), the meta-parameters (``θ_0`` and,
    for Meta-SGD, the ``rate/…`` inner step sizes) and the fixed ones (MAML's rates)."""

    model: nn.Module
    meta: Params
    fixed: Params
    config: FewShotConfig

    def adapt(self, x: Tensor, y: Tensor, loss_fn: Callable[..., Tensor], steps: int) -> Params:
        params, rates = _split(self.meta, self.fixed)
        return adapt(self.model, params, rates, x, y, loss_fn, steps, head=self.config.head)


def init_learner(model: nn.Module, config: FewShotConfig) -> MetaLearner:
    """``θ_0`` from the model's initialisation; rates ``inner_lr`` (per parameter if learned)."""
    weights = {k: v.detach().clone().requires_grad_() for k, v in model.named_parameters()}
    if config.method == "maml":
        rates = {f"rate/{k}": torch.tensor(config.inner_lr, dtype=torch.float64) for k in weights}
        return MetaLearner(model, weights, rates, config)
    rates = {f"rate/{k}": torch.full_like(v, config.inner_lr).requires_grad_() for k, v in weights.items()}
    return MetaLearner(model, {**weights, **rates}, {}, config)


def outer_optimizer(meta: Params, config: FewShotConfig) -> tuple[torch.optim.Optimizer, LambdaLR | None]:
    """Adam at the meta-learning rate, or (``meta_meta``) Adam whose rate a tower learns; with
    ``outer_warmup``, the scheduler that warms a plain Adam up (a tower warms itself up)."""
    if config.method == "meta_meta":
        # the one-step hypergradient every meta-iteration (the towers' trace helped the sinusoid but hurt images, docs/meta.md);
        # the hyper levels' Adam as it was measured (benchmarks/results/fewshot.json), whatever the towers' default
        return Tower(meta.values(), lr=config.outer_lr, base="adam", height=config.height, hyper_lr=config.hyper_lr, trace_decay=0.0,
                     hyper_every=1, warmup=config.outer_warmup, hyper_betas=(0.9, 0.9), max_update_ratio=0.0), None  # fmt: skip
    opt = torch.optim.Adam(meta.values(), lr=config.outer_lr)
    warmup = config.outer_warmup
    return opt, LambdaLR(opt, lambda t: min(1.0, (t + 1) / warmup)) if warmup else None  # the Tower's factor at its step t + 1


def meta_train(family: Any, config: FewShotConfig, *, log_every: int = 50,
               progress: Callable[[int, int, float], None] | None = None, checkpoint: str | os.PathLike | None = None,
               save_every: float = 30.0) -> tuple[MetaLearner, list[dict[str, float]]]:  # fmt: skip
    """Meta-train on ``family`` (``sample``, ``model``, ``loss``; for ``meta_meta`` with
    held-out hypergradients also ``hold_out``, else held-out episodes are other draws of it);
    returns the learner and a history of ``{iteration, meta_loss, outer_lr}`` every
    ``log_every`` iterations.

    ``checkpoint``: a file that keeps the meta-training (meta-parameters, the outer optimizer
    and its schedule, the task generator, the history) every ``save_every`` seconds and at
    the end; if it exists the run continues from it, and ends as an uninterrupted run would
    (tested). It must be of this ``config`` and ``log_every``, on the same family (the caller
    keys the file by them)."""
    check_head(config, family)
    heldout = None
    if config.hyper_source == "heldout":  # a family without hold_out (every task a fresh draw, as sinusoids): other draws
        family, heldout = family.hold_out() if hasattr(family, "hold_out") else (family, family)
    torch.manual_seed(config.seed)
    learner = init_learner(family.model(), config)
    opt, schedule = outer_optimizer(learner.meta, config)
    gen = torch.Generator().manual_seed(config.seed)
    history, running, done = [], 0.0, 0
    if checkpoint is not None and Path(checkpoint).is_file():
        history, running, done = _resume(checkpoint, config, log_every, learner, opt, schedule, gen)
        if progress is not None and history:
            progress(done, config.iterations, history[-1]["meta_loss"])
    saved_at = time.monotonic()
    for it in range(done + 1, config.iterations + 1):
        batch = family.sample(config.meta_batch, gen)
        loss = meta_loss(learner.meta, learner.fixed, learner.model, family.loss, config.inner_steps,
                         config.first_order, batch, config.head)  # fmt: skip
        opt.zero_grad(set_to_none=True)
        loss.backward()  # the outer level is plain autograd through the vmapped torch.func inner loop
        if heldout is None:
            opt.step()
        else:  # the level's hypergradient from held-out episodes at the same weights; the weights follow the training loss
            held = meta_loss(learner.meta, learner.fixed, learner.model, heldout.loss, config.inner_steps,
                             config.first_order, heldout.sample(config.meta_batch, gen), config.head)  # fmt: skip
            params = list(learner.meta.values())  # (the prototype head's output layer is unused: no gradient, as for .grad)
            opt.step(hyper_grads={p: g for p, g in zip(params, torch.autograd.grad(held, params, allow_unused=True)) if g is not None})
        if schedule is not None:
            schedule.step()
        running += float(loss.detach())
        if it % log_every == 0 or it == config.iterations:
            n = it % log_every or log_every
            history.append({"iteration": it, "meta_loss": running / n, "outer_lr": float(opt.param_groups[0]["lr"])})
            running = 0.0
            if progress is not None:
                progress(it, config.iterations, history[-1]["meta_loss"])
        if checkpoint is not None and (it == config.iterations or time.monotonic() - saved_at >= save_every):
            state = {"config": config.to_dict(), "log_every": log_every, "iteration": it, "history": history, "running": running,
                     "meta": learner.meta, "outer": opt.state_dict(), "schedule": schedule.state_dict() if schedule else None,
                     "generator": gen.get_state()}  # fmt: skip
            save_state(checkpoint, state)
            saved_at = time.monotonic()
    return learner, history


def _resume(checkpoint: str | os.PathLike, config: FewShotConfig, log_every: int, learner: MetaLearner,
            opt: torch.optim.Optimizer, schedule: LambdaLR | None, gen: torch.Generator) -> tuple[list[dict[str, float]], float, int]:  # fmt: skip
    """Load a :func:`meta_train` checkpoint into the fresh learner, optimizer, schedule and
    generator; returns the history, the running loss and the iterations done."""
    state = load_state(checkpoint)
    if not isinstance(state, dict) or {"config", "iteration", "meta", "outer", "generator"} - set(state):
        raise DataError(f"{checkpoint} is not a few-shot meta-training checkpoint; delete it or use another --out")
    if state["config"] != json.loads(json.dumps(config.to_dict())) or state.get("log_every") != log_every:
        raise ConfigError(f"{checkpoint} holds a meta-training of another configuration; delete it or use another --out")
    saved = state["meta"]
    if not isinstance(saved, dict) or {k: tuple(v.shape) for k, v in saved.items()} != {k: tuple(v.shape) for k, v in learner.meta.items()}:
        raise DataError(f"{checkpoint} holds the meta-parameters of another network; delete it or use another --out")
    with torch.no_grad():
        for name, value in learner.meta.items():
            value.copy_(saved[name])
    opt.load_state_dict(state["outer"])
    if schedule is not None:
        schedule.load_state_dict(state["schedule"])
    gen.set_state(state["generator"])
    return state["history"], float(state["running"]), int(state["iteration"])


def check_head(config: FewShotConfig, family: Any) -> None:
    """A one-line error for a head the family cannot take."""
    if config.head == "prototypes" and family.metric != "acc":
        raise ConfigError("the prototype head is for classification episodes (images), not regression")


# ----------------------------------------------------------------------------------- evaluation


def adaptation_curve(learner: MetaLearner, family: Any, episodes: Episodes, steps: int) -> Tensor:
    """Per-task score (MSE or accuracy) on the query set after 0 … ``steps`` inner steps,
    shape ``(tasks, steps + 1)``."""
    params, rates = _split(learner.meta, learner.fixed)
    model, loss_fn = learner.model, family.loss

    def one_task(xs: Tensor, ys: Tensor, xq: Tensor, yq: Tensor) -> Tensor:
        p, scores = adapt(model, params, rates, xs, ys, loss_fn, 0, head=learner.config.head), []  # the start: the head, if any
        for s in range(steps + 1):
            out = functional_call(model, p, (xq,))
            scores.append(loss_fn(out, yq) if family.metric == "mse" else (out.argmax(-1) == yq).float().mean())
            if s < steps:
                p = adapt(model, p, rates, xs, ys, loss_fn, 1)
        return torch.stack(scores)

    with torch.no_grad():
        return vmap(one_task)(*episodes)


def evaluate(learner: MetaLearner, family: Any, *, n_tasks: int, steps: int, seed: int = 12345,
             chunk: int = 100) -> dict[str, Any]:  # fmt: skip
    """Mean score with a 95% interval over ``n_tasks`` fresh tasks after ``steps`` inner steps,
    and the mean adaptation curve (score after 0 … ``steps`` steps)."""
    check_head(learner.config, family)
    gen = torch.Generator().manual_seed(seed)
    curves = torch.cat([adaptation_curve(learner, family, family.sample(min(chunk, n_tasks - i), gen), steps)
                        for i in range(0, n_tasks, chunk)])  # fmt: skip
    final = curves[:, -1].double()
    half = 1.96 * float(final.std()) / math.sqrt(len(final))
    mean = float(final.mean())
    return {"metric": family.metric, "mean": mean, "ci95": [mean - half, mean + half], "n_tasks": len(final),
            "steps": steps, "curve": curves.double().mean(0).tolist()}  # fmt: skip


def nearest_centroid(family: Any, *, n_tasks: int, seed: int = 12345, chunk: int = 100) -> dict[str, Any]:
    """A baseline with nothing learned: each query image takes the label of the nearest class
    mean of the support images (Euclidean, on the inputs as given), on the same episodes as
    :func:`evaluate` with the same ``seed``. What a meta-learned network must beat."""
    gen = torch.Generator().manual_seed(seed)
    hits = []
    for i in range(0, n_tasks, chunk):
        xs, ys, xq, yq = family.sample(min(chunk, n_tasks - i), gen)
        onehot = F.one_hot(ys, family.n_way).to(xs.dtype)  # (tasks, support, way)
        means = onehot.transpose(1, 2) @ xs / onehot.sum(1)[:, :, None]  # (tasks, way, features)
        hits.append((torch.cdist(xq, means).argmin(-1) == yq).double().mean(1))
    acc = torch.cat(hits)
    mean, half = float(acc.mean()), 1.96 * float(acc.std()) / math.sqrt(len(acc))
    return {"metric": "acc", "mean": mean, "ci95": [mean - half, mean + half], "n_tasks": len(acc)}


FEWSHOT_TASKS = ("sinusoid", "mnist", "fashion_mnist")


def make_families(task: str, *, k_shot: int, n_way: int = 5, data_dir: str | None = None,
                  augment: str = "dihedral", backbone: str = "mlp") -> tuple[Any, Any]:  # fmt: skip
    """``(meta-train family, meta-test family)``: sinusoids (tested on 100 query points), or
    ``n_way``-way episodes of MNIST / Fashion-MNIST, meta-tested on unseen classes (meta-trained
    on their training classes under ``augment``'s symmetries; sinusoids ignore it)."""
    symmetries(augment)  # an unknown one is refused for sinusoids too
    check_backbone(backbone)
    if task == "sinusoid" and backbone != "mlp":
        raise ConfigError("the conv backbone is for image episodes; sinusoids use the MLP 1-40-40-1")
    if task == "sinusoid":
        return Sinusoid(k_shot=k_shot, k_query=k_shot), Sinusoid(k_shot=k_shot, k_query=100)
    if task not in FEWSHOT_TASKS:
        raise ConfigError(f"unknown few-shot task {task!r}; choose from {', '.join(FEWSHOT_TASKS)}")
    check_n_way(n_way)  # before the data set is loaded (or downloaded)
    from metalearner.tasks import load_dataset

    return image_splits(load_dataset(task, data_dir=data_dir), n_way=n_way, k_shot=k_shot, augment=augment, backbone=backbone)


def train_and_evaluate(train: Any, test: Any, config: FewShotConfig, *, n_tasks: int, steps: int | None = None,
                       progress: Callable[[int, int, float], None] | None = None,
                       checkpoint: str | os.PathLike | None = None) -> dict[str, Any]:  # fmt: skip
    """Meta-train on ``train`` (continuing from ``checkpoint`` if it exists: :func:`meta_train`),
    evaluate on ``test`` after ``steps`` inner steps (default: as trained); the result holds
    the config, the score with its interval, curve and history (``train_seconds``: this
    process's meta-training time)."""
    t0 = time.perf_counter()
    learner, history = meta_train(train, config, progress=progress, log_every=max(1, config.iterations // 50), checkpoint=checkpoint)
    seconds = time.perf_counter() - t0
    result = evaluate(learner, test, n_tasks=n_tasks, steps=steps or config.inner_steps)
    return {"config": config.to_dict(), **result, "train_seconds": seconds, "history": history}
