"""Meta-models over windows ``(B, H, F)`` of step features: MLP, GRU, Transformer.

All three share one interface (:class:`Predictor`: windows in, ``(B, T, Q)`` out for ``T``
targets and ``Q`` quantiles), one training loop (:func:`train_predictor`: AdamW, standardised
inputs and targets, early stopping on a validation split) and one file format
(``model.safetensors`` + ``config.json``, never pickle).

Targets may be learned as residuals over an *anchor* feature (``y − x_t[anchor]``, e.g. the
current log loss for loss targets), which leaves the network only the change to predict.
The output layer starts at zero, so an untrained model predicts anchor + mean residual;
loss windows can be seen relative to the current smoothed loss (``relative``). With quantiles ``q_1..q_Q`` the loss is the pinball loss ``Σ_q max(q e, (q − 1) e)`` with
``e = y − ŷ_q``; without, the mean squared error. Point predictions are the median
quantile (or the only output).
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from metalearner.atomic import atomic_path, fsync_dir, read_json, write_json
from metalearner.errors import ConfigError, DataError, first_line

KINDS = ("mlp", "gru", "transformer")
ENSEMBLE_JSON = "ensemble.json"  # marks a folder of saved ensemble members


@dataclass
class PredictorConfig:
    """Architecture and data description of a predictor (saved as ``config.json``)."""

    kind: str = "gru"
    features: list[str] = field(default_factory=list)
    targets: list[str] = field(default_factory=list)
    window: int = 32
    hidden: int = 64
    layers: int = 2
    heads: int = 4
    dropout: float = 0.1
    quantiles: list[float] = field(default_factory=list)
    anchors: dict[str, str] = field(default_factory=dict)  # target -> feature it is a residual over
    relative: list[str] = field(default_factory=list)  # features seen relative to relative_to's last value
    relative_to: str = ""
    x_mean: list[float] = field(default_factory=list)
    x_std: list[float] = field(default_factory=list)
    y_mean: list[float] = field(default_factory=list)
    y_std: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"unknown predictor {self.kind!r}; choose from {', '.join(KINDS)}")
        if any(not 0 < q < 1 for q in self.quantiles):
            raise ConfigError(f"quantiles must lie in (0, 1), got {self.quantiles}")
        unknown = [a for a in [*self.anchors.values(), *self.relative, *([self.relative_to] if self.relative else [])]
                   if a not in self.features]
        if unknown:
            raise ConfigError(f"anchor feature {unknown[0]!r} is not among the features")


class Predictor(nn.Module):
    """Windows ``(B, H, F)`` (raw features) -> predictions ``(B, T, Q)`` in target units."""

    def __init__(self, cfg: PredictorConfig) -> None:
        super().__init__()
        self.cfg = cfg
        F, T, Q, d = len(cfg.features), len(cfg.targets), max(len(cfg.quantiles), 1), cfg.hidden
        self.register_buffer("x_mean", torch.tensor(cfg.x_mean or [0.0] * F, dtype=torch.float32))
        self.register_buffer("x_std", torch.tensor(cfg.x_std or [1.0] * F, dtype=torch.float32))
        self.register_buffer("y_mean", torch.tensor(cfg.y_mean or [0.0] * T, dtype=torch.float32))
        self.register_buffer("y_std", torch.tensor(cfg.y_std or [1.0] * T, dtype=torch.float32))
        anchor = [cfg.features.index(cfg.anchors[t]) if t in cfg.anchors else -1 for t in cfg.targets]
        self.register_buffer("anchor", torch.tensor(anchor, dtype=torch.long), persistent=False)
        if cfg.kind == "mlp":
            dims = [F * cfg.window] + [d] * cfg.layers
            body: list[nn.Module] = []
            for a, b in zip(dims[:-1], dims[1:]):
                body += [nn.Linear(a, b), nn.GELU(), nn.Dropout(cfg.dropout)]
            self.body = nn.Sequential(*body)
        elif cfg.kind == "gru":
            self.inp = nn.Linear(F, d)
            self.body = nn.GRU(d, d, num_layers=cfg.layers, batch_first=True, dropout=cfg.dropout if cfg.layers > 1 else 0.0)
        else:
            self.inp = nn.Linear(F, d)
            self.pos = nn.Parameter(torch.zeros(cfg.window, d))
            layer = nn.TransformerEncoderLayer(d, cfg.heads, 2 * d, cfg.dropout, batch_first=True, norm_first=True)
            self.body = nn.TransformerEncoder(layer, cfg.layers, enable_nested_tensor=False)
        self.head = nn.Linear(d, T * Q)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)  # start at the anchor + mean residual: the persistence-like forecast
        rel = torch.zeros(F, dtype=torch.bool)
        rel[[cfg.features.index(f) for f in cfg.relative]] = True
        self.register_buffer("rel", rel, persistent=False)
        self.ref = cfg.features.index(cfg.relative_to) if cfg.relative else -1

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """Re-express the ``relative`` features as differences to ``relative_to`` at the last
        step (so a loss window is seen by its shape, not its level)."""
        if self.ref < 0:
            return x
        return x - self.rel * x[:, -1:, self.ref : self.ref + 1]

    def encode(self, z: torch.Tensor) -> torch.Tensor:
        """Standardised windows -> one vector per window."""
        if self.cfg.kind == "mlp":
            return self.body(z.flatten(1))
        if self.cfg.kind == "gru":
            return self.body(self.inp(z))[0][:, -1]
        H = z.shape[1]
        return self.body(self.inp(z) + self.pos[-H:])[:, -1]

    def forward_std(self, x: torch.Tensor) -> torch.Tensor:
        """Predictions in standardised (residual) target units, ``(B, T, Q)``."""
        z = ((self.prepare(x) - self.x_mean) / self.x_std).clamp(-10, 10)
        B = x.shape[0]
        return self.head(self.encode(z)).view(B, len(self.cfg.targets), -1)

    def anchor_values(self, x: torch.Tensor) -> torch.Tensor:
        """``x_t[anchor]`` per target (0 for targets without an anchor), ``(B, T)``."""
        last = x[:, -1]
        vals = last[:, self.anchor.clamp_min(0)]
        return torch.where(self.anchor >= 0, vals, torch.zeros_like(vals))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.forward_std(x) * self.y_std[:, None] + self.y_mean[:, None]
        return y + self.anchor_values(x)[..., None]

    @torch.no_grad()
    def predict(self, x: np.ndarray | torch.Tensor, batch_size: int = 4096) -> np.ndarray:
        """Point predictions ``(B, T)`` (median quantile, if any) as a NumPy array."""
        self.eval()
        x = torch.as_tensor(x, dtype=torch.float32)
        outs = [self(x[i : i + batch_size]) for i in range(0, len(x), batch_size)]
        y = torch.cat(outs) if outs else torch.zeros(0, len(self.cfg.targets), 1)
        q = self.cfg.quantiles
        mid = int(np.argmin([abs(v - 0.5) for v in q])) if q else 0
        return y[..., mid].numpy()


class Ensemble:
    """The median of several predictors' point predictions (same features, targets, window):
    members that differ in seed or kind err partly independently, and the median keeps the
    typical forecast without letting one member's outlier move it (with two members it is
    their mean)."""

    def __init__(self, models: list[Predictor]) -> None:
        if not models or any(m.cfg.features != models[0].cfg.features or m.cfg.targets != models[0].cfg.targets
                             or m.cfg.window != models[0].cfg.window for m in models):  # fmt: skip
            raise ConfigError("an ensemble needs predictors with the same features, targets and window")
        self.models = models
        self.cfg = models[0].cfg

    def predict(self, x: np.ndarray | torch.Tensor, batch_size: int = 4096) -> np.ndarray:
        """Point predictions ``(B, T)``: the members' median, element by element."""
        return np.median([m.predict(x, batch_size) for m in self.models], axis=0)


