"""What keeps the service safe under load and abuse: a cap on request bodies (413
before the rest is read), and a gate that bounds how many searches compute at once
(the model and Faiss share the cores); a request that waits too long gets 503."""
from __future__ import annotations

import asyncio
import json

import faiss
from starlette.concurrency import run_in_threadpool


class UploadTooLarge(Exception):
    """A request body went past the limit while it was being read."""

    def __init__(self, limit: int):
        super().__init__(f"the upload is larger than the limit of {limit / 2**20:g} MB "
                         "(--max-upload-mb)")


class Busy(Exception):
    """No computing slot came free within the queue timeout."""


DRAIN_FACTOR = 4  # an oversized body up to this many times the limit is read before the 413


class BodyLimit:
    """ASGI middleware: a body over `limit` bytes is answered 413.

    A server that answers and closes with much of a request unread makes its kernel reset
    the connection, and a client still sending (as most do: the whole request, then the
    answer) sees the reset, not the 413. So a body up to DRAIN_FACTOR times the limit is
    read and dropped first; one declared larger, or whose client waits for "100
    Continue" before sending it, is answered at once, unread. A body without a declared
    size that streams past the limit raises UploadTooLarge where it is read, after the
    same draining."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit
        self.drain = DRAIN_FACTOR * limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            if int(length) <= self.drain and b"100-continue" not in headers.get(b"expect", b""):
                await self._read_rest(receive, 0)
            return await _reply_413(send, str(UploadTooLarge(self.limit)))
        seen = 0

        async def counted():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    if message.get("more_body"):
                        await self._read_rest(receive, seen)
                    raise UploadTooLarge(self.limit)
            return message
        await self.app(scope, counted, send)

    async def _read_rest(self, receive, seen: int) -> None:
        """Read and drop the rest of the body, up to `drain` bytes in all."""
        while seen <= self.drain:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            seen += len(message.get("body", b""))
            if not message.get("more_body"):
                return


async def _reply_413(send, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


class Gate:
    """At most `slots` calls run at once, in worker threads; the others wait up to
    `timeout` seconds, then raise Busy. With `threads`, each call's OpenMP (Faiss) uses
    that many threads: OpenMP's setting belongs to the thread that makes it."""

    def __init__(self, slots: int, timeout: float, threads: int | None = None):
        self.slots, self.timeout, self.threads = slots, timeout, threads
        self._sem: asyncio.Semaphore | None = None
        self.waiting = 0

    async def run(self, fn, *args, **kwargs):
        if self._sem is None:  # made in the server's event loop
            self._sem = asyncio.Semaphore(self.slots)
        self.waiting += 1
        try:
            if self._sem.locked():
                await asyncio.wait_for(self._sem.acquire(), self.timeout)
            else:  # a slot is free: taken at once, without a timer and a task
                await self._sem.acquire()
        except TimeoutError:
            raise Busy(f"the service is busy ({self.slots} searches computing, "
                       f"{self.waiting - 1} more waiting); try again") from None
        finally:
            self.waiting -= 1
        try:
            return await run_in_threadpool(self._call, fn, *args, **kwargs)
        finally:
            self._sem.release()

    def _call(self, fn, *args, **kwargs):
        if self.threads:
            faiss.omp_set_num_threads(self.threads)
        return fn(*args, **kwargs)
