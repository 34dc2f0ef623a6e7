"""Data loading: IDX parsing, checksums, downloads (faked, never the network), splits."""

from __future__ import annotations

import gzip
import io
import random
import struct
import urllib.error
import urllib.request
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from metalearner.errors import ConfigError, DataError, MetalearnerWarning
from metalearner.tasks import DATASETS, load_dataset, read_idx, resolve_data_dir
from metalearner.tasks.data import _IMAGE_FILES, load_dataset_capped

IDX_CODES = {np.dtype("u1"): 0x08, np.dtype("i1"): 0x09, np.dtype(">i2"): 0x0B, np.dtype(">i4"): 0x0C,
             np.dtype(">f4"): 0x0D, np.dtype(">f8"): 0x0E}


def idx_bytes(array: np.ndarray) -> bytes:
    """An IDX file's bytes, built by hand (big-endian, as the format requires)."""
    array = array.astype(array.dtype.newbyteorder(">")) if array.dtype.itemsize > 1 else array
    header = struct.pack(">BBBB", 0, 0, IDX_CODES[array.dtype], array.ndim)
    return header + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def no_network(*args, **kwargs):
    raise urllib.error.URLError("network disabled in tests")


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    """No test may reach the network; tests that exercise downloads install a fake opener."""
    monkeypatch.setattr(urllib.request, "urlopen", no_network)


# ------------------------------------------------------------------------ IDX parsing