def loss_fn(pred: torch.Tensor, y: torch.Tensor, quantiles: list[float]) -> torch.Tensor:
    """MSE, or the pinball loss over ``quantiles``; NaN targets are masked out."""
    mask = torch.isfinite(y)
    y = torch.where(mask, y, torch.zeros_like(y))[..., None]
    if quantiles:
        q = torch.tensor(quantiles, dtype=pred.dtype)
        e = y - pred
        per = torch.maximum(q * e, (q - 1) * e).sum(-1)
    else:
        per = (pred[..., 0] - y[..., 0]) ** 2
    return (per * mask).sum() / mask.sum().clamp_min(1)


@dataclass
class TrainConfig:
    """Optimisation of a predictor: AdamW, minibatches, early stopping with ``patience``."""

    epochs: int = 30
    batch_size: int = 256
    lr: float = 2e-3
    weight_decay: float = 1e-2
    patience: int = 5
    seed: int = 0
    max_train: int | None = None  # cap on examples drawn per epoch (None: all)
    # told ``update(epochs done, epochs, loss=..., val=...)`` after each epoch (all done on an early stop): a progress
    # bar, fit's protocol
    progress: Any = field(default=None, repr=False, compare=False)


def _standardise(cfg: PredictorConfig, x: np.ndarray, y: np.ndarray) -> None:
    sample = np.random.default_rng(0).choice(len(x), min(len(x), 20000), replace=False)  # rows are sorted by run
    flat = Predictor(cfg).prepare(torch.as_tensor(x[np.sort(sample)])).numpy().reshape(-1, x.shape[-1])
    cfg.x_mean = flat.mean(0).tolist()
    std = flat.std(0)
    cfg.x_std = np.where(std < 1e-3, 1.0, std).tolist()  # constant in training (an unseen one-hot): unscaled
    idx = [cfg.features.index(cfg.anchors[t]) if t in cfg.anchors else None for t in cfg.targets]
    res = np.stack([y[:, j] - (x[:, -1, i] if i is not None else 0.0) for j, i in enumerate(idx)], 1)
    cfg.y_mean = np.nanmean(res, 0).tolist()
    cfg.y_std = np.maximum(np.nanstd(res, 0), 1e-6).tolist()


