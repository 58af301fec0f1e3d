"""Executors: how a stage spreads its work. Chosen by name from registries.

Per item, inside a shard (`make_executor`):
- `local`: everything in this process (for debugging and profiling; no per-item
  timeout, a crash takes the stage down).
- `thread`: a pool of threads in this process, for work that releases the GIL (OpenCV
  decoding) and whose results are large (decoded pixels): nothing is pickled.
- `process`: a supervised pool of worker processes; a worker that hangs or crashes
  loses only its current item.

Per shard: `workflow.execution.shards.map_shards`, which uses `bounded_map` from here.
"""
from __future__ import annotations

import collections
import concurrent.futures as cf
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from ..errors import ConfigError
from .pool import SupervisedPool


class LocalExecutor:
    """Runs fn in this process, in order."""

    def __init__(self, fn: Callable, workers: int = 1, timeout: float = 0,
                 on_failure: Callable | None = None, init: Callable | None = None,
                 env: dict | None = None, split: bool = False):
        self.fn = fn
        if init is not None:
            init()

    def __enter__(self) -> LocalExecutor:
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

    def __enter__(self) -> ThreadExecutor:
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
