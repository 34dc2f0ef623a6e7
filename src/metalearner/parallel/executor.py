"""Executors: run one function over many items in parallel, locally or on Ray.

The interface is deliberately tiny and knows nothing about zoos, so meta-training
populations and benchmark cells reuse it::

    with make_executor("local", workers=2) as ex:
        for item, result in ex.map_unordered(fn, items):
            if isinstance(result, BaseException): ...

``fn`` must be a picklable, module-level function. ``map_unordered`` yields each item with
its result (or the exception it raised) as soon as it finishes, in completion order; an
exception in one item never stops the others.

Threads: each worker runs ``torch.set_num_threads(threads_per_worker)``, by default
``max(1, cores // workers)``, so N workers do not oversubscribe the cores.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import socket
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from typing import Any, Callable, Iterable, Iterator, Protocol, TypeVar

from metalearner.errors import ConfigError, one_line_warnings

T = TypeVar("T")
R = TypeVar("R")


class Executor(Protocol):
    """Runs ``fn`` over items; yields ``(item, result or exception)`` as each finishes."""

    workers: int

    def map_unordered(self, fn: Callable[[T], R], items: Iterable[T]) -> Iterator[tuple[T, R | BaseException]]: ...

    def close(self) -> None: ...


def cpu_count() -> int:
    """Cores this process may use (the affinity mask, not the machine's total)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def set_threads(threads: int) -> None:
    """Limit torch (and BLAS/OpenMP libraries loaded later) to ``threads`` threads."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(threads)
    import torch

    torch.set_num_threads(threads)


def _die_with_parent() -> None:
    """Linux: ask the kernel to SIGKILL this worker when its parent dies (even by SIGKILL),
    so no orphan keeps writing into a sweep directory that a new sweep has taken over."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:  # not Linux: workers end when they see the broken pipe
        pass


def _init_worker(threads: int) -> None:
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and stops us
    set_threads(threads)
    one_line_warnings()


class _Base:
    workers: int = 1

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class InlineExecutor(_Base):
    """Runs items one after another in this process (debugging, tests, ``--workers 0``)."""

    def __init__(self) -> None:
        self.workers = 1

    def map_unordered(self, fn: Callable[[T], R], items: Iterable[T]) -> Iterator[tuple[T, R | BaseException]]:
        for item in items:
            try:
                yield item, fn(item)
            except Exception as e:
                yield item, e


class LocalExecutor(_Base):
    """A pool of ``workers`` spawned processes on this machine (default: one per core)."""

    def __init__(self, workers: int | None = None, threads_per_worker: int | None = None) -> None:
        cores = cpu_count()
        self.workers = int(workers or cores)
        if self.workers < 1:
            raise ConfigError(f"workers must be >= 1, got {workers}")
        self.threads_per_worker = int(threads_per_worker or max(1, cores // self.workers))
        self._pool: ProcessPoolExecutor | None = None

    def _get_pool(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(
                max_workers=self.workers,
                mp_context=mp.get_context("spawn"),
                initializer=_init_worker,
                initargs=(self.threads_per_worker,),
            )
        return self._pool

    def map_unordered(self, fn: Callable[[T], R], items: Iterable[T]) -> Iterator[tuple[T, R | BaseException]]:
        pool = self._get_pool()
        futures = {pool.submit(fn, item): item for item in items}
        try:
            pending = set(futures)
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    exc = fut.exception()
                    yield futures[fut], (exc if exc is not None else fut.result())
        except BaseException:
            self.close(kill=True)
            raise

    def pids(self) -> list[int]:
        """The worker processes' ids (none before the first ``map_unordered``)."""
        return [p.pid for p in getattr(self._pool, "_processes", {}).values()] if self._pool else []

    def close(self, kill: bool = False) -> None:
        pool, self._pool = self._pool, None
        if pool is None:
            return
        if kill:  # an interrupted sweep: stop the workers now, the runs stay partial
            for p in list(getattr(pool, "_processes", {}).values()):
                p.terminate()
        pool.shutdown(wait=True, cancel_futures=True)


def _ray_call(fn: Callable[[Any], Any], item: Any, threads: int) -> Any:
    set_threads(threads)
    one_line_warnings()
    return fn(item)


CONNECT_TIMEOUT_S = 5.0  # a cluster address that takes longer to accept a connection is called unreachable


def check_reachable(address: str | None) -> None:
    """A one-line error, within seconds, for a ``host:port`` (or ``ray://host:port``) that
    accepts no connection: ``ray.init`` would retry it for minutes. ``auto``, ``local`` and
    other forms are left to Ray."""
    if not address:
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not (host and port.isdigit()):
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as e:
        raise ConfigError(f"cannot reach the Ray cluster at {address}: {e}") from None


class RayExecutor(_Base):
    """Tasks on a Ray cluster: an existing ``ray.init``, the cluster at ``address``
    (e.g. ``"auto"`` or ``"ray://host:10001"``), or a new local instance.

    Each task reserves ``threads_per_worker`` CPUs (default 1) and uses that many threads.
    """

    def __init__(self, address: str | None = None, threads_per_worker: int = 1, num_cpus: int | None = None) -> None:
        try:
            import ray  # noqa: F401
        except ImportError:
            raise ConfigError("the Ray executor needs ray: pip install 'metalearner[ray]'") from None
        self.address = address
        self.threads_per_worker = max(1, int(threads_per_worker))
        self.num_cpus = num_cpus
        self._started = False
        self.workers = 0

    def _ensure(self) -> Any:
        import ray

        if not ray.is_initialized():
            kw: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
            if self.address:
                kw["address"] = self.address
            elif self.num_cpus:
                kw["num_cpus"] = self.num_cpus
            check_reachable(self.address)
            try:
                ray.init(**kw)
            except ConnectionError as e:
                raise ConfigError(f"cannot reach the Ray cluster at {self.address}: {e}") from None
            self._started = True
        self.workers = max(1, int(ray.cluster_resources().get("CPU", 1)) // self.threads_per_worker)
        return ray

    def map_unordered(self, fn: Callable[[T], R], items: Iterable[T]) -> Iterator[tuple[T, R | BaseException]]:
        ray = self._ensure()
        remote = ray.remote(num_cpus=self.threads_per_worker, max_retries=0)(_ray_call)
        refs = {remote.remote(fn, item, self.threads_per_worker): item for item in items}
        pending = list(refs)
        try:
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                for ref in done:
                    try:
                        yield refs[ref], ray.get(ref)
                    except ray.exceptions.RayTaskError as e:
                        cause = getattr(e, "cause", None)
                        yield refs[ref], cause if isinstance(cause, BaseException) else e
                    except Exception as e:  # worker died, object lost
                        yield refs[ref], e
        except BaseException:
            for ref in pending:
                ray.cancel(ref, force=True)
            raise

    def close(self) -> None:
        if self._started:
            import ray

            ray.shutdown()
            self._started = False


def make_executor(kind: str = "local", workers: int | None = None, *, address: str | None = None) -> Executor:
    """The executor the command-line options ask for: ``local`` (a process pool of ``workers``
    processes, default one per core; ``workers=0`` runs inline in this process), ``inline``,
    or ``ray`` (the cluster at ``address``, else a local Ray instance). Every CLI command
    that runs work in parallel calls this, so the options mean the same everywhere, and a
    missing Ray installation fails here, before any work starts."""
    if kind == "ray":
        return RayExecutor(address=address)
    if address:
        raise ConfigError("--address needs --executor ray")
    if workers is not None and workers < 0:
        raise ConfigError(f"--workers must be >= 0, got {workers}")
    if kind == "local":
        return InlineExecutor() if workers == 0 else LocalExecutor(workers)
    if kind == "inline":
        return InlineExecutor()
    raise ConfigError(f"unknown executor {kind!r}; choose from local, ray")