def _std_targets(model: Predictor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (y - model.anchor_values(x) - model.y_mean) / model.y_std


def train_predictor(
    cfg: PredictorConfig, train: tuple[np.ndarray, np.ndarray], val: tuple[np.ndarray, np.ndarray] | None,
    tc: TrainConfig = TrainConfig(),
) -> tuple[Predictor, list[dict[str, float]]]:
    """Fit a predictor on ``(windows, targets)``; keep the weights of the best validation
    epoch (stop after ``patience`` epochs without improvement). Returns the model and its
    training curve (one dict per epoch: ``epoch``, ``train_loss``, ``val_loss``)."""
    x, y = train
    if len(x) == 0:
        raise DataError("no training examples (check the split and the target)")
    torch.manual_seed(tc.seed)
    rng = np.random.default_rng(tc.seed)
    _standardise(cfg, x, y)
    model = Predictor(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    X, Y = torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y, dtype=torch.float32)
    V = (torch.as_tensor(val[0], dtype=torch.float32), torch.as_tensor(val[1], dtype=torch.float32)) if val and len(val[0]) else None
    best, best_state, bad, history = math.inf, None, 0, []
    for epoch in range(tc.epochs):
        model.train()
        perm = rng.permutation(len(X))[: tc.max_train or None]
        total, n = 0.0, 0
        for i in range(0, len(perm), tc.batch_size):
            b = torch.as_tensor(perm[i : i + tc.batch_size])
            loss = loss_fn(model.forward_std(X[b]), _std_targets(model, X[b], Y[b]), cfg.quantiles)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            total, n = total + float(loss.detach()) * len(b), n + len(b)
        rec = {"epoch": epoch, "train_loss": total / max(n, 1)}
        score = rec["train_loss"]
        if V is not None:
            model.eval()
            with torch.no_grad():
                vl = [loss_fn(model.forward_std(V[0][i : i + 4096]), _std_targets(model, V[0][i : i + 4096], V[1][i : i + 4096]),
                              cfg.quantiles) * len(V[0][i : i + 4096]) for i in range(0, len(V[0]), 4096)]  # fmt: skip
            score = rec["val_loss"] = float(sum(vl)) / len(V[0])
        history.append(rec)
        if score < best - 1e-6:
            best, bad = score, 0
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            bad += 1
        stop = bad >= tc.patience
        if tc.progress is not None:  # an early stop skips the remaining epochs
            tc.progress.update(tc.epochs if stop else epoch + 1, tc.epochs, loss=rec["train_loss"], val=rec.get("val_loss", math.nan))
        if stop:
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return model, history


CONFIG_JSON, WEIGHTS, HISTORY_JSON, SPLIT_JSON = "config.json", "model.safetensors", "history.json", "split.json"


def _write(model: Predictor | Ensemble, folder: Path, history: list[Any] | None) -> None:
    """Write ``model``'s files into ``folder`` (the layout of :func:`save_predictor`)."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    if isinstance(model, Ensemble):
        for i, member in enumerate(model.models):
            _write(member, folder / f"member-{i}", history[i] if history else None)
        write_json(folder / ENSEMBLE_JSON, {"members": len(model.models), "combine": "median"})
        return
    with atomic_path(folder / WEIGHTS) as tmp:
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp))
    write_json(folder / CONFIG_JSON, asdict(model.cfg))
    if history is not None:
        write_json(folder / HISTORY_JSON, history)


def _saved_files(folder: Path) -> list[Path]:
    """The files of a predictor saved in ``folder``, its markers (what makes it load) first."""
    members = sorted(p for p in folder.glob("member-*") if p.name[len("member-"):].isdigit())
    return [folder / n for n in (CONFIG_JSON, ENSEMBLE_JSON, WEIGHTS, HISTORY_JSON, SPLIT_JSON)] + members


def save_predictor(
    model: Predictor | Ensemble, out: str | Path, history: list[Any] | None = None, split: dict[str, Any] | None = None,
) -> Path:
    """``out/model.safetensors`` + ``out/config.json`` (+ ``history.json``). An
    :class:`Ensemble` is saved as ``out/ensemble.json`` and one such folder per member
    (``member-0``, ...); its ``history`` is the list of the members' histories. ``split``
    (the split it was trained on) is saved as ``split.json``, which ``mirror eval`` reads.

    Saving replaces the predictor ``out`` held before, single or ensemble, with its history
    and split (other files stay). The new files are written into a hidden folder in ``out``
    first; then the old markers (``config.json``, ``ensemble.json``) go, the rest moves in,
    and the new marker comes last: a crash leaves the old predictor, none (loading raises
    :class:`DataError`) or the new one, never a mix (a hidden folder that a killed save left
    is removed by the next save, so two saves into one folder at once are not supported)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob(".saving-*"):  # what a save killed before its cleanup left
        shutil.rmtree(stale, ignore_errors=True)
    stage = Path(tempfile.mkdtemp(dir=out, prefix=".saving-"))
    try:
        _write(model, stage, history)
        if split is not None:
            write_json(stage / SPLIT_JSON, split)
        for old in _saved_files(out):
            if old.is_dir() and not old.is_symlink():
                shutil.rmtree(old)
            else:
                old.unlink(missing_ok=True)
        marker = ENSEMBLE_JSON if isinstance(model, Ensemble) else CONFIG_JSON
        for p in sorted(stage.iterdir(), key=lambda p: p.name == marker):  # the marker last
            os.replace(p, out / p.name)
        fsync_dir(out)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return out


def load_predictor(path: str | Path) -> Predictor | Ensemble:
    """A predictor or ensemble saved by :func:`save_predictor` (safetensors, no pickle); a
    missing, corrupt or inconsistent file raises :class:`DataError` naming it."""
    from safetensors.torch import load_file

    path = Path(path)
    if (path / ENSEMBLE_JSON).exists():
        meta = read_json(path / ENSEMBLE_JSON)
        n = meta.get("members") if isinstance(meta, dict) else None
        if not isinstance(n, int) or n < 1:
            raise DataError(f"{path / ENSEMBLE_JSON} does not give a number of members >= 1")
        try:
            return Ensemble([load_predictor(path / f"member-{i}") for i in range(n)])
        except ConfigError as e:
            raise DataError(f"{path}: {e}") from None
    config, weights = path / CONFIG_JSON, path / WEIGHTS
    if not config.exists() or not weights.exists():
        raise DataError(f"{path} is not a saved predictor (needs {CONFIG_JSON} and {WEIGHTS})")
    cfg = read_json(config)
    try:
        model = Predictor(PredictorConfig(**cfg))
    except Exception as e:  # not a dict, unknown keys, values no predictor can have
        raise DataError(f"{config} is not a valid predictor config: {first_line(e)}") from None
    try:
        state = load_file(str(weights))
    except Exception as e:  # SafetensorError (truncated, not safetensors), OSError
        raise DataError(f"{weights} is not a readable safetensors file: {first_line(e)}") from None
    try:
        model.load_state_dict(state)
    except RuntimeError:
        raise DataError(f"{weights} does not match {config} (tensors with other names or shapes)") from None
    model.eval()
    return model


def read_history(path: str | Path) -> list[dict[str, Any]]:
    """A saved predictor's training curve (an ensemble's first member's)."""
    path = Path(path)
    p = (path / "member-0" if (path / ENSEMBLE_JSON).exists() else path) / HISTORY_JSON
    return read_json(p) if p.exists() else []
