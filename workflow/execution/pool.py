"""A supervised process pool: a worker that hangs or crashes loses only its current job.

`multiprocessing.Pool` and `ProcessPoolExecutor` cannot do this: one segfault breaks the
whole pool, and a hung job cannot be abandoned. Here every worker has its own pipe, the
parent knows which job each worker holds, kills a worker whose job runs past `timeout`,
restarts dead workers, and reports such jobs through `on_failure`.

With `split=True` a job's payload is a list of items (fn maps a list to a list of
results): a chunk of items costs one hand-off instead of one per item, and a chunk whose
worker hangs or crashes is split and its items retried one by one, so that still only
the guilty item is lost.

A jobs iterator may yield `PAUSE` when it has no job to give yet (its consumer holds
all the buffers the next job would write into): the pool keeps collecting the results
of the jobs out, which is what lets the consumer free a buffer, and asks again.
"""
from __future__ import annotations

import collections
import logging
import multiprocessing as mp
import os
import signal
import time
from collections.abc import Callable, Iterable, Iterator
from multiprocessing.connection import wait
from typing import Any

from ..errors import WorkflowError

logger = logging.getLogger(__name__)

# Yielded by a jobs iterator for "no job yet, ask again once a result came in".
PAUSE = object()
PAUSE_POLL_S = 0.002

WORKER_ENV = {
    # One thread per process: the pool is the parallelism.
    "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
}


def _worker_main(conn, fn: Callable, init: Callable | None) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    if init is not None:
        init()
    while True:
        try:
            msg = conn.recv()
        except EOFError:
            return
        if msg is None:
            return
        idx, payload = msg
        conn.send((idx, fn(payload)))


class _Worker:
    def __init__(self, ctx, fn, init):
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker_main, args=(child, fn, init), daemon=True)
        self.proc.start()
        child.close()
        self.job: tuple[int, Any] | None = None
        self.started = 0.0

    def give(self, idx: int, payload: Any) -> None:
        self.job, self.started = (idx, payload), time.monotonic()
        self.conn.send((idx, payload))

    def kill(self) -> None:
        self.proc.kill()
        self.proc.join(5)
        self.conn.close()


