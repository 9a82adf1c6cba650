"""One runner for every per-movie stage, and the executors behind it.

A stage (``simulate``, ``beamform``, ``sparsify``, ``infer``, ``track``) declares
what it reads and writes and how to process one unit of movies; :func:`run_stage`
does the rest, identically for all of them:

1. refuse the output early (exists without ``force``, inside an input, ...);
2. one provenance entry (the stage's resolved parameters, its inputs' ids),
   appended to the inputs' lineage;
3. the atomic write: the store is built under a hidden temporary name beside
   the output and renamed into place only when every movie succeeded
   (:func:`ulmtools.store.create_store`), so it appears whole or not at all;
4. the movies, through an executor: each task processes a unit of movies (one
   movie, or one inference batch), writes its movies' dense arrays straight into
   the temporary store (disjoint regions, aligned on the movie chunks) and returns
   its small or ragged results; the runner hands those to the stage in movie
   order, so ragged tables (sites, localizations, truth rows) and accumulations
   are written exactly as a serial run writes them;
5. the truth copied through, the stage's summary stored and returned;
6. progress reported through a callback, once per unit.

Executors (:func:`make_executor`): serial (in-process), local threads or worker
processes (``--workers N``, with each stage's meaning of it), and Dask
(``--dask-scheduler ADDRESS`` or ``--workers N --dask`` for a
``distributed.LocalCluster``). Every executor gives the same bytes; only the
times in the summary and the ``executor`` field of the provenance entry differ.
Dask workers must see the input and output paths (a shared file system).
"""

from __future__ import annotations

import abc
import contextlib
import ctypes
import multiprocessing
import os
import signal
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import zarr

from ulmtools.errors import BackendError, UsageError
from ulmtools.grid import Grid
from ulmtools.progress import ProgressCallback, no_progress
from ulmtools.store import Store, check_output, create_store, lineage, provenance_entry

__all__ = [
    "DaskExecutor",
    "Executor",
    "MovieStage",
    "ProcessExecutor",
    "SerialExecutor",
    "ThreadExecutor",
    "die_with_parent",
    "fill",
    "make_executor",
    "run_stage",
]

INSTALL_DASK = "pip install 'ulm-toolchain[cluster]' (or: pip install 'dask[distributed]')"


# ---------------------------------------------------------------------------
# What a stage declares
# ---------------------------------------------------------------------------


class MovieStage(abc.ABC):
    """A per-movie stage, as the runner sees it.

    Set by the subclass before :func:`run_stage`: ``name`` (provenance and progress),
    ``kind`` (the output kind), ``inputs`` (opened stores, for the lineage),
    ``input_paths`` (every path the output must not overwrite), ``parameters``
    (resolved, recorded in provenance), ``grid``, ``axes``, ``attrs`` (root
    attributes), ``units`` (the movies of each task, in order) and ``truth``
    (the store whose truth is copied through, or None).

    Methods, all called in the driving process except the task's ``__call__``:
    :meth:`create` makes the arrays in the temporary store; :meth:`task` returns
    a picklable callable ``task(unit) -> [result per movie]`` that opens the
    temporary store by path; :meth:`collect` receives each movie's result in
    movie order; :meth:`finish` closes writers and returns the summary.
    """

    name: str = ""
    kind: str = ""
    inputs: Sequence[Store] = ()
    #: the stores the provenance entry names, when not ``inputs`` (whose lineage is kept)
    sources: Sequence[Store] | None = None
    input_paths: Sequence[str | os.PathLike[str]] = ()
    parameters: dict[str, Any]
    grid: Grid | None = None
    axes: Sequence[str] | None = None
    attrs: dict[str, Any]
    units: list[list[int]]
    truth: Store | None = None
    #: the image grid the truth's track maps must match (redrawn when not), or None
    truth_grid: Grid | None = None

    def create(self, root: zarr.Group) -> None:  # noqa: B027 (optional hook)
        """Create the output arrays (before any task runs)."""

    @abc.abstractmethod
    def task(self, root_path: str | None) -> Callable[[Sequence[int]], list[Any]]:
        """The picklable callable that processes one unit into the store at ``root_path``
        (None: a store in memory, for the serial executor only)."""

    def collect(self, movie: int, result: Any) -> str:
        """Take one movie's result (movie order); return a short progress message."""
        return ""

    def finish(self, root: zarr.Group) -> dict[str, Any]:
        """Write what needs every movie (ragged offsets, accumulations); the summary."""
        return {}

    def result(self, summary: dict[str, Any], root: zarr.Group) -> dict[str, Any]:
        """The summary the CLI prints (made before the rename), from ``summary``."""
        return summary


