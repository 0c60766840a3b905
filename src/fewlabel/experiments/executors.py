"""Where grid cells run: in this process, in a process pool, or as Ray tasks.

An executor has one method that matters, ``map(fn, tasks)``: it yields ``(task, result)`` pairs in the
order the tasks FINISH, where ``result`` is ``fn(task)`` or the exception that ended it (a worker that
died, a task Ray could not run). The driver (``curve.py``) writes each result to the store as it
arrives, so an interrupted sweep keeps everything that finished.

``fn`` must be a picklable top-level function of one plain task (``cell.run_cell``): Ray and the pool
ship it to other processes, which open the data themselves.

  * ``LocalExecutor(workers=1)``: a plain loop in this process (no pickling, the data already open);
    ``workers > 1``: a spawn-based process pool, each process with ``threads`` torch threads.
  * ``RayExecutor(address=None, cpus_per_task=1, gpus_per_task=None)``: one Ray task per cell with those
    resources (a fraction of a GPU packs several small cells onto one GPU; None = 0.25 when the
    cluster has GPUs, else 0). Starts a local Ray for the
    user (``ray.init(num_cpus=..., include_dashboard=False)``) or joins ``address``; the driver collects
    results with ``ray.wait`` as each finishes.

Every task seeds itself fully and sets its torch threads, so the numbers do not depend on where it ran.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from typing import Any, Protocol, TypeVar

T = TypeVar("T")
AUTO_GPUS_PER_TASK = 0.25


class Executor(Protocol):
    name: str

    def map(self, fn: Callable[[T], Any], tasks: Sequence[T], *, num_cpus: float | None = None,
            num_gpus: float | None = None) -> Iterator[tuple[T, Any]]: ...

    def close(self) -> None: ...


def _init_worker(threads: int | None) -> None:
    # Two processes with two torch threads each on two cores collapse to a quarter of the speed
    # (deps-probe.md); each pool process gets its share.
    if threads:
        os.environ["OMP_NUM_THREADS"] = str(threads)
        import torch

        torch.set_num_threads(threads)


class LocalExecutor:
    """Cells in this process (``workers=1``, the default) or in a pool of ``workers`` processes."""

    name = "local"

    def __init__(self, workers: int = 1, threads: int | None = None) -> None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.workers = workers
        self.threads = threads
        self._pool: ProcessPoolExecutor | None = None

    def map(self, fn: Callable[[T], Any], tasks: Sequence[T], *, num_cpus: float | None = None,
            num_gpus: float | None = None) -> Iterator[tuple[T, Any]]:
        """``num_cpus``/``num_gpus`` are Ray's per-task resources; here the task sets its own threads."""
        del num_cpus, num_gpus
        if self.workers == 1 or len(tasks) <= 1:
            for task in tasks:
                try:
                    yield task, fn(task)
                except Exception as exc:  # KeyboardInterrupt is not caught: Ctrl-C stops the sweep
                    yield task, exc
            return
        if self._pool is None:
            # spawn, not fork: forking a process that holds torch threads (and maybe CUDA) can hang.
            self._pool = ProcessPoolExecutor(max_workers=self.workers,
                                             mp_context=multiprocessing.get_context("spawn"),
                                             initializer=_init_worker, initargs=(self.threads,))
        pending: dict[Future, T] = {self._pool.submit(fn, t): t for t in tasks}
        try:
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    task = pending.pop(fut)
                    try:
                        yield task, fut.result()
                    except Exception as exc:
                        yield task, exc
        finally:
            for fut in pending:
                fut.cancel()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