class SupervisedPool:
    """Run `fn(payload)` for many payloads in `workers` processes.

    Args:
        fn: a picklable function that does not raise (it returns its failures).
        workers: number of processes.
        timeout: seconds one job may take before its worker is killed.
        on_failure: on_failure(payload, kind, message) -> result, for kind "timeout" or
            "crashed"; its value is yielded as the job's result.
        init: run once in each new worker (e.g. to set OpenCV's thread count).
        env: extra environment variables for the workers.
        max_crash_streak: after this many crashed jobs in a row with no success between
            them, the cause is not the inputs: raise PoolBroken.
        split: payloads are lists of items, results lists of results; a failed chunk is
            retried item by item (its timeout is `timeout` times its length), and
            on_failure gets a one-item list and returns a one-result list.
    """

    def __init__(self, fn: Callable, workers: int, timeout: float,
                 on_failure: Callable[[Any, str, str], Any], init: Callable | None = None,
                 env: dict[str, str] | None = None, max_crash_streak: int = 10,
                 split: bool = False):
        assert workers >= 1
        self.fn, self.n, self.timeout, self.on_failure, self.init = fn, workers, timeout, \
            on_failure, init
        self.env = {**WORKER_ENV, **(env or {})}
        self.ctx = mp.get_context("spawn")
        self.workers: list[_Worker] = []
        self.restarts = 0
        self.max_crash_streak, self._streak = max_crash_streak, 0
        self.split = split
        self._retry: collections.deque = collections.deque()
        self._parts: dict[int, list] = {}

    def __enter__(self) -> SupervisedPool:
        self.workers = [self._start() for _ in range(self.n)]
        return self

    def _start(self) -> _Worker:
        """A new worker; spawn passes os.environ to the child, so set it around start."""
        saved = {k: os.environ.get(k) for k in self.env}
        os.environ.update(self.env)
        try:
            return _Worker(self.ctx, self.fn, self.init)
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v

    def __exit__(self, *exc) -> None:
        for w in self.workers:
            try:
                w.conn.send(None)
            except OSError:
                pass
        deadline = time.monotonic() + 5
        for w in self.workers:
            w.proc.join(max(0.0, deadline - time.monotonic()))
            if w.proc.is_alive():
                w.kill()
        self.workers = []

    def imap_unordered(self, jobs: Iterable[tuple[int, Any]]) -> Iterator[tuple[int, Any]]:
        """Yield (idx, result) for each (idx, payload) job, in completion order.

        Jobs are pulled from `jobs` only when a worker is free, so the caller controls
        how far ahead reading runs.
        """
        it = iter(jobs)
        exhausted = False
        while True:
            paused = False
            for w in self.workers:
                if w.job is not None:
                    continue
                if self._retry:
                    w.give(*self._retry.popleft())
                elif not exhausted and not paused:
                    nxt = next(it, None)
                    exhausted = nxt is None
                    paused = nxt is PAUSE
                    if nxt is not None and not paused:
                        w.give(*nxt)
            busy = [w for w in self.workers if w.job is not None]
            if not busy:
                if paused:  # nothing out whose result could unpause it: poll
                    time.sleep(PAUSE_POLL_S)
                    continue
                return
            for key, result in self._collect(busy):
                yield from self._assemble(key, result)

    def _limit(self, w: _Worker) -> float:
        return self.timeout * (len(w.job[1]) if self.split else 1)

    def _collect(self, busy: list[_Worker]) -> Iterator[tuple[Any, Any]]:
        now = time.monotonic()
        wait_for = max(0.0, min(w.started + self._limit(w) for w in busy) - now)
        ready = set(wait([w.conn for w in busy] + [w.proc.sentinel for w in busy],
                         timeout=wait_for))
        for w in busy:
            if w.conn in ready:
                try:
                    key, result = w.conn.recv()
                except (EOFError, OSError):
                    yield from self._replace(w, "crashed", "the worker process died")
                    continue
                w.job = None
                self._streak = 0
                yield key, result
            elif w.proc.sentinel in ready:
                code = w.proc.exitcode
                yield from self._replace(w, "crashed",
                                         f"the worker process died (exit code {code})")
            elif time.monotonic() - w.started > self._limit(w):
                yield from self._replace(w, "timeout",
                                         f"took longer than {self.timeout:g} s")

    def _assemble(self, key, result) -> Iterator[tuple[int, Any]]:
        """Results of split parts wait until the whole chunk is back."""
        if not isinstance(key, tuple):
            yield key, result
            return
        idx, part = key
        parts = self._parts[idx]
        parts[part] = result
        if all(p is not None for p in parts):
            del self._parts[idx]
            yield idx, [r for p in parts for r in p]

    def _replace(self, w: _Worker, kind: str, message: str) -> Iterator[tuple[Any, Any]]:
        key, payload = w.job
        if kind == "crashed":
            self._streak += 1
            if self._streak >= self.max_crash_streak:
                raise PoolBroken(
                    f"{self._streak} worker processes in a row died ({message}) without "
                    "finishing any job: the cause is the environment, not the images. "
                    "Common causes: too little memory (lower --workers), or calling the "
                    "stage from your own script without `if __name__ == '__main__':` "
                    "(worker processes are started with 'spawn'). Nothing of the "
                    "unfinished shard was saved; fix the cause and re-run.")
        w.kill()
        self.restarts += 1
        self.workers[self.workers.index(w)] = self._start()
        if self.split and len(payload) > 1:
            logger.info("a chunk of %d items %s; retrying them one by one", len(payload),
                        "crashed its worker" if kind == "crashed" else message)
            self._parts[key] = [None] * len(payload)
            self._retry.extend(((key, j), [item]) for j, item in enumerate(payload))
            return
        logger.warning("job %s: %s; restarting the worker", key, message)
        yield key, self.on_failure(payload, kind, message)

class PoolBroken(WorkflowError):
    """Worker processes keep dying regardless of their input."""
