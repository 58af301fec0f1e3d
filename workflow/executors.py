"""Executors: how a stage spreads its work. Chosen by name from registries.

Per item, inside a shard (`make_executor`):
- `local`: everything in this process (for debugging and profiling; no per-item
  timeout, a crash takes the stage down).
- `thread`: a pool of threads in this process, for work that releases the GIL (OpenCV
  decoding) and whose results are large (decoded pixels): nothing is pickled.
- `process`: a supervised pool of worker processes; a worker that hangs or crashes
  loses only its current item.

Per shard (`map_shards`), for a picklable shard task:
- `local`: shards one after another in this process;
- `process`: shards in a pool of worker processes;
- `spark`: one Spark task per shard (`spark.py`).
"""
from __future__ import annotations

import collections
import concurrent.futures as cf
import multiprocessing as mp
import time
from typing import Any, Callable, Iterable, Iterator

from .errors import ConfigError, DeadlineReached
from .pool import SupervisedPool


class LocalExecutor:
    """Runs fn in this process, in order."""

    def __init__(self, fn: Callable, workers: int = 1, timeout: float = 0,
                 on_failure: Callable | None = None, init: Callable | None = None,
                 env: dict | None = None, split: bool = False):
        self.fn = fn
        if init is not None:
            init()

    def __enter__(self) -> "LocalExecutor":
        return self

    def __exit__(self, *exc) -> None:
        pass

    def imap_unordered(self, jobs: Iterable[tuple[int, Any]]) -> Iterator[tuple[int, Any]]:
        for idx, payload in jobs:
            yield idx, self.fn(payload)


class ThreadExecutor:
    """Runs fn in `workers` threads, at most 2 * workers jobs in flight."""

    def __init__(self, fn: Callable, workers: int = 1, timeout: float = 0,
                 on_failure: Callable | None = None, init: Callable | None = None,
                 env: dict | None = None, split: bool = False):
        self.fn, self.workers = fn, workers
        if init is not None:
            init()

    def __enter__(self) -> "ThreadExecutor":
        self.pool = cf.ThreadPoolExecutor(self.workers, thread_name_prefix="work")
        return self

    def __exit__(self, *exc) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)

    def imap_unordered(self, jobs: Iterable[tuple[int, Any]]) -> Iterator[tuple[int, Any]]:
        pending: collections.deque = collections.deque()
        for idx, payload in jobs:
            pending.append((idx, self.pool.submit(self.fn, payload)))
            if len(pending) >= 2 * self.workers:
                i, fut = pending.popleft()
                yield i, fut.result()
        while pending:
            i, fut = pending.popleft()
            yield i, fut.result()


EXECUTORS: dict[str, type] = {"local": LocalExecutor, "thread": ThreadExecutor,
                              "process": SupervisedPool}


def make_executor(name: str, fn: Callable, workers: int, timeout: float,
                  on_failure: Callable, init: Callable | None = None, env: dict | None = None,
                  split: bool = False):
    """The executor registered as `name`; raises ConfigError for an unknown name.

    With split=True, payloads are lists of items (see SupervisedPool)."""
    try:
        cls = EXECUTORS[name]
    except KeyError:
        raise ConfigError(f"unknown executor {name!r}; choose one of "
                          f"{', '.join(sorted(EXECUTORS))}") from None
    return cls(fn, workers, timeout, on_failure, init=init, env=env, split=split)


SHARD_EXECUTORS = ("local", "process", "spark")


def map_shards(name: str, task: Callable, units: list, workers: int = 1,
               spark_master: str | None = None, stage: str = "",
               deadline: float | None = None,
               reachable: dict[str, str] | None = None) -> Iterator[tuple[Any, Any]]:
    """(unit, task(unit)) for each shard as it finishes, run by the shard executor `name`.

    With a deadline (time.monotonic()), no shard starts after it (those in flight finish)
    and DeadlineReached is raised. `reachable` (name -> path or URL) is checked from
    every Spark executor first."""
    if name not in SHARD_EXECUTORS:
        raise ConfigError(f"unknown executor {name!r}; choose one of "
                          f"{', '.join(SHARD_EXECUTORS)}")
    if name == "spark":
        from .spark import SparkShards
        with SparkShards(spark_master, stage) as sp:
            if reachable:
                sp.check_reachable(reachable)
            yield from _until(sp.map(task, units), deadline)
        return
    if name == "local":
        for unit in units:
            if deadline is not None and time.monotonic() > deadline:
                raise DeadlineReached()
            yield unit, task(unit)
        return
    with cf.ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
        yield from _until(bounded_map(pool, task, units, workers), deadline)


def _until(results: Iterator, deadline: float | None) -> Iterator:
    try:
        for r in results:
            yield r
            if deadline is not None and time.monotonic() > deadline:
                raise DeadlineReached()
    finally:
        results.close()


def bounded_map(pool: cf.Executor, task: Callable, units: list, slots: int) -> Iterator:
    """(unit, task(unit)) as they finish, at most `slots` submitted to `pool` at once."""
    queue = iter(units)
    running = {}
    for unit in queue:
        running[pool.submit(task, unit)] = unit
        if len(running) >= slots:
            break
    try:
        while running:
            done, _ = cf.wait(running, return_when=cf.FIRST_COMPLETED)
            for fut in done:
                unit = running.pop(fut)
                yield unit, fut.result()
                nxt = next(queue, None)
                if nxt is not None:
                    running[pool.submit(task, nxt)] = nxt
    finally:
        cf.wait(running)
