"""The shared parallel layer: executors chosen from CLI options, and the directory lock."""

from __future__ import annotations

import math
import os

import pytest

from metalearner.errors import ConfigError
from metalearner.parallel import DirectoryLock, DirectoryLocked, InlineExecutor, LocalExecutor, make_executor


def test_local_executor_reports_errors_and_limits_threads():
    with LocalExecutor(workers=2, threads_per_worker=1) as ex:
        got = dict(ex.map_unordered(math.sqrt, [4.0, -1.0, 9.0]))
        assert got[4.0] == 2.0 and got[9.0] == 3.0 and isinstance(got[-1.0], ValueError)
        threads = [r for _, r in ex.map_unordered(os.getenv, ["OMP_NUM_THREADS"] * 2)]
        assert threads == ["1", "1"]


def test_inline_executor_yields_errors_in_order():
    got = list(InlineExecutor().map_unordered(math.sqrt, [1.0, -1.0]))
    assert got[0] == (1.0, 1.0) and isinstance(got[1][1], ValueError)


@pytest.mark.parametrize(
    "kind, workers, address, expected",
    [("local", 0, None, InlineExecutor), ("inline", None, None, InlineExecutor), ("local", 2, None, LocalExecutor)],
)
def test_make_executor_from_cli_options(kind, workers, address, expected):
    with make_executor(kind, workers, address=address) as ex:
        assert isinstance(ex, expected)


@pytest.mark.parametrize(
    "kind, workers, address, message",
    [("local", None, "auto", "--address needs --executor ray"), ("dask", None, None, "choose from local, ray"),
     ("local", -1, None, "--workers must be >= 0")],
)  # fmt: skip
def test_make_executor_rejects_bad_options_in_one_line(kind, workers, address, message):
    with pytest.raises(ConfigError, match=message):
        make_executor(kind, workers, address=address)


def test_directory_lock_is_exclusive_and_names_its_holder(tmp_path):
    with DirectoryLock(tmp_path):
        with pytest.raises(DirectoryLocked, match=f"pid {os.getpid()}"):
            DirectoryLock(tmp_path).acquire()
    with DirectoryLock(tmp_path):  # released: fine
        pass


@pytest.mark.parametrize("prefix", ["", "ray://"])
def test_an_unreachable_ray_address_fails_in_one_line_within_seconds(prefix):
    import socket

    from metalearner.parallel.executor import RayExecutor

    pytest.importorskip("ray")
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ConfigError, match=f"cannot reach the Ray cluster at {prefix}127.0.0.1:{port}"):
        RayExecutor(address=f"{prefix}127.0.0.1:{port}")._ensure()  # before ray.init, which retries it for minutes


def test_a_workers_warning_is_one_line_like_the_commands(capfd):
    import functools
    import warnings

    from metalearner.errors import MetalearnerWarning

    with LocalExecutor(workers=1) as ex:
        list(ex.map_unordered(functools.partial(warnings.warn, category=MetalearnerWarning), ["n_train is too big"]))
    err = capfd.readouterr().err
    assert "warning: n_train is too big\n" in err and "MetalearnerWarning" not in err, err
