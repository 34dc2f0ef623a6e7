"""Real and toy data sets, loaded into memory as torch tensors.

Image sets (MNIST, Fashion-MNIST) are read from a data directory laid out as the
publishers distribute them (``mnist/train-images-idx3-ubyte.gz`` ...), downloaded there when
missing, and verified against the MD5 of their decompressed content. Every problem a user
can fix (missing or corrupt file, offline, bad name) raises :class:`DataError` or
:class:`ConfigError` with a one-line message.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import hashlib
import logging
import math
import numbers
import os
import random
import shutil
import struct
import tempfile
import urllib.request
import warnings
import zlib
from dataclasses import dataclass
from http.client import HTTPException
from pathlib import Path
from typing import Any, Callable, NamedTuple, Sequence

import numpy as np
import torch

from metalearner.errors import ConfigError, DataError, MetalearnerWarning

log = logging.getLogger(__name__)

DOWNLOAD_TIMEOUT = 30.0
DATA_ENV_VAR = "METALEARNER_DATA"


@dataclass(frozen=True, eq=False)
class Splits:
    """Train/validation/test tensors of one data set (x float32, y int64 class indices)."""

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    n_classes: int
    input_shape: tuple[int, ...]

    @property
    def n_train(self) -> int:
        return len(self.y_train)

    @property
    def n_val(self) -> int:
        return len(self.y_val)

    @property
    def n_test(self) -> int:
        return len(self.y_test)


# ---------------------------------------------------------------------------- IDX files

_IDX_DTYPES = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _read_bytes(path: Path) -> bytes:
    """The file's content, gunzipped when it is gzip (detected by its magic bytes)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or _one_line(exc)}") from exc
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as exc:
            raise DataError(
                f"{path} is a truncated or corrupt gzip file ({_one_line(exc)}); delete it to re-download"
            ) from exc
    return data


