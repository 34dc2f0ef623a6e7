"""Model families (MLP, small CNN, small GRU sequence model, small pre-norm Transformer) and
their architecture encoding.

Every model is described by a :class:`ModelConfig`; :func:`build_model` turns a config plus
the task's input shape and class count into an ``nn.Module``, and :func:`encode_architecture`
turns it into the fixed-length numeric vector (plus readable fields) that datasets and
learned optimizers consume.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Callable

import torch
from torch import nn

from metalearner.errors import ConfigError
from metalearner.tasks.data import is_whole

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "sigmoid": nn.Sigmoid,
    "leaky_relu": nn.LeakyReLU,
    "elu": nn.ELU,
}
INITS = ("default", "kaiming", "xavier", "orthogonal")
FAMILIES = ("mlp", "cnn", "rnn", "transformer")
TOKENS = 8  # a transformer reads a flat (L,) input as this many equal slices (zero-padded)


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of a base model.

    ``depth`` counts hidden layers (MLP), convolution blocks (CNN), stacked GRU layers (RNN) or
    attention blocks (transformer); ``width`` is the hidden size (MLP, RNN), the channel count
    of the first block, doubled per block (CNN), or the model dimension (transformer).
    """

    family: str = "mlp"
    depth: int = 2
    width: int = 256
    activation: str = "relu"
    init: str = "default"

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ConfigError(f"unknown model family {self.family!r}; choose from {', '.join(FAMILIES)}")
        if self.activation not in ACTIVATIONS:
            raise ConfigError(
                f"unknown activation {self.activation!r}; choose from {', '.join(ACTIVATIONS)}"
            )
        if self.init not in INITS:
            raise ConfigError(f"unknown init {self.init!r}; choose from {', '.join(INITS)}")
        for name in ("depth", "width"):
            value = getattr(self, name)
            if not is_whole(value):
                raise ConfigError(f"{name} must be a whole number, got {value!r}")
        least = 0 if self.family == "mlp" else 1
        if self.depth < least:
            raise ConfigError(f"depth must be >= {least} for a {self.family}, got {self.depth}")
        if self.width < 1:
            raise ConfigError(f"width must be >= 1, got {self.width}")


def _mlp(cfg: ModelConfig, in_features: int, n_classes: int) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Flatten()]
    size = in_features
    for _ in range(cfg.depth):
        layers += [nn.Linear(size, cfg.width), ACTIVATIONS[cfg.activation]()]
        size = cfg.width
    layers.append(nn.Linear(size, n_classes))
    return nn.Sequential(*layers)


def _cnn(cfg: ModelConfig, input_shape: tuple[int, ...], n_classes: int) -> nn.Sequential:
    """Conv blocks (conv, activation, 2x max-pool), global average pool, linear head.

    Works on images ``(C, H, W)`` with 2-D convolutions and on sequences ``(L,)`` or
    ``(C, L)`` with 1-D convolutions.
    """
    two_d = len(input_shape) == 3
    conv, pool = (nn.Conv2d, nn.MaxPool2d) if two_d else (nn.Conv1d, nn.MaxPool1d)
    channels = input_shape[0] if len(input_shape) >= 2 else 1
    layers: list[nn.Module] = [] if len(input_shape) >= 2 else [nn.Unflatten(1, (1, input_shape[0]))]
    for i in range(cfg.depth):
        out = cfg.width * 2**i
        layers += [conv(channels, out, 3, padding=1), ACTIVATIONS[cfg.activation](), pool(2, ceil_mode=True)]
        channels = out
    layers += [nn.AdaptiveAvgPool2d(1) if two_d else nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(channels, n_classes)]
    return nn.Sequential(*layers)