@pytest.mark.parametrize("folder", ["mnist", "fashion-mnist"])
def test_read_idx_real_files(shared_data, folder):
    images = read_idx(shared_data / folder / "train-images-idx3-ubyte.gz")
    labels = read_idx(shared_data / folder / "train-labels-idx1-ubyte.gz")
    test_labels = read_idx(shared_data / folder / "t10k-labels-idx1-ubyte.gz")
    assert images.shape == (60000, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (60000,) and test_labels.shape == (10000,)
    assert set(np.unique(labels)) == set(range(10))
    assert images.max() == 255 and images.min() == 0


@pytest.mark.parametrize(
    "array",
    [
        np.arange(24, dtype=np.uint8).reshape(2, 3, 4),
        np.array([-3, 0, 7], dtype=np.int8),
        np.array([[-70000, 5], [1, 2**30]], dtype=np.int32),
        np.array([1.5, -2.25], dtype=np.float32),
        np.array([np.pi], dtype=np.float64),
    ],
)
@pytest.mark.parametrize("compress", [False, True])
def test_read_idx_valid(tmp_path, array, compress):
    data = idx_bytes(array)
    path = tmp_path / ("x.gz" if compress else "x")
    path.write_bytes(gzip.compress(data) if compress else data)
    out = read_idx(path)
    assert out.shape == array.shape
    np.testing.assert_array_equal(out, array)
    assert out.dtype.isnative


VALID = idx_bytes(np.zeros((3, 2, 2), dtype=np.uint8))


@pytest.mark.parametrize(
    "content, match",
    [
        (b"\x00\x01\x08\x03" + VALID[4:], "bad magic"),
        (b"\x00\x00\x42\x03" + VALID[4:], "bad magic"),
        (b"", "bad magic"),
        (VALID[:10], "header"),
        (VALID[:-1], "truncated"),
        (VALID + b"\x00", "truncated"),
        (gzip.compress(VALID)[:-12], "gzip"),
        (b"\x1f\x8b garbage", "gzip"),
    ],
    ids=["magic-zero-bytes", "magic-dtype", "empty", "short-header", "short-payload", "long-payload",
         "truncated-gzip", "corrupt-gzip"],
)
def test_read_idx_malformed(tmp_path, content, match):
    path = tmp_path / "bad-idx.gz"
    path.write_bytes(content)
    with pytest.raises(DataError, match=match) as info:
        read_idx(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_read_idx_missing_file(tmp_path):
    with pytest.raises(DataError, match="cannot read"):
        read_idx(tmp_path / "nope")


# ------------------------------------------------------------- checksums and downloads


@pytest.mark.parametrize("name", ["train-images-idx3-ubyte.gz", "train-images-idx3-ubyte"])
def test_checksum_mismatch(tmp_path, name):
    """A well-formed IDX file with the wrong content is caught (gz, or raw when no .gz)."""
    content = idx_bytes(np.zeros((2, 28, 28), dtype=np.uint8))
    path = tmp_path / "mnist" / name
    path.parent.mkdir()
    path.write_bytes(gzip.compress(content) if name.endswith(".gz") else content)
    with pytest.raises(DataError, match="md5") as info:
        load_dataset("mnist", data_dir=tmp_path, download=False)
    message = str(info.value)
    assert str(path) in message and "6bbc9ace898e44ae57da46a324031adb" in message and "delete" in message


def test_missing_file_without_download(tmp_path, monkeypatch):
    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: pytest.fail("must not download"))
    with pytest.raises(DataError, match="downloading is disabled") as info:
        load_dataset("fashion_mnist", data_dir=tmp_path, download=False)
    assert "fashion-mnist/train-images-idx3-ubyte.gz" in str(info.value) and str(tmp_path) in str(info.value)


def test_offline_missing_file(tmp_path, monkeypatch):
    tried = []

    def offline(url, timeout=None):
        tried.append(url)
        raise urllib.error.URLError("no route to host")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(DataError) as info:
        load_dataset("mnist", data_dir=tmp_path)
    message = str(info.value)
    assert "\n" not in message
    for part in ("train-images-idx3-ubyte.gz", str(tmp_path / "mnist"), "check that the data directory"):
        assert part in message
    assert "--data-dir" not in message  # the user already gave it
    assert [u.split("/")[2] for u in tried] == ["ossci-datasets.s3.amazonaws.com", "yann.lecun.com"]
    assert list((tmp_path / "mnist").iterdir()) == []


def serve(files: dict[str, bytes], tried: list[str], fail_hosts: tuple[str, ...] = ()):
    """A fake urlopen serving ``files`` by base name; hosts in ``fail_hosts`` are down."""

    def urlopen(url, timeout=None):
        assert timeout is not None, "downloads need a timeout"
        tried.append(url)
        if any(host in url for host in fail_hosts):
            raise urllib.error.URLError("mirror down")
        return io.BytesIO(files[url.rsplit("/", 1)[1]])

    return urlopen


@pytest.mark.parametrize("name, folder", [("mnist", "mnist"), ("fashion_mnist", "fashion-mnist")])
def test_download_into_empty_dir(shared_data, tmp_path, monkeypatch, name, folder):
    files = {f"{stem}.gz": (shared_data / folder / f"{stem}.gz").read_bytes() for stem in _IMAGE_FILES}
    tried: list[str] = []
    monkeypatch.setattr(urllib.request, "urlopen", serve(files, tried, fail_hosts=("ossci-datasets",)))
    (tmp_path / "new").mkdir()
    splits = load_dataset(name, data_dir=tmp_path / "new", n_train=100)
    assert splits.x_test.shape == (10000, 1, 28, 28)
    assert sorted(p.name for p in (tmp_path / "new" / folder).iterdir()) == sorted(files)
    for file_name, content in files.items():
        assert (tmp_path / "new" / folder / file_name).read_bytes() == content
    assert len(tried) == (8 if name == "mnist" else 4)  # MNIST falls back to its second mirror
    reference = load_dataset(name, data_dir=shared_data, n_train=100)
    assert torch.equal(splits.x_test, reference.x_test)


@pytest.mark.parametrize(
    "served, match",
    [
        (gzip.compress(idx_bytes(np.zeros((5, 28, 28), dtype=np.uint8))), "md5"),
        (b"<html>Not Found</html>", "md5"),
        (gzip.compress(b"x" * 1000)[:-10], "gzip"),
    ],
    ids=["wrong-content", "html-page", "truncated-gzip"],
)
def test_bad_download_leaves_nothing(tmp_path, monkeypatch, served, match):
    files = {f"{stem}.gz": served for stem in _IMAGE_FILES}
    monkeypatch.setattr(urllib.request, "urlopen", serve(files, []))
    with pytest.raises(DataError, match=match) as info:
        load_dataset("mnist", data_dir=tmp_path)
    assert "could not be downloaded" in str(info.value) and "\n" not in str(info.value)
    assert list((tmp_path / "mnist").iterdir()) == []


class DroppedConnection(io.BytesIO):
    """A response that breaks off after its first chunk."""

    def read(self, size=-1):
        if self.tell():
            raise ConnectionResetError("connection reset by peer")
        return super().read(1024)


def test_interrupted_download_leaves_no_partial_file(shared_data, tmp_path, monkeypatch):
    content = (shared_data / "mnist" / "train-images-idx3-ubyte.gz").read_bytes()
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout=None: DroppedConnection(content))
    with pytest.raises(DataError, match="connection reset"):
        load_dataset("mnist", data_dir=tmp_path)
    assert list((tmp_path / "mnist").iterdir()) == []