def _parse_idx(data: bytes, path: Path) -> np.ndarray:
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise DataError(f"{path} is not an IDX file (bad magic {data[:4].hex() or 'empty'}); delete it to re-download")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{path} is truncated inside its IDX header; delete it to re-download")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    expected = math.prod(dims) * dtype.itemsize
    if len(data) - header != expected:
        raise DataError(
            f"{path} has an IDX payload of {len(data) - header} bytes but its dims {dims} need {expected}; "
            "the file is truncated or corrupt, delete it to re-download"
        )
    array = np.frombuffer(data, dtype, offset=header).reshape(dims)
    return array.astype(dtype.newbyteorder("=")) if dtype.byteorder == ">" else array


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Parse an IDX file (gzipped or raw) into an array; malformed files raise DataError."""
    path = Path(path)
    return _parse_idx(_read_bytes(path), path)


def _md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


@functools.lru_cache(maxsize=16)
def _read_verified_idx(path: Path, md5: str) -> np.ndarray:
    """Decoded, checksum-verified content of one IDX file, cached per (resolved) path."""
    data = _read_bytes(path)
    actual = _md5(data)
    if actual != md5:
        raise DataError(
            f"checksum mismatch for {path}: expected md5 {md5} of the decompressed content, "
            f"got {actual}; delete the file to re-download it"
        )
    return _parse_idx(data, path)


# ------------------------------------------------------------------ data dir and download


class _DataDir(NamedTuple):
    """The data directory and where it came from: ``"given"``, ``"env"`` or ``"cache"``.

    Only the default per-user cache may be created; a directory the user named must exist.
    """

    path: Path
    origin: str

    def check(self) -> None:
        """Fail in one line when a directory the user named does not exist."""
        if self.origin == "cache" or self.path.is_dir():
            return
        source = f" (from ${DATA_ENV_VAR})" if self.origin == "env" else ""
        problem = "is not a directory" if self.path.exists() else "does not exist"
        raise DataError(f"data directory {self.path}{source} {problem}")

    def hint(self, needed: str) -> str:
        """How to point at a folder that has ``needed``, without repeating what the user did."""
        if self.origin == "given":
            return f"check that the data directory {self.path} is the folder that has {needed}"
        if self.origin == "env":
            return f"${DATA_ENV_VAR} is {self.path}: set it (or pass --data-dir) to a folder that has {needed}"
        return f"pass --data-dir or set {DATA_ENV_VAR} to a folder that has {needed}"


def _data_dir(data_dir: str | os.PathLike | None) -> _DataDir:
    if data_dir is not None and str(data_dir) != "":
        return _DataDir(Path(data_dir).expanduser().resolve(), "given")
    if os.environ.get(DATA_ENV_VAR):
        return _DataDir(Path(os.environ[DATA_ENV_VAR]).expanduser().resolve(), "env")
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return _DataDir((Path(cache) / "metalearner" / "data").expanduser().resolve(), "cache")


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """The data directory: ``data_dir``, else $METALEARNER_DATA, else a per-user cache."""
    return _data_dir(data_dir).path


class _ImageSource(NamedTuple):
    """Where a published IDX image set lives: its folder, mirrors and decompressed MD5s."""

    folder: str
    mirrors: tuple[str, ...]
    md5: dict[str, str]


_IMAGE_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")

_IMAGE_SOURCES = {
    "mnist": _ImageSource(
        "mnist",
        ("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"),
        dict(zip(_IMAGE_FILES, (
            "6bbc9ace898e44ae57da46a324031adb",
            "a25bea736e30d166cdddb491f175f624",
            "2646ac647ad5339dbf082846283269ea",
            "27ae3e4e09519cfbb04c329615203637",
        ))),
    ),
    "fashion_mnist": _ImageSource(
        "fashion-mnist",
        ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        dict(zip(_IMAGE_FILES, (
            "f4a8712d7a061bf5bd6d2ca38dc4d50a",
            "9018921c3c673c538a1fc5bad174d6f9",
            "8181f5470baa50b63fa0f6fddb340f0a",
            "15d484375f8d13e6eb1aabb0c3f46965",
        ))),
    ),
}


def _download(urls: Sequence[str], dest: Path, md5: str, root: _DataDir) -> None:
    """Fetch the first mirror that works into a temp file, verify it, then move it into place.

    A partial or corrupt download never appears under ``dest``; when every mirror fails the
    DataError lists why. Only the default cache directory is created when missing.
    """
    needed = f"{dest.parent.name}/{dest.name}"
    try:
        dest.parent.mkdir(parents=root.origin == "cache", exist_ok=True)
    except OSError as exc:
        raise DataError(f"cannot create data folder {dest.parent} ({_one_line(exc)}); {root.hint(needed)}") from exc
    failures = []
    for url in urls:
        log.info("downloading %s to %s", url, dest)
        try:
            fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
        except OSError as exc:
            raise DataError(f"cannot write to data folder {dest.parent} ({_one_line(exc)}); {root.hint(needed)}") from exc
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT) as response:
                shutil.copyfileobj(response, out)
            actual = _md5(_read_bytes(tmp))
            if actual == md5:
                os.replace(tmp, dest)
                return
            failures.append(f"{url}: md5 of the decompressed content is {actual}, expected {md5}")
        except (OSError, HTTPException, DataError) as exc:
            failures.append(f"{url}: {_one_line(exc)}")
        finally:
            tmp.unlink(missing_ok=True)
    raise DataError(
        f"{dest.name} is missing from {dest.parent} and could not be downloaded "
        f"({'; '.join(failures)}); {root.hint(needed)}"
    )


def _locate(source: _ImageSource, root: _DataDir, stem: str, download: bool) -> Path:
    """Path of ``stem`` (.gz preferred, raw accepted) under ``root``, downloading it if allowed."""
    folder = root.path / source.folder
    for candidate in (folder / f"{stem}.gz", folder / stem):
        if candidate.is_file():
            return candidate
    root.check()
    gz = folder / f"{stem}.gz"
    if not download:
        raise DataError(
            f"{gz.name} is missing from {folder} (downloading is disabled); {root.hint(f'{source.folder}/{gz.name}')}"
        )
    _download([mirror + gz.name for mirror in source.mirrors], gz, source.md5[stem], root)
    return gz


def _image_arrays(name: str, root: _DataDir, download: bool) -> list[np.ndarray]:
    """The four decoded uint8 arrays (train x, train y, test x, test y) of an image set."""
    source = _IMAGE_SOURCES[name]
    arrays = [_read_verified_idx(_locate(source, root, stem, download), source.md5[stem]) for stem in _IMAGE_FILES]
    for x, y in (arrays[:2], arrays[2:]):
        if len(x) != len(y):
            raise DataError(f"{name} in {root.path} has {len(x)} images but {len(y)} labels; delete it to re-download")
    return arrays


# ------------------------------------------------------------------------ data sets


class _Raw(NamedTuple):
    """A data set before splitting: test arrays are None where the publisher has no test set."""

    x: np.ndarray
    y: np.ndarray
    x_test: np.ndarray | None
    y_test: np.ndarray | None
    n_classes: int
    per_feature: bool  # standardise each feature (tabular) or with one scalar (images, signals)


def _images(name: str, *, data_dir: str | os.PathLike | None, download: bool, **_: Any) -> _Raw:
    # Kept as uint8: scaling to [0, 1] before standardising would cancel out exactly.
    x, y, x_test, y_test = _image_arrays(name, _data_dir(data_dir), download)
    return _Raw(x[:, None], y, x_test[:, None], y_test, 10, per_feature=False)


def _mnist1d(*, seed: int, num_samples: int, **_: Any) -> _Raw:
    from mnist1d.data import get_dataset_args, make_dataset

    if not (is_whole(num_samples) and num_samples >= 10):  # 20% of it is the test set, a few per class
        raise ConfigError(f"mnist1d num_samples must be a whole number >= 10, got {num_samples!r}")
    args = get_dataset_args()
    args.seed, args.num_samples = seed, int(num_samples)
    # make_dataset reseeds the global RNGs; restore them so loading has no side effects.
    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        d = make_dataset(args)
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
    return _Raw(d["x"], d["y"], d["x_test"], d["y_test"], 10, per_feature=False)


def _moons(*, seed: int, n_samples: int, noise: float, **_: Any) -> _Raw:
    from sklearn.datasets import make_moons

    if not (is_whole(n_samples) and n_samples >= 1):
        raise ConfigError(f"moons n_samples must be a whole number >= 1, got {n_samples!r}")
    if isinstance(noise, bool) or not isinstance(noise, (int, float, np.number)) or not noise >= 0:
        raise ConfigError(f"moons noise must be a number >= 0, got {noise!r}")
    x, y = make_moons(n_samples=int(n_samples), noise=float(noise), random_state=seed)
    return _Raw(x, y, None, None, 2, per_feature=True)


def _digits(**_: Any) -> _Raw:
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    return _Raw(x / 16.0, y, None, None, 10, per_feature=True)


def _synthetic_options() -> dict[str, Any]:
    from metalearner.tasks.synthetic import Shift, SyntheticSpec

    spec = {f.name: f.default for f in dataclasses.fields(SyntheticSpec) if f.name != "seed"}
    shift = {f.name: f.default for f in dataclasses.fields(Shift)}
    return {**spec, **shift, "sample_seed": None, "test_fraction": 0.2}


# name -> (loader called with data_dir, seed, download and the options, accepted options with defaults)
_LOADERS: dict[str, tuple[Callable[..., _Raw], dict[str, Any]]] = {
    "mnist": (functools.partial(_images, "mnist"), {}),
    "fashion_mnist": (functools.partial(_images, "fashion_mnist"), {}),
    "mnist1d": (_mnist1d, {"num_samples": 5000}),
    "moons": (_moons, {"n_samples": 2000, "noise": 0.2, "test_fraction": 0.2}),
    "digits": (_digits, {"test_fraction": 0.2}),
}

DATASETS: tuple[str, ...] = (*_LOADERS, "synthetic")


def _check_fraction(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)) or not 0.0 <= value < 1.0:
        raise ConfigError(f"{name} must be a number in [0, 1), got {value!r}")
    return float(value)


def _holdout(idx: np.ndarray, fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Split indices into (kept, held out) with a seeded permutation."""
    idx = rng.permutation(idx)
    n_held = int(round(len(idx) * fraction))
    return idx[n_held:], idx[:n_held]


