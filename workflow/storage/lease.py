"""A per-stage lease in the store, so that two runs never write the same stage at once."""
from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid

from ..errors import LeaseError
from .store import Store

logger = logging.getLogger(__name__)

LEASE_DIR = "_leases"
HEARTBEAT_SECONDS = 30.0  # how often a holder refreshes its lease


def proc_stat(pid: int) -> tuple[str, int] | None:
    """(state, start time in clock ticks since boot) of process `pid`, from fields 3 and 22
    of /proc/<pid>/stat; None where that cannot be read (no /proc, as on macOS)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except (OSError, ValueError):
        return None
    fields = text[text.rindex(")") + 2:].split()  # the name in (...) may hold spaces
    return fields[0], int(fields[19])


def process_start(pid: int) -> int | None:
    """Process `pid`'s start time (to tell it from a later process given the same pid)."""
    stat = proc_stat(pid)
    return None if stat is None else stat[1]


def pid_alive(pid: int, started: int | None = None) -> bool:
    """Whether process `pid` of this host runs: a zombie (killed, not yet reaped) or dead
    one does not, nor, where `started` is given, a later process that reuses the pid."""
    stat = proc_stat(pid)
    if stat is not None:
        state, start = stat
        return state not in ("Z", "X") and (started is None or start == started)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Lease:
    """`with Lease(store, "preprocess"):` holds the stage until the block ends.

    The holder's heartbeat is refreshed every `heartbeat` seconds by a daemon thread. A
    lease whose heartbeat is older than `stale_after` seconds, or whose holder was a
    process on this host that no longer runs (gone, a zombie, or its pid now another
    process's, told by the start time recorded as "started"), is taken over;
    `takeover=True` takes any lease. A lease held by a live run makes this one wait up to
    `wait` seconds for it, then raise. `check()` raises if another run has taken the
    lease since.
    """

    def __init__(self, store: Store, stage: str, stale_after: float = 300.0,
                 heartbeat: float | None = None, takeover: bool = False, wait: float = 0.0,
                 poll: float = 5.0):
        self.store, self.stage = store, stage
        self.wait, self.poll = wait, poll
        self.rel = f"{LEASE_DIR}/{stage}.json"
        self.stale_after, self.takeover = stale_after, takeover
        self.heartbeat = HEARTBEAT_SECONDS if heartbeat is None else heartbeat
        self.holder = uuid.uuid4().hex
        self.host, self.pid = socket.gethostname(), os.getpid()
        self.started = process_start(self.pid)
        self._stop = threading.Event()
        self._lost: str | None = None
        self._thread: threading.Thread | None = None

    def _record(self) -> dict:
        return {"holder": self.holder, "host": self.host, "pid": self.pid,
                "started": self.started, "stage": self.stage, "heartbeat": time.time()}

    def describe(self, other: dict) -> str:
        age = time.time() - float(other.get("heartbeat", 0))
        return (f"host {other.get('host')} pid {other.get('pid')}, "
                f"last heartbeat {age:.0f} s ago")

    def _is_stale(self, other: dict) -> bool:
        if time.time() - float(other.get("heartbeat", 0)) > self.stale_after:
            return True
        return other.get("host") == self.host and not pid_alive(int(other.get("pid", -1)),
                                                                other.get("started"))

    def _held_by_another(self) -> dict | None:
        """The other live holder's record, or None if the lease is free or may be taken."""
        other = self.store.read_json(self.rel)
        if not other or other.get("holder") == self.holder:
            return None
        if self.takeover or self._is_stale(other):
            logger.warning("taking over the %s lease from %s", self.stage, self.describe(other))
            return None
        return other

    def acquire(self) -> Lease:
        until = time.monotonic() + self.wait
        while (other := self._held_by_another()) is not None:
            if time.monotonic() >= until:
                raise LeaseError(
                    f"the {self.stage} stage is being run by another process "
                    f"({self.describe(other)}). Wait for it to finish (--wait-minutes M "
                    f"waits for it); if it is dead, re-run after {self.stale_after:.0f} s "
                    f"without a heartbeat, or pass --takeover to take the lease now.")
            logger.info("the %s stage is held by %s; waiting (up to %.0f s more)", self.stage,
                        self.describe(other), until - time.monotonic())
            time.sleep(min(self.poll, max(0.0, until - time.monotonic())))
        try:
            self.store.write_json(self.rel, self._record())
        except FileNotFoundError:  # our temporary file was removed by the run that won
            raise self._lost_race() from None
        time.sleep(0.05)
        now = self.store.read_json(self.rel)
        if not now or now.get("holder") != self.holder:
            raise self._lost_race()
        # temporary lease files of runs killed while writing the lease (a heartbeat)
        self.store.remove_temporary(LEASE_DIR, f"{self.stage}.json")
        self._thread = threading.Thread(target=self._beat, name=f"lease-{self.stage}",
                                        daemon=True)
        self._thread.start()
        return self

    def _lost_race(self) -> LeaseError:
        now = self.store.read_json(self.rel) or {}
        return LeaseError(f"another run took the {self.stage} lease at the same moment "
                          f"({self.describe(now)}); run one at a time")

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat):
            try:
                now = self.store.read_json(self.rel)
                if not now or now.get("holder") != self.holder:
                    self._lost = self.describe(now) if now else "the lease file was removed"
                    return
                self.store.write_json(self.rel, self._record())
            except Exception as e:  # noqa: BLE001 - a missed beat is not fatal
                logger.warning("could not refresh the %s lease: %s", self.stage, e)

    def check(self) -> None:
        """Raise LeaseError if another run has taken this stage over."""
        if self._lost:
            raise LeaseError(f"the {self.stage} lease was taken over by another run "
                             f"({self._lost}); stopping without writing more")

    def release(self) -> None:
        """Stop the heartbeat; remove the lease where it is still ours, and with it the
        temporary lease files of this stage (of a heartbeat cut short, or of runs
        killed while writing the lease since this one took it)."""
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=5)
        try:
            now = self.store.read_json(self.rel)
            if now and now.get("holder") == self.holder:
                self.store.remove(self.rel)
                if not (self._thread and self._thread.is_alive()):
                    self.store.remove_temporary(LEASE_DIR, f"{self.stage}.json")
        except Exception as e:  # noqa: BLE001 - a leftover lease goes stale by itself
            logger.warning("could not release the %s lease: %s", self.stage, e)

    def __enter__(self) -> Lease:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def read_leases(store: Store) -> dict[str, dict]:
    """The current lease records by stage (for `status`)."""
    out = {}
    for name in store.listdir(LEASE_DIR):
        if name.endswith(".json") and ".tmp-" not in name:
            d = store.read_json(f"{LEASE_DIR}/{name}")
            if d:
                out[name[:-5]] = d
    return out