# ------------------------------------------------------------------ data directory


@pytest.mark.parametrize("from_env", [False, True], ids=["argument", "env"])
def test_a_named_data_dir_that_does_not_exist_is_an_error_and_stays_absent(tmp_path, monkeypatch, from_env):
    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: pytest.fail("must not download"))
    missing = tmp_path / "nonexistent" / "data"
    if from_env:
        monkeypatch.setenv("METALEARNER_DATA", str(missing))
    with pytest.raises(DataError) as info:
        load_dataset("mnist", data_dir=None if from_env else missing)
    source = " (from $METALEARNER_DATA)" if from_env else ""
    assert str(info.value) == f"data directory {missing}{source} does not exist"
    assert not (tmp_path / "nonexistent").exists()


@pytest.mark.parametrize(
    "origin, hint",
    [
        ("env", "$METALEARNER_DATA is {root}: set it (or pass --data-dir) to a folder that has mnist/"),
        ("cache", "pass --data-dir or set METALEARNER_DATA to a folder that has mnist/"),
    ],
)
def test_missing_file_hint_depends_on_where_the_data_dir_came_from(tmp_path, monkeypatch, origin, hint):
    monkeypatch.delenv("METALEARNER_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    root = tmp_path / "xdg" / "metalearner" / "data"
    if origin == "env":
        root = tmp_path / "env"
        root.mkdir()
        monkeypatch.setenv("METALEARNER_DATA", str(root))
    with pytest.raises(DataError) as info:
        load_dataset("mnist", download=False)
    assert hint.format(root=root) in str(info.value)


def test_only_the_default_cache_is_created(shared_data, tmp_path, monkeypatch):
    monkeypatch.delenv("METALEARNER_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    files = {f"{stem}.gz": (shared_data / "mnist" / f"{stem}.gz").read_bytes() for stem in _IMAGE_FILES}
    monkeypatch.setattr(urllib.request, "urlopen", serve(files, []))
    assert load_dataset("mnist", n_train=10).n_train == 10
    assert sorted(p.name for p in (tmp_path / "xdg" / "metalearner" / "data" / "mnist").iterdir()) == sorted(files)


def test_resolve_data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("METALEARNER_DATA", str(tmp_path / "env"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert resolve_data_dir(tmp_path / "explicit") == tmp_path / "explicit"
    assert resolve_data_dir() == tmp_path / "env"
    monkeypatch.delenv("METALEARNER_DATA")
    assert resolve_data_dir() == tmp_path / "xdg" / "metalearner" / "data"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert resolve_data_dir() == tmp_path / "home" / ".cache" / "metalearner" / "data"


def test_load_finds_data_through_env_var(shared_data, monkeypatch):
    monkeypatch.setenv("METALEARNER_DATA", str(shared_data))
    splits = load_dataset("mnist", download=False, n_train=64)
    assert (splits.n_train, splits.n_val, splits.n_test) == (64, 10000, 10000)


# ------------------------------------------------------------------- splits and sets


def test_mnist_splits(shared_data):
    s = load_dataset("mnist", data_dir=shared_data)
    assert (s.n_train, s.n_val, s.n_test) == (50000, 10000, 10000)
    assert s.x_train.shape[1:] == s.input_shape == (1, 28, 28) and s.n_classes == 10
    assert s.x_train.dtype == torch.float32 and s.y_train.dtype == torch.int64
    assert abs(float(s.x_train.mean())) < 1e-3 and abs(float(s.x_train.std()) - 1) < 1e-3
    assert int(s.y_train.min()) == 0 and int(s.y_train.max()) == 9
    same = load_dataset("mnist", data_dir=shared_data)
    other = load_dataset("mnist", data_dir=shared_data, seed=1)
    assert torch.equal(s.y_val, same.y_val) and torch.equal(s.x_val, same.x_val)
    assert not torch.equal(s.y_val, other.y_val)
    assert torch.equal(s.y_test, other.y_test)  # the publisher's test set never moves


def rows(x: torch.Tensor) -> set[bytes]:
    return {r.numpy().tobytes() for r in x}


@pytest.mark.parametrize("name, options", [("moons", {}), ("mnist1d", {"num_samples": 600}), ("synthetic", {})])
def test_split_seeded_and_disjoint(name, options):
    a = load_dataset(name, seed=3, **options)
    b = load_dataset(name, seed=3, **options)
    c = load_dataset(name, seed=4, **options)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.x_val, b.x_val)
    assert not torch.equal(a.x_val, c.x_val)
    train, val, test = rows(a.x_train), rows(a.x_val), rows(a.x_test)
    assert len(train) == a.n_train and len(val) == a.n_val
    assert not train & val and not train & test and not val & test


@pytest.mark.parametrize("name", ["moons", "digits", "synthetic"])
def test_n_train_is_seeded_subset(name):
    full = load_dataset(name, seed=2)
    small = load_dataset(name, seed=2, n_train=50)
    assert small.n_train == 50 and rows(small.x_train) <= rows(full.x_train)
    assert torch.equal(small.x_val, full.x_val) and torch.equal(small.x_test, full.x_test)
    assert torch.equal(small.x_train, load_dataset(name, seed=2, n_train=50).x_train)
    with pytest.warns(MetalearnerWarning, match=f"n_train 1000000000 is more than the {full.n_train} training examples of {name}"):
        assert load_dataset(name, seed=2, n_train=10**9).n_train == full.n_train
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a task distribution's cap: the same set, no warning
        assert torch.equal(load_dataset_capped(name, seed=2, n_train=10**9).x_train, full.x_train)


@pytest.mark.parametrize(
    "name, options, input_shape, n_classes, total",
    [
        ("mnist1d", {"num_samples": 1000}, (40,), 10, 1000),
        ("moons", {}, (2,), 2, 2000),
        ("moons", {"n_samples": 300, "noise": 0.05}, (2,), 2, 300),
        ("digits", {}, (64,), 10, 1797),
        ("synthetic", {"n_features": 7, "n_classes": 3, "n_samples": 500}, (7,), 3, 500),
    ],
)
def test_small_sets(name, options, input_shape, n_classes, total):
    s = load_dataset(name, **options)
    for x, y in ((s.x_train, s.y_train), (s.x_val, s.y_val), (s.x_test, s.y_test)):
        assert x.shape == (len(y), *input_shape) and x.dtype == torch.float32 and y.dtype == torch.int64
        assert int(y.min()) >= 0 and int(y.max()) < n_classes
    assert s.input_shape == input_shape and s.n_classes == n_classes
    assert s.n_train + s.n_val + s.n_test == total
    assert abs(s.n_val - (s.n_train + s.n_val) / 6) <= 1
    if name in ("moons", "digits"):  # tabular: standardised per feature
        assert torch.allclose(s.x_train.mean(0), torch.zeros(input_shape), atol=1e-4)
    elif name == "mnist1d":
        assert abs(float(s.x_train.mean())) < 1e-4 and abs(float(s.x_train.std()) - 1) < 1e-3


def test_mnist1d_leaves_global_rng_alone():
    np.random.seed(123)
    random.seed(123)
    expected = np.random.random(), random.random()
    np.random.seed(123)
    random.seed(123)
    load_dataset("mnist1d", num_samples=200)
    assert (np.random.random(), random.random()) == expected


def test_synthetic_options_pass_through():
    s = load_dataset("synthetic", n_features=5, mean=1.5, imbalance=0.5, test_fraction=0.1)
    assert s.input_shape == (5,) and s.name == "synthetic[mean=1.5,imbalance=0.5]"
    assert s.n_test == 400


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: load_dataset("cifar"), "valid names: " + ", ".join(DATASETS)),
        (lambda: load_dataset("moons", n_sampels=10), "n_sampels.*valid options: n_samples, noise"),
        (lambda: load_dataset("mnist", colour=True), "valid options: none"),
        (lambda: load_dataset("moons", val_fraction=1.0), "val_fraction"),
        (lambda: load_dataset("digits", test_fraction=-0.1), "test_fraction"),
        (lambda: load_dataset("digits", n_train=0), "n_train"),
        (lambda: load_dataset("synthetic", noise=-1), "noise"),
    ],
    ids=["name", "moons-option", "mnist-option", "val", "test", "n_train", "synthetic-noise"],
)
def test_config_errors(call, match):
    with pytest.raises(ConfigError, match=match):
        call()


def test_name_is_normalised():
    assert load_dataset("Digits").name == "digits"
    assert "fashion_mnist" in DATASETS