def _standardiser(x_train: np.ndarray, per_feature: bool) -> Callable[[np.ndarray], torch.Tensor]:
    """Maps arrays to float32 tensors standardised with the training split's statistics."""
    if x_train.dtype == np.uint8 and not per_feature:  # byte images: a histogram is exact and ~10x faster
        counts, values = np.bincount(x_train.ravel(), minlength=256), np.arange(256)
        mean = counts @ values / counts.sum()
        std = np.sqrt(counts @ (values - mean) ** 2 / counts.sum())
    else:
        axis = 0 if per_feature else None
        mean = np.mean(x_train, axis=axis, dtype=np.float64)
        std = np.std(x_train, axis=axis, dtype=np.float64)
    std = np.where(std > 1e-12, std, 1.0)
    mean, std = np.float32(mean), np.float32(std)
    return lambda x: torch.from_numpy(np.ascontiguousarray((x.astype(np.float32) - mean) / std))


def _subset(n: int, n_train: int | None, seed: int, name: str) -> np.ndarray:
    """Sorted positions of a seeded subset of at most ``n_train`` of ``n`` training examples
    (all of them, with a warning, when ``n_train`` asks for more than ``name`` has)."""
    if n_train is not None and n_train > n:
        warnings.warn(f"n_train {n_train} is more than the {n} training examples of {name}: all of them are used",
                      MetalearnerWarning, stacklevel=3)  # fmt: skip
    if n_train is None or n_train >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng([seed, 1]).permutation(n)[:n_train])


