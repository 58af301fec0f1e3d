"""The decoding pipeline of the extract stage: stored JPEGs -> model-input batches, in
order, decoded by a pool of workers while the model computes.

A feeding thread hands decoding jobs of `DECODE_CHUNK` images to the pool, a bounded
number ahead: small jobs, so that the first batch of a shard is ready soon after it
starts. Where the decoded pixels go is the job of a `BatchTarget`, one per decoding mode:

- `CopyBack`: workers return arrays, copied into the batch here (one thread, Spark, or
  processes where /dev/shm is too small);
- `InPlace`: worker threads write straight into the batch's array;
- `Shared`: worker processes write into batches in shared memory; when all batches are
  out, the jobs iterator yields `PAUSE` so that the pool keeps collecting results
  (blocking there would deadlock: the results that free a batch would never be read).
"""
from __future__ import annotations

import abc
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator

import cv2
import numpy as np

from ..errors import WorkflowError
from ..inputs.imaging import model_input
from .executors import make_executor
from .pool import PAUSE
from .shared_batches import (
    SharedBatches,
    SharedSlice,
    attach_shared,
    remove_orphaned_blocks,
    shared_memory_free,
)

logger = logging.getLogger(__name__)

DECODE_CHUNK = 32  # images per decoding job
JOB_TIMEOUT = 600.0


class DecodeChunk:
    """Worker job: stored JPEGs -> uint8 RGB batch [n, S, S, 3]. Picklable. The job is a
    list of JPEGs, or (JPEGs, where to decode into): an array where the worker shares our
    memory (threads), a `SharedSlice` where it does not (processes; the job then returns
    only the number of images written)."""

    def __init__(self, size: int):
        self.size = size
        self._attached: dict[str, tuple] = {}

    def __getstate__(self) -> dict:
        return {"size": self.size}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["size"])

    def __call__(self, job):
        jpegs, out = job if isinstance(job, tuple) else (job, None)
        shared = isinstance(out, SharedSlice)
        if shared:
            out = self._view(out)
        elif out is None:
            out = np.empty((len(jpegs), self.size, self.size, 3), np.uint8)
        for j, o in zip(jpegs, out):
            model_input(j, self.size, o)
        return len(jpegs) if shared else out

    def _view(self, s: SharedSlice) -> np.ndarray:
        if s.name not in self._attached:
            for old in self._attached.values():  # the previous run's block
                old[0].close()
            self._attached.clear()
            cv2.setNumThreads(1)  # this process is one of many decoding workers
            shm = attach_shared(s.name)
            self._attached[s.name] = (shm, np.ndarray(s.shape, np.uint8, buffer=shm.buf))
        return self._attached[s.name][1][s.slot, s.lo:s.hi]


def _decode_failed(payload, kind: str, message: str):
    return None


# ------------------------------------------------------------------ batch targets

class BatchTarget(abc.ABC):
    """Where the decoded pixels of batch k go, and how a decoding job reaches them."""

    def __init__(self, size: int):
        self.size = size
        self.arrays: dict[int, np.ndarray] = {}

    def take(self, k: int, n: int) -> bool:
        """Make room for batch k of n images; False while there is none (try again)."""
        self.arrays[k] = np.empty((n, self.size, self.size, 3), np.uint8)
        return True

    @abc.abstractmethod
    def into(self, k: int, lo: int, hi: int):
        """What a job decoding rows lo:hi of batch k is given to write into."""

    def received(self, k: int, lo: int, part) -> int:
        """Take a job's result for rows from lo of batch k; the number of images."""
        return len(part)

    def hand_over(self, k: int) -> tuple[np.ndarray, Callable[[], None]]:
        """Batch k, complete, and what to call once the model has consumed it."""
        return self.arrays.pop(k), lambda: None

    def abandon(self) -> None:
        """Give back the batches never handed over (an error stopped the shard)."""
        self.arrays.clear()


class CopyBack(BatchTarget):
    """Workers return their decoded arrays; they are copied into the batch here."""

    def into(self, k, lo, hi):
        return None

    def received(self, k, lo, part) -> int:
        self.arrays[k][lo:lo + len(part)] = part
        return len(part)


class InPlace(BatchTarget):
    """Worker threads write straight into the batch's array."""

    def into(self, k, lo, hi):
        return self.arrays[k][lo:hi]


class Shared(BatchTarget):
    """Worker processes write into batches in shared memory; results are counts."""

    def __init__(self, size: int, shared: SharedBatches):
        super().__init__(size)
        self.shared, self.slots = shared, {}

    def take(self, k, n) -> bool:
        slot = self.shared.take()
        if slot is None:
            return False
        self.slots[k] = slot
        self.arrays[k] = self.shared.arrays[slot, :n]
        return True

    def into(self, k, lo, hi):
        return self.shared.slice(self.slots[k], lo, hi)

    def received(self, k, lo, part) -> int:
        return part

    def hand_over(self, k):
        slot = self.slots.pop(k)
        return self.arrays.pop(k), lambda: self.shared.release(slot)

    def abandon(self) -> None:
        for slot in self.slots.values():
            self.shared.release(slot)
        self.slots.clear()
        super().abandon()