def _tokens(input_shape: tuple[int, ...], flat_tokens: int | None) -> tuple[int, int]:
    """How a sequence model reads an input: ``(steps, features per step)``. Images
    ``(C, H, W)`` are their rows, sequences ``(C, L)`` their columns, a flat ``(L,)`` input one
    value per step (``flat_tokens=None``, the GRU) or ``flat_tokens`` equal slices, zero-padded
    to a multiple (the transformer)."""
    if len(input_shape) == 3:
        return input_shape[1], input_shape[0] * input_shape[2]
    if len(input_shape) == 2:
        return input_shape[1], input_shape[0]
    return (input_shape[0], 1) if flat_tokens is None else (flat_tokens, -(-input_shape[0] // flat_tokens))


def _sequence(x: torch.Tensor, input_shape: tuple[int, ...], steps: int, features: int) -> torch.Tensor:
    """``(B, ...)`` inputs -> ``(B, steps, features)`` as :func:`_tokens` says."""
    n = x.shape[0]
    if len(input_shape) == 3:
        c, h, w = input_shape
        return x.reshape(n, c, h, w).permute(0, 2, 1, 3).reshape(n, h, c * w)
    if len(input_shape) == 2:
        return x.reshape(n, *input_shape).transpose(1, 2)
    x = x.reshape(n, -1)
    if x.shape[1] < steps * features:  # the transformer's last slice (the GRU's one value per step needs none)
        x = nn.functional.pad(x, (0, steps * features - x.shape[1]))
    return x.reshape(n, steps, features)


class _GRUClassifier(nn.Module):
    """A GRU over the rows of the input, the activation of its last output, a linear head.

    Sequences ``(L,)`` are read one value per step, ``(C, L)`` one column of ``C`` values per
    step, images ``(C, H, W)`` one row of ``C·W`` values per step (sequential MNIST by rows).
    """

    def __init__(self, cfg: ModelConfig, input_shape: tuple[int, ...], n_classes: int):
        super().__init__()
        self.input_shape = input_shape
        self.steps, features = _tokens(input_shape, None)
        self.gru = nn.GRU(features, cfg.width, num_layers=cfg.depth, batch_first=True)
        self.act = ACTIVATIONS[cfg.activation]()
        self.head = nn.Linear(cfg.width, n_classes)

    def sequence(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, ...)`` inputs -> ``(B, L, features)``, the steps the GRU reads."""
        return _sequence(x, self.input_shape, self.steps, self.gru.input_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.gru(self.sequence(x))
        return self.head(self.act(out[:, -1]))


def attention_weights(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """``softmax(q kᵀ / √d)`` over the last dimension, written out: on short rows (a few
    tokens) it is several times faster on CPU than ``torch.softmax``."""
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    e = (scores - scores.amax(-1, keepdim=True)).exp()
    return e / e.sum(-1, keepdim=True)


class _AttentionBlock(nn.Module):
    """Pre-norm: ``x + attention(LN(x))``, then ``x + MLP(LN(x))`` (hidden ``2·width``).
    Attention is written out in matrix products (no fused kernel), so that the meta-training
    engine can run the same operations over a population's stacked weights
    (``lopt.truncation._batched_transformer``, tested equal to this forward)."""

    def __init__(self, width: int, activation: str):
        super().__init__()
        self.heads = max(1, width // 16) if width % 16 == 0 else 1  # heads of 16 dimensions where the width allows
        self.norm1, self.qkv, self.proj = nn.LayerNorm(width), nn.Linear(width, 3 * width), nn.Linear(width, width)
        self.norm2, self.fc1, self.act, self.fc2 = nn.LayerNorm(width), nn.Linear(width, 2 * width), ACTIVATIONS[activation](), nn.Linear(2 * width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(self.norm1(x)).unflatten(-1, (3, self.heads, -1)).movedim(-3, 0).transpose(-2, -3)  # (B, H, T, d/H) each
        x = x + self.proj((attention_weights(q, k) @ v).transpose(-2, -3).flatten(-2))
        return x + self.fc2(self.act(self.fc1(self.norm2(x))))


class _Position(nn.Module):
    """A learned position embedding ``(1, tokens, width)``, added to the tokens (a module of its
    own so that its tensor comes after the embedding's in parameter order, where it was read
    as the input layer before ``ParamLayout.input_tensors`` passed over ``(1, …)`` tensors)."""

    def __init__(self, tokens: int, width: int):
        super().__init__()
        self.weight = nn.Parameter(0.02 * torch.randn(1, tokens, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.weight


class _Transformer(nn.Module):
    """A pre-norm Transformer encoder over the input's tokens (:func:`_tokens`): a linear
    embedding plus a learned position, ``depth`` attention blocks, a final LayerNorm, the mean
    over tokens, a linear head."""

    def __init__(self, cfg: ModelConfig, input_shape: tuple[int, ...], n_classes: int):
        super().__init__()
        self.input_shape = input_shape
        self.n_tokens, self.token_size = _tokens(input_shape, TOKENS)
        self.embed = nn.Linear(self.token_size, cfg.width)
        self.position = _Position(self.n_tokens, cfg.width)
        self.blocks = nn.Sequential(*(_AttentionBlock(cfg.width, cfg.activation) for _ in range(cfg.depth)))
        self.norm, self.head = nn.LayerNorm(cfg.width), nn.Linear(cfg.width, n_classes)

    def sequence(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, ...)`` inputs -> ``(B, tokens, features)``."""
        return _sequence(x, self.input_shape, self.n_tokens, self.token_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.blocks(self.position(self.embed(self.sequence(x))))
        return self.head(self.norm(h).mean(-2))


def _initialise(model: nn.Module, init: str, activation: str) -> None:
    if init == "default":
        return
    gain_name = {"gelu": "relu", "silu": "relu", "elu": "relu"}.get(activation, activation)
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d)):
            if init == "kaiming":
                nonlinearity = "leaky_relu" if gain_name == "leaky_relu" else "relu"
                nn.init.kaiming_normal_(m.weight, nonlinearity=nonlinearity)
            elif init == "xavier":
                nn.init.xavier_uniform_(m.weight, gain=nn.init.calculate_gain(gain_name))
            else:
                nn.init.orthogonal_(m.weight.view(m.weight.shape[0], -1))
            nn.init.zeros_(m.bias)


def build_model(
    cfg: ModelConfig, input_shape: tuple[int, ...], n_classes: int, *, seed: int | None = None
) -> nn.Module:
    """Build the model; with ``seed`` the initial weights are reproducible."""
    with torch.random.fork_rng(enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        if cfg.family == "mlp":
            model = _mlp(cfg, math.prod(input_shape), n_classes)
        elif cfg.family == "cnn":
            model = _cnn(cfg, input_shape, n_classes)
        elif cfg.family == "rnn":
            model = _GRUClassifier(cfg, input_shape, n_classes)
        else:
            model = _Transformer(cfg, input_shape, n_classes)
        _initialise(model, cfg.init, cfg.activation)
    return model


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


ENCODING_FIELDS: tuple[str, ...] = (
    *(f"family={f}" for f in FAMILIES),
    "depth",
    "log2_width",
    *(f"activation={a}" for a in ACTIVATIONS),
    *(f"init={i}" for i in INITS),
    "log10_params",
)


def encode_architecture(cfg: ModelConfig, n_params: int) -> dict:
    """Readable fields plus a fixed-length numeric ``vector`` (names in ``ENCODING_FIELDS``)."""
    vector = (
        [float(cfg.family == f) for f in FAMILIES]
        + [float(cfg.depth), math.log2(cfg.width)]
        + [float(cfg.activation == a) for a in ACTIVATIONS]
        + [float(cfg.init == i) for i in INITS]
        + [math.log10(max(n_params, 1))]
    )
    return {**asdict(cfg), "n_params": n_params, "vector": vector, "vector_fields": list(ENCODING_FIELDS)}