def _labels(y: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(y.astype(np.int64))


def _options(name: str, given: dict[str, Any], accepted: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(given) - set(accepted))
    if unknown:
        valid = ", ".join(accepted) or "none"
        raise ConfigError(f"unknown option(s) {', '.join(unknown)} for data set {name!r}; valid options: {valid}")
    return {**accepted, **given}


def load_dataset_capped(name: str, *, n_train: int, **kwargs: Any) -> Splits:
    """:func:`load_dataset` where ``n_train`` is only a cap, as in a task distribution that asks
    every data set for the same size: a set with fewer examples is used whole, without the
    warning a user's ``n_train`` gets."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"n_train \d+ is more than", category=MetalearnerWarning)
        return load_dataset(name, n_train=n_train, **kwargs)


def is_whole(x: Any) -> bool:
    """An integer (Python's or numpy's), not a bool: the type of sizes, counts and seeds."""
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def dataset_key(name: str) -> str:
    """Canonical data set name (``"Fashion-MNIST"`` -> ``"fashion_mnist"``); unknown names fail."""
    key = name.strip().lower().replace("-", "_")
    if key not in DATASETS:
        raise ConfigError(f"unknown data set {name!r}; valid names: {', '.join(DATASETS)}")
    return key


def load_dataset(
    name: str,
    *,
    data_dir: str | os.PathLike | None = None,
    seed: int = 0,
    val_fraction: float = 1 / 6,
    download: bool = True,
    n_train: int | None = None,
    **options: Any,
) -> Splits:
    """Load data set ``name`` as standardised tensors with a seeded validation split.

    The validation split is held out from the training set; the test set is the publisher's
    where one exists, else a seeded held-out ``test_fraction``. ``n_train`` keeps at most
    that many training examples (a seeded subset) for fast runs. Inputs are standardised
    with the full training split's statistics (per feature for tabular sets).
    """
    if not isinstance(name, str):
        raise ConfigError(f"the data set is named by a string, got {name!r}; valid names: {', '.join(DATASETS)}")
    key = dataset_key(name)
    val_fraction = _check_fraction("val_fraction", val_fraction)
    if n_train is not None and not (is_whole(n_train) and n_train >= 1):
        raise ConfigError(f"n_train must be a whole positive number of examples, got {n_train!r}")
    if not (is_whole(seed) and seed >= 0):
        raise ConfigError(f"seed must be a whole number >= 0, got {seed!r}")

    if key == "synthetic":
        from metalearner.tasks.synthetic import Shift, SyntheticSpec, make_synthetic

        opts = _options(key, options, _synthetic_options())
        spec_fields = {f.name for f in dataclasses.fields(SyntheticSpec)}
        shift_fields = {f.name for f in dataclasses.fields(Shift)}
        spec = SyntheticSpec(seed=seed, **{k: v for k, v in opts.items() if k in spec_fields})
        shift = Shift(**{k: v for k, v in opts.items() if k in shift_fields})
        sample_seed = seed if opts["sample_seed"] is None else opts["sample_seed"]
        test_fraction = _check_fraction("test_fraction", opts["test_fraction"])
        splits = make_synthetic(  # its fractions are of all samples; val_fraction here is of the non-test part
            spec, shift, sample_seed=sample_seed, val_fraction=val_fraction * (1 - test_fraction), test_fraction=test_fraction
        )
        keep = torch.from_numpy(_subset(splits.n_train, n_train, seed, key))
        return dataclasses.replace(splits, x_train=splits.x_train[keep], y_train=splits.y_train[keep])

    loader, accepted = _LOADERS[key]
    opts = _options(key, options, accepted)
    raw = loader(data_dir=data_dir, seed=seed, download=download, **opts)
    rng = np.random.default_rng(seed)
    if raw.x_test is None:
        rest, test = _holdout(np.arange(len(raw.y)), _check_fraction("test_fraction", opts["test_fraction"]), rng)
        x_test, y_test = raw.x[np.sort(test)], raw.y[np.sort(test)]
    else:
        rest, x_test, y_test = np.arange(len(raw.y)), raw.x_test, raw.y_test
    train, val = (np.sort(i) for i in _holdout(rest, val_fraction, rng))
    to_tensor = _standardiser(raw.x[train], raw.per_feature)
    train = train[_subset(len(train), n_train, seed, key)]
    return Splits(
        name=key,
        x_train=to_tensor(raw.x[train]),
        y_train=_labels(raw.y[train]),
        x_val=to_tensor(raw.x[val]),
        y_val=_labels(raw.y[val]),
        x_test=to_tensor(x_test),
        y_test=_labels(y_test),
        n_classes=raw.n_classes,
        input_shape=tuple(raw.x.shape[1:]),
    )