# ------------------------------------------------------------------ the pipeline

class DecodePipeline:
    """A pool of decoding workers and the batch target of its mode. `executor` is
    `local` (one thread), `thread`, or `process` (shared memory where /dev/shm has room,
    else arrays sent back through pipes). Use as a context manager; then `batches`."""

    def __init__(self, executor: str, workers: int, size: int, batch_size: int):
        self.executor, self.workers, self.size, self.bs = executor, workers, size, batch_size
        self._stack = contextlib.ExitStack()
        self.pool = None
        self.target: BatchTarget | None = None

    def __enter__(self) -> DecodePipeline:
        self.pool = self._stack.enter_context(make_executor(
            self.executor, DecodeChunk(self.size), self.workers, JOB_TIMEOUT, _decode_failed))
        self.target = self._target()
        return self

    def __exit__(self, *exc) -> None:
        self._stack.close()

    def shared_slots(self) -> int:
        """Batches in shared memory for decoding processes: the one being computed, the
        one being filled, those the workers' jobs reach into, and two to spare so
        that a slow job does not idle the other workers."""
        chunks = -(-self.bs // min(self.bs, DECODE_CHUNK))
        return 4 + -(-self.workers // chunks)

    def _target(self) -> BatchTarget:
        if self.executor == "thread":
            return InPlace(self.size)
        if self.executor != "process":
            return CopyBack(self.size)
        shape = (self.shared_slots(), self.bs, self.size, self.size, 3)
        need = int(np.prod(shape))
        remove_orphaned_blocks()  # before measuring the room: they take some
        free = shared_memory_free()
        if free is not None and free < need:
            logger.warning(
                "extract: /dev/shm has %.1f MB free, and decoding processes need %.1f MB there "
                "for their batches; decoded pixels are sent back through pipes instead "
                "(slower). Remedy: a larger /dev/shm (Docker: --shm-size=1g), a smaller "
                "--batch-size, or --executor thread", free / 2**20, need / 2**20)
            return CopyBack(self.size)
        shared = SharedBatches(shape)
        self._stack.callback(shared.close)
        return Shared(self.size, shared)

    def batches(self, jpegs: list[bytes], unit: str,
                t: dict) -> Iterator[tuple[int, np.ndarray, Callable[[], None]]]:
        """(k, batch k, release) for the decoded batches of up to `batch_size` images, in
        order; call release() once the model is done with the batch. Time spent waiting
        for decoding is added to t["decode wait"]."""
        ready: queue.Queue = queue.Queue(maxsize=max(4, 2 * self.workers))
        stop = threading.Event()
        thread = threading.Thread(target=self._feed, args=(self._jobs(jpegs), ready, stop),
                                  name=f"decode-{unit}", daemon=True)
        thread.start()
        done: dict[int, int] = {}
        try:
            for k in range(-(-len(jpegs) // self.bs)):
                t0 = time.monotonic()
                while done.get(k, 0) < min(self.bs, len(jpegs) - k * self.bs):
                    key, part = ready.get()
                    if key is None:
                        raise part
                    if part is None:
                        raise WorkflowError(f"decoding images of {unit} crashed a worker; "
                                            "re-run, and report it if it happens again")
                    b, off = divmod(key, self.bs)  # key: the job's first image in the shard
                    done[b] = done.get(b, 0) + self.target.received(b, off, part)
                t["decode wait"] += time.monotonic() - t0
                yield (k, *self.target.hand_over(k))
        finally:
            stop.set()
            thread.join(timeout=30)
            self.target.abandon()

    def _jobs(self, jpegs: list[bytes]):
        """(first image, (JPEGs, where to decode into)) jobs, batch after batch; PAUSE
        while the target has no room for the next batch."""
        bs, dc = self.bs, min(self.bs, DECODE_CHUNK)
        for k, lo in enumerate(range(0, len(jpegs), bs)):
            hi = min(len(jpegs), lo + bs)
            while not self.target.take(k, hi - lo):
                yield PAUSE
            for c in range(lo, hi, dc):
                e = min(hi, c + dc)
                yield c, (jpegs[c:e], self.target.into(k, c - lo, e - lo))

    def _feed(self, jobs, ready: queue.Queue, stop: threading.Event) -> None:
        """Runs in the feeding thread: the pool's results into `ready`, until stopped."""
        try:
            for item in self.pool.imap_unordered(jobs):
                while not stop.is_set():
                    try:
                        ready.put(item, timeout=0.2)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
        except BaseException as e:  # noqa: BLE001 - handed to the consumer
            ready.put((None, e))