def root_path(root: zarr.Group) -> str | None:
    """The absolute directory of an open local store (what tasks reopen), or None."""
    base = getattr(root.store, "root", None)
    if base is None:
        return None
    path = Path(str(base)).resolve()
    return str(path / root.path) if root.path else str(path)


def run_stage(
    stage: MovieStage,
    output: str | os.PathLike[str],
    *,
    force: bool = False,
    executor: Executor | None = None,
    progress: ProgressCallback | None = None,
    summarize: Callable[[dict[str, Any]], Any] | None = None,
) -> Any:
    """Run ``stage`` into the new store ``output``; return the stage's summary.

    The output is refused before any work when it exists (unless ``force``) or
    would overwrite an input; it is renamed into place only when every task
    succeeded, and a failing or interrupted task leaves no output behind.
    ``summarize`` turns the summary into what is returned (the CLI's result and
    text); it runs before the rename, so a failure there leaves no output either.
    """
    report = progress or no_progress
    executor = executor or SerialExecutor()
    out = check_output(output, force=force, inputs=stage.input_paths)
    sources = stage.inputs if stage.sources is None else stage.sources
    entry = provenance_entry(stage.name, stage.parameters, sources)
    entry["executor"] = executor.describe()
    start = time.perf_counter()
    with create_store(
        out,
        stage.kind,
        provenance=lineage(stage.inputs, entry),
        grid=stage.grid,
        axes=stage.axes,
        attrs=stage.attrs,
        force=force,
        inputs=stage.input_paths,
    ) as root:
        summary = fill(stage, root, executor=executor, progress=report)
        if stage.truth is not None:
            from ulmtools.truth import copy_truth

            summary["truth"] = copy_truth(stage.truth, root, grid=stage.truth_grid)
        summary["_seconds"] = time.perf_counter() - start
        # made before the rename: a failure here leaves no finished output behind an error
        result = stage.result(summary, root)
        if summarize is not None:
            result = summarize(result)
    return result


def fill(
    stage: MovieStage,
    root: zarr.Group,
    *,
    executor: Executor | None = None,
    progress: ProgressCallback | None = None,
) -> dict[str, Any]:
    """Process every movie of ``stage`` into the open, writable group ``root``.

    The middle of :func:`run_stage` (no output check, provenance or rename), for code
    that writes into a group it made itself; returns :meth:`MovieStage.finish`'s summary.
    """
    report = progress or no_progress
    executor = executor or SerialExecutor()
    n_movies = sum(len(u) for u in stage.units)
    stage.create(root)
    path = root_path(root)
    if path is None and not isinstance(executor, SerialExecutor):
        raise UsageError("parallel executors need an output store on a file system")
    task = stage.task(path)
    report(0, n_movies, "")
    done = 0
    with executor.session():
        for unit, results in zip(stage.units, executor.map(task, stage.units), strict=True):
            message = ""
            for m, res in zip(unit, results, strict=True):
                message = stage.collect(m, res)
                done += 1
            report(done, n_movies, message)
    return stage.finish(root)


# ---------------------------------------------------------------------------
# Executors
# ---------------------------------------------------------------------------


class Executor(abc.ABC):
    """Runs a picklable ``task(unit)`` over units and yields the results in order."""

    workers: int = 1

    def describe(self) -> dict[str, Any]:
        return {"name": "serial", "workers": 1}

    @contextlib.contextmanager
    def session(self) -> Iterator[None]:
        yield

    @abc.abstractmethod
    def map(self, task: Callable[[Any], Any], units: Iterable[Any]) -> Iterator[Any]:
        """Yield ``task(unit)`` for every unit, in the order of ``units``."""


class SerialExecutor(Executor):
    """In this process, one unit after another."""

    def map(self, task: Callable[[Any], Any], units: Iterable[Any]) -> Iterator[Any]:
        for unit in units:
            yield task(unit)


def _ordered(
    submit: Callable[[Any], Any], result: Callable[[Any], Any], units: Iterable[Any], window: int
) -> Iterator[Any]:
    """Submit at most ``window`` units ahead of the one yielded next; yield in order."""
    pending: deque[Any] = deque()
    it = iter(units)
    for unit in it:
        pending.append(submit(unit))
        if len(pending) >= window:
            break
    while pending:
        value = result(pending.popleft())
        for unit in it:
            pending.append(submit(unit))
            break
        yield value


class ThreadExecutor(Executor):
    """``workers`` threads in this process (for code that releases the GIL)."""

    def __init__(self, workers: int) -> None:
        self.workers = max(1, int(workers))

    def describe(self) -> dict[str, Any]:
        return {"name": "threads", "workers": self.workers}

    def map(self, task: Callable[[Any], Any], units: Iterable[Any]) -> Iterator[Any]:
        pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="ulm-movie")
        try:
            yield from _ordered(
                lambda u: pool.submit(task, u), Future.result, units, 2 * self.workers
            )
        finally:
            # an error or an interruption: no task starts after this, running ones end
            pool.shutdown(wait=True, cancel_futures=True)