class RayExecutor:
    """Cells as Ray tasks. ``address=None`` starts a local Ray with ``num_cpus`` CPUs (default: all)
    and stops it on ``close()``; an address (``auto``, ``ray://host:10001``) joins an existing
    cluster, which is left running. With an existing cluster, RUN_DIR, the data and the cached
    encoders must be on storage every node sees (workers open the data by path)."""

    name = "ray"

    def __init__(self, address: str | None = None, *, num_cpus: int | None = None, cpus_per_task: float = 1,
                 gpus_per_task: float | None = None, init_kwargs: dict[str, Any] | None = None) -> None:
        try:
            import ray
        except ImportError:  # pragma: no cover - depends on the install
            from fewlabel.errors import FewlabelError

            raise FewlabelError("--executor ray needs Ray: pip install 'fewlabel[ray]'") from None
        self._ray = ray
        self.address = address
        self.cpus_per_task = cpus_per_task
        self._owns_cluster = False
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": True,
                                      "logging_level": "warning", **(init_kwargs or {})}
            if address:
                ray.init(address=address, **kwargs)
            else:
                ray.init(num_cpus=num_cpus, **kwargs)
                self._owns_cluster = True
        total = ray.cluster_resources()
        if gpus_per_task is None:
            # Ray hides the GPUs from a task that asks for none, so 0 on a GPU cluster would train on
            # CPU without a word; a quarter packs four small cells per GPU (few-label steps are tiny).
            gpus_per_task = AUTO_GPUS_PER_TASK if total.get("GPU", 0) >= 1 else 0.0
        self.gpus_per_task = gpus_per_task
        if cpus_per_task > total.get("CPU", 0):
            raise ValueError(f"a cell asks {cpus_per_task} CPUs; the Ray cluster has {total.get('CPU', 0)}")
        if gpus_per_task > total.get("GPU", 0):
            raise ValueError(f"a cell asks {gpus_per_task} GPUs; the Ray cluster has {total.get('GPU', 0)}")

    @property
    def threads(self) -> int:
        """Torch threads inside a task: its CPU share (Ray also sets OMP_NUM_THREADS to it)."""
        return max(1, int(self.cpus_per_task))

    def map(self, fn: Callable[[T], Any], tasks: Sequence[T], *, num_cpus: float | None = None,
            num_gpus: float | None = None) -> Iterator[tuple[T, Any]]:
        """Each task with ``num_cpus``/``num_gpus`` (default: the per-cell resources)."""
        ray = self._ray
        # max_retries=0: a cell that crashed its worker is recorded as failed, not run again silently.
        remote = ray.remote(fn).options(
            num_cpus=self.cpus_per_task if num_cpus is None else num_cpus,
            num_gpus=self.gpus_per_task if num_gpus is None else num_gpus, max_retries=0)
        pending = {remote.remote(t): t for t in tasks}
        try:
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                for ref in done:
                    task = pending.pop(ref)
                    try:
                        yield task, ray.get(ref)
                    except Exception as exc:  # RayTaskError, WorkerCrashedError ...
                        yield task, getattr(exc, "cause", None) or exc
        finally:
            for ref in pending:  # stopped early (Ctrl-C, an error in the driver): free the cluster
                ray.cancel(ref, force=True)

    def share(self, obj: Any) -> Any:
        """Put ``obj`` in the object store once; tasks receive the reference (every worker of a node
        reads the same copy) instead of rebuilding it."""
        return self._ray.put(obj)

    def cluster_cpus(self) -> int:
        """CPUs of the cluster this executor runs on (at least 1)."""
        return max(1, int(self._ray.cluster_resources().get("CPU", 1)))

    def close(self) -> None:
        if self._owns_cluster and self._ray.is_initialized():
            self._ray.shutdown()
            self._owns_cluster = False


def make_executor(kind: str = "local", *, workers: int = 1, ray_address: str | None = None,
                  cpus_per_cell: float = 1, gpus_per_cell: float | None = None,
                  threads: int | None = None) -> Executor:
    """``local`` or ``ray`` (``ray_address`` implies ray)."""
    if ray_address and kind == "local":
        kind = "ray"
    if kind == "local":
        return LocalExecutor(workers=workers, threads=threads)
    if kind == "ray":
        return RayExecutor(ray_address, num_cpus=None if ray_address else (workers if workers > 1 else None),
                           cpus_per_task=cpus_per_cell, gpus_per_task=gpus_per_cell)
    raise ValueError(f"executor must be 'local' or 'ray', got {kind!r}")
