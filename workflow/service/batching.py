"""Micro-batching: id and vector queries that arrive while a search computes are answered
together by one `Searcher.search` call, which is several times faster per query than
one call each (Faiss scans the lists of a batch on every core; the Python around a
search is paid once). Requests with different options are never mixed, a batch is at
most `max_batch` queries, and a batch that fails (an unknown id in one request) is
answered request by request, so each request gets its own answer or error."""
from __future__ import annotations

import asyncio
import json

from .limits import Busy, Gate


class Batcher:
    def __init__(self, gate: Gate, search, max_batch: int = 64, observe=None):
        self.gate, self.search, self.max_batch = gate, search, max_batch
        self.observe = observe or (lambda size: None)  # each batch's size (metrics)
        self.pending: dict[str, list] = {}
        self.draining: dict[str, int] = {}  # batches being taken per key: one per slot

    async def run(self, queries: list, opts: dict) -> list:
        """The results of `search(queries, **opts)`, computed with other requests'."""
        key = json.dumps(opts, sort_keys=True)
        future = asyncio.get_running_loop().create_future()
        self.pending.setdefault(key, []).append((queries, future))
        if self.draining.get(key, 0) < self.gate.slots:
            self.draining[key] = self.draining.get(key, 0) + 1
            asyncio.get_running_loop().create_task(self._drain(key, opts))
        return await future

    async def _drain(self, key: str, opts: dict) -> None:
        try:
            while self.pending.get(key):
                batch, size = [], 0
                waiting = self.pending[key]
                while waiting and (not batch or size + len(waiting[0][0]) <= self.max_batch):
                    batch.append(waiting.pop(0))
                    size += len(batch[-1][0])
                await self._answer(batch, opts)
        finally:  # no await since the loop found nothing pending: none can be missed
            self.draining[key] -= 1
            if not self.draining[key]:
                del self.draining[key]
            if not self.pending.get(key):
                self.pending.pop(key, None)

    async def _answer(self, batch: list, opts: dict) -> None:
        self.observe(sum(len(qs) for qs, _ in batch))
        try:
            results = await self.gate.run(self.search, [q for qs, _ in batch for q in qs],
                                          **opts)
        except Exception as e:  # noqa: BLE001 - alone, each request gets its own answer
            if len(batch) == 1 or isinstance(e, Busy):
                for _, future in batch:
                    _settle(future, error=e)
                return
            for queries, future in batch:
                await self._answer([(queries, future)], opts)
            return
        pos = 0
        for queries, future in batch:
            _settle(future, results[pos:pos + len(queries)])
            pos += len(queries)


def _settle(future: asyncio.Future, value=None, error: Exception | None = None) -> None:
    if future.done():  # the client went away
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(value)