_WORKER_TASK: Callable[[Any], Any] | None = None


def _init_process(task: Callable[[Any], Any], parent: int | None) -> None:
    global _WORKER_TASK
    if parent is not None:
        die_with_parent(parent)
    with contextlib.suppress(Exception):
        import numba

        numba.set_num_threads(1)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)
    _WORKER_TASK = task


def _process_call(unit: Any) -> Any:
    assert _WORKER_TASK is not None
    return _WORKER_TASK(unit)


class ProcessExecutor(Executor):
    """``workers`` processes on this machine (forkserver), each running one unit at a time.

    The task is sent to each worker once; a worker ends when the ``ulm`` process is
    gone (even after ``kill -9``), and an error or an interruption stops every
    worker before the temporary store is removed.
    """

    def __init__(self, workers: int) -> None:
        self.workers = max(1, int(workers))

    def describe(self) -> dict[str, Any]:
        return {"name": "processes", "workers": self.workers}

    def map(self, task: Callable[[Any], Any], units: Iterable[Any]) -> Iterator[Any]:
        ctx = multiprocessing.get_context("forkserver")
        pool = ProcessPoolExecutor(
            max_workers=self.workers,
            mp_context=ctx,
            initializer=_init_process,
            initargs=(task, os.getpid()),
        )
        try:
            yield from _ordered(
                lambda u: pool.submit(_process_call, u), Future.result, units, 2 * self.workers
            )
        except BrokenProcessPool:
            stop_workers(pool)
            raise BackendError(
                "a worker process died (killed, or out of memory) while running movies",
                "rerun with fewer --workers, or see the system log",
            ) from None
        except BaseException:
            stop_workers(pool)
            raise
        pool.shutdown(wait=True)


def stop_workers(pool: ProcessPoolExecutor) -> None:
    """Stop the workers now (on an error or an interruption): no write after this returns."""
    procs = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for proc in procs:
        if proc.is_alive():
            proc.terminate()
    for proc in procs:
        proc.join(timeout=5)
        if proc.is_alive():
            proc.kill()
            proc.join(timeout=5)
    pool.shutdown(wait=True)  # the manager thread notices the dead workers and closes queues


PR_SET_PDEATHSIG = 1


def die_with_parent(parent: int, interval: float = 0.5) -> None:
    """End this worker process when ``parent`` (the ulm process) is gone.

    A worker's own parent is multiprocessing's forkserver, not ulm: on Linux the
    kernel kills the worker when that process dies (PR_SET_PDEATHSIG), and a
    daemon thread checks every ``interval`` seconds that ``parent`` still runs, so
    a ``kill -9`` of ulm does not leave workers writing for minutes.
    """
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            pass

    def watch() -> None:
        while True:
            time.sleep(interval)
            try:
                os.kill(parent, 0)
            except ProcessLookupError:
                os._exit(1)
            except PermissionError:
                pass

    threading.Thread(target=watch, name="ulm-parent-watch", daemon=True).start()


def _dask_call(task: Callable[[Any], Any], unit: Any) -> Any:
    return task(unit)


def _import_distributed() -> Any:
    try:
        # through dask, whose extra (dask[distributed]) is what the cluster extra declares
        import dask.distributed as distributed
    except ImportError:
        raise BackendError(
            "the Dask executor needs dask and distributed, which are not installed",
            INSTALL_DASK,
        ) from None
    return distributed


