"""The micro-batcher on its own: an event loop, a real Gate and a search function that
records its calls (the served API is tested in test_api.py)."""
import asyncio
import threading
import time

import pytest

from workflow.errors import UnknownId
from workflow.service.batching import Batcher
from workflow.service.limits import Busy, Gate


class Search:
    """Answers each query q with q * 10 after `seconds`; id 999 is unknown."""

    def __init__(self, seconds: float = 0.02):
        self.seconds, self.calls, self.threads = seconds, [], set()
        self.lock = threading.Lock()

    def __call__(self, queries, **opts):
        with self.lock:
            self.calls.append(list(queries))
            self.threads.add(threading.get_ident())
        time.sleep(self.seconds)
        if 999 in queries:
            raise UnknownId("id 999 is unknown")
        return [q * 10 for q in queries]


def _run(coro):
    return asyncio.run(coro)


def test_concurrent_requests_share_batches_and_get_their_own_results():
    search = Search()

    async def main():
        batcher = Batcher(Gate(2, 5.0), search, max_batch=4)
        return await asyncio.gather(*(batcher.run([i, i + 100], {"k": 3})
                                      for i in range(10)))
    got = _run(main())
    assert got == [[i * 10, (i + 100) * 10] for i in range(10)]
    assert max(len(c) for c in search.calls) == 4  # two requests of two per batch
    assert len(search.calls) < 10
    assert all(len(c) <= 4 for c in search.calls)


def test_requests_with_other_options_are_never_mixed():
    search = Search()
    seen = []

    def recording(queries, **opts):
        seen.append((opts["k"], list(queries)))
        return search(queries, **opts)

    async def main():
        batcher = Batcher(Gate(1, 5.0), recording, max_batch=8)
        return await asyncio.gather(*(batcher.run([i], {"k": i % 2 + 1}) for i in range(8)))
    assert _run(main()) == [[i * 10] for i in range(8)]
    for k, queries in seen:
        assert all(q % 2 + 1 == k for q in queries), seen


def test_a_failing_batch_is_answered_request_by_request():
    async def main():
        batcher = Batcher(Gate(1, 5.0), Search(), max_batch=8)
        return await asyncio.gather(*(batcher.run([i], {}) for i in (1, 999, 2, 3)),
                                    return_exceptions=True)
    got = _run(main())
    assert got[0] == [10] and got[2] == [20] and got[3] == [30]
    assert isinstance(got[1], UnknownId)


def test_pending_requests_get_busy_when_no_slot_comes_free():
    async def main():
        gate = Gate(1, 0.1)
        batcher = Batcher(gate, Search(), max_batch=8)
        hold = asyncio.create_task(gate.run(time.sleep, 0.5))  # the only slot, 0.5 s
        await asyncio.sleep(0.01)
        got = await asyncio.gather(batcher.run([1], {}), batcher.run([2], {}),
                                   return_exceptions=True)
        await hold
        again = await batcher.run([3], {})  # the batcher still works afterwards
        return got, again, batcher.pending, batcher.draining
    got, again, pending, draining = _run(main())
    assert all(isinstance(e, Busy) for e in got), got
    assert again == [30] and pending == {} and draining == {}


def test_a_drainer_gives_its_slot_to_another_kind_of_request():
    """Under a steady stream of id queries, an upload waiting at the gate gets the next
    free slot instead of waiting for the stream to stop."""
    search = Search(0.01)

    async def main():
        gate = Gate(1, 5.0)
        batcher = Batcher(gate, search, max_batch=1)
        stop = time.monotonic() + 1.0
        done = []

        async def client(c):
            while time.monotonic() < stop:
                await batcher.run([c], {})

        async def upload():
            await asyncio.sleep(0.1)
            t = time.monotonic()
            await gate.run(time.sleep, 0.01)
            done.append(time.monotonic() - t)
        await asyncio.gather(*(client(c) for c in range(4)), upload())
        return done, batcher.pending, batcher.draining
    done, pending, draining = _run(main())
    assert done and done[0] < 0.2, done  # a few batches' time, not the stream's second
    assert pending == {} and draining == {}


@pytest.mark.parametrize("slots", [1, 2])
def test_batches_run_in_worker_threads_at_most_slots_at_once(slots):
    search = Search(0.02)
    running, peak = [0], [0]
    lock = threading.Lock()

    def counted(queries, **opts):
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        try:
            return search(queries, **opts)
        finally:
            with lock:
                running[0] -= 1

    async def main():
        batcher = Batcher(Gate(slots, 5.0), counted, max_batch=2)
        return await asyncio.gather(*(batcher.run([i], {}) for i in range(20)))
    assert _run(main()) == [[i * 10] for i in range(20)]
    assert peak[0] == slots and threading.get_ident() not in search.threads


def test_the_gate_sets_each_calls_openmp_threads_in_its_worker_thread(monkeypatch):
    import faiss

    from workflow.service.server import threads_per_search
    monkeypatch.setattr("os.cpu_count", lambda: 8)
    assert threads_per_search(2) == 4 and threads_per_search(16) == 1

    async def main():
        return await Gate(1, 5.0, threads=1).run(faiss.omp_get_max_threads)
    assert _run(main()) == 1
