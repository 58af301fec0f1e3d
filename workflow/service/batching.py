"""Micro-batching: id and vector queries that arrive while a search computes are answered
together by one `Searcher.search` call, which is several times faster per query than
one call each (the Python around a search is paid once, Faiss scans a batch's lists in
one pass).

A drainer holds one of the gate's computing slots and, in its worker thread, takes
batch after batch of the pending requests with the same options, until none is left or
another request waits at the gate (an upload, a thumbnail), which then gets the slot.
The next batch starts as soon as the last one is done, without waiting for the event
loop, which meanwhile sends the answers and reads new requests. Requests with different
options are never mixed, a batch is at most `max_batch` queries, and a batch that fails
(an unknown id in one request) is answered request by request, so each request gets its
own answer or error."""
from __future__ import annotations

import asyncio
import json
import threading

from .limits import Busy, Gate


class Batcher:
    def __init__(self, gate: Gate, search, max_batch: int = 4, observe=None):
        self.gate, self.search, self.max_batch = gate, search, max_batch
        self.observe = observe or (lambda size: None)  # each batch's size (metrics)
        self.lock = threading.Lock()  # guards pending and draining (loop and workers)
        self.pending: dict[str, list] = {}  # key -> [(queries, future)], oldest first
        self.draining: dict[str, int] = {}  # key -> drainers holding or awaiting a slot

    async def run(self, queries: list, opts: dict) -> list:
        """The results of `search(queries, **opts)`, computed with other requests'."""
        loop = asyncio.get_running_loop()
        key = json.dumps(opts, sort_keys=True)
        future = loop.create_future()
        with self.lock:
            self.pending.setdefault(key, []).append((queries, future))
            start = self.draining.get(key, 0) < self.gate.slots
            if start:
                self.draining[key] = self.draining.get(key, 0) + 1
        if start:
            loop.create_task(self._drain(key, opts, loop))
        return await future

    async def _drain(self, key: str, opts: dict, loop) -> None:
        try:
            await self.gate.run(self._drain_in_thread, key, opts, loop)
        except Busy as e:  # no slot came free: if no other drainer is left, all wait in vain
            with self.lock:
                left = self._leave(key)
                waiting = self.pending.pop(key, []) if not left else []
            for _, future in waiting:
                _settle(future, error=e)

    def _leave(self, key: str) -> int:
        """One drainer fewer for `key` (under the lock); how many are left."""
        self.draining[key] -= 1
        if not self.draining[key]:
            del self.draining[key]
            return 0
        return self.draining[key]

    def _drain_in_thread(self, key: str, opts: dict, loop) -> None:
        while True:
            with self.lock:
                batch = self._take(key)
                if not batch:  # under the lock: a request added after this starts a drainer
                    self._leave(key)
                    return
            self._answer(batch, opts, loop)
            if self.gate.waiting:  # another kind of request waits for a slot: give it
                with self.lock:
                    self._leave(key)
                    more = bool(self.pending.get(key))
                    if more:
                        self.draining[key] = self.draining.get(key, 0) + 1
                if more:  # the rest waits for a slot again, behind that request
                    loop.call_soon_threadsafe(lambda: loop.create_task(
                        self._drain(key, opts, loop)))
                return

    def _take(self, key: str) -> list:
        """The oldest pending requests of `key`, up to `max_batch` queries (at least one
        request); removed from pending."""
        waiting = self.pending.get(key) or []
        batch, size = [], 0
        while waiting and (not batch or size + len(waiting[0][0]) <= self.max_batch):
            batch.append(waiting.pop(0))
            size += len(batch[-1][0])
        if not waiting:
            self.pending.pop(key, None)
        return batch

    def _answer(self, batch: list, opts: dict, loop) -> None:
        """Search for a batch (in the worker thread) and settle its requests' futures in
        the event loop."""
        self.observe(sum(len(qs) for qs, _ in batch))
        try:
            results = self.search([q for qs, _ in batch for q in qs], **opts)
        except Exception as e:  # noqa: BLE001 - alone, each request gets its own answer
            if len(batch) == 1:
                loop.call_soon_threadsafe(_settle, batch[0][1], None, e)
                return
            for one in batch:
                self._answer([one], opts, loop)
            return
        answers, pos = [], 0
        for queries, future in batch:
            answers.append((future, results[pos:pos + len(queries)]))
            pos += len(queries)
        loop.call_soon_threadsafe(_settle_all, answers)


def _settle_all(answers: list) -> None:
    for future, value in answers:
        _settle(future, value)


def _settle(future: asyncio.Future, value=None, error: Exception | None = None) -> None:
    if future.done():  # the client went away
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(value)