class DaskExecutor(Executor):
    """Units as tasks on a Dask cluster: an existing scheduler, or a LocalCluster.

    ``address``: a running scheduler (``tcp://host:8786``, or a scheduler file's
    path); without one, a ``distributed.LocalCluster`` of ``workers`` workers (one
    thread each; processes unless ``processes=False``) lives for the run. Every
    worker must see the input and output paths. On the first failing task the
    others are cancelled and the runner waits until none of them runs any more,
    so nothing writes into the temporary store after it is removed.
    """

    def __init__(
        self, address: str | None = None, *, workers: int = 0, processes: bool = True
    ) -> None:
        self.address = address
        self.workers = max(1, int(workers) or (os.cpu_count() or 1))
        self.processes = processes
        self._client: Any = None

    def describe(self) -> dict[str, Any]:
        if self.address is not None:
            return {"name": "dask", "scheduler": self.address}
        return {
            "name": "dask",
            "scheduler": "LocalCluster",
            "workers": self.workers,
            "processes": self.processes,
        }

    @contextlib.contextmanager
    def session(self) -> Iterator[None]:
        distributed = _import_distributed()
        cluster = None
        try:
            if self.address is not None:
                kwargs: dict[str, Any] = {"timeout": "20s"}
                if Path(self.address).is_file():
                    kwargs["scheduler_file"] = self.address
                else:
                    kwargs["address"] = self.address
                self._client = distributed.Client(**kwargs)
            else:
                # no dashboard; the scheduler's HTTP server (health, metrics) on a free
                # local port rather than dask's fixed 8787, which a user's own dashboard
                # or another run may hold ("Port 8787 is already in use")
                cluster = distributed.LocalCluster(
                    n_workers=self.workers,
                    threads_per_worker=1,
                    processes=self.processes,
                    dashboard_address=None,
                    scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
                )
                self._client = distributed.Client(cluster)
        except (OSError, TimeoutError) as exc:
            if cluster is not None:
                cluster.close()
            where = self.address or "a LocalCluster"
            raise BackendError(
                f"cannot reach the Dask scheduler {where}: {exc}",
                "start one (dask scheduler; dask worker ADDRESS) or check the address",
            ) from None
        try:
            yield
        finally:
            self._client.close()
            if cluster is not None:
                cluster.close()
            self._client = None

    def map(self, task: Callable[[Any], Any], units: Iterable[Any]) -> Iterator[Any]:
        if self._client is None:
            raise RuntimeError("DaskExecutor.map outside session()")
        distributed = _import_distributed()
        client = self._client
        # the task (the stage's plan) travels to every worker once
        [shared] = client.scatter([task], broadcast=True, hash=False)
        tag = uuid.uuid4().hex[:8]
        submitted: list[Any] = []

        def submit(unit: Any) -> Any:
            key = f"ulm-{tag}-{len(submitted)}"
            fut = client.submit(_dask_call, shared, unit, key=key, pure=False, retries=0)
            submitted.append(fut)
            return fut

        def result(fut: Any) -> Any:
            try:
                return fut.result()
            except distributed.KilledWorker as exc:
                raise BackendError(
                    f"a Dask worker died while running {fut.key}: {exc}",
                    "check the workers' logs (memory limits) and rerun",
                ) from None

        window = 2 * self._slots()
        try:
            yield from _ordered(submit, result, units, window)
        except BaseException:
            self._cancel(client, submitted)
            raise

    def _slots(self) -> int:
        try:
            info = self._client.scheduler_info()
            n = sum(int(w.get("nthreads", 1)) for w in info.get("workers", {}).values())
        except Exception:
            n = 0
        return max(1, n or self.workers)

    @staticmethod
    def _cancel(client: Any, futures: list[Any], timeout: float = 60.0) -> None:
        """Cancel every task and wait until the workers run none of them."""
        keys = {f.key for f in futures}
        with contextlib.suppress(Exception):
            client.cancel(futures, force=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                processing = client.processing()
            except Exception:
                return
            if not any(k in keys for ks in processing.values() for k in ks):
                # a task past the scheduler's view may still be on a worker's thread
                try:
                    running = client.run(_running_keys)
                except Exception:
                    return
                if not any(k in keys for ks in running.values() for k in ks):
                    return
            time.sleep(0.05)


def _running_keys(dask_worker: Any) -> list[str]:
    state = getattr(dask_worker, "state", dask_worker)
    executing = getattr(state, "executing", set())
    return [getattr(ts, "key", ts) for ts in executing]


def make_executor(
    workers: int = 1,
    *,
    local: str | None = "process",
    dask: bool = False,
    dask_scheduler: str | None = None,
    dask_processes: bool = True,
) -> Executor:
    """The executor for ``--workers``, ``--dask`` and ``--dask-scheduler``.

    ``local`` is the stage's meaning of ``--workers`` without Dask: ``process``
    (movies in worker processes), ``thread`` (movies in threads) or None (the
    stage uses the workers itself inside each movie; movies run in-process).
    ``workers`` 0 means every core.
    """
    if workers < 0:
        raise UsageError(f"--workers must be >= 0, got {workers}")
    if dask_scheduler is not None:
        if not dask_scheduler.strip():
            raise UsageError("--dask-scheduler needs an address", "e.g. tcp://host:8786")
        _import_distributed()
        return DaskExecutor(dask_scheduler.strip())
    n = workers or (os.cpu_count() or 1)
    if dask:
        _import_distributed()
        return DaskExecutor(workers=n, processes=dask_processes)
    if local is None or n <= 1:
        return SerialExecutor()
    if local == "thread":
        return ThreadExecutor(n)
    return ProcessExecutor(n)
