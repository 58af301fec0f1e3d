"""Small helpers shared by the stages: timing, hashing, retries."""
from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

logger = logging.getLogger(__name__)
T = TypeVar("T")

# OSErrors that retrying cannot fix: the path is wrong, not the connection.
PERMANENT_OS_ERRORS = (FileNotFoundError, FileExistsError, IsADirectoryError,
                       NotADirectoryError, PermissionError)


class Timeit(contextlib.ContextDecorator):
    """`with Timeit("add shard 3"):` logs the elapsed time; `.seconds` keeps it."""

    def __init__(self, what: str, level: int = logging.DEBUG):
        self.what, self.level, self.seconds = what, level, 0.0

    def __enter__(self) -> Timeit:
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = time.perf_counter() - self._t0
        logger.log(self.level, "%s took %.2f s", self.what, self.seconds)


def sha256_file(path: str, bufsize: int = 1 << 20) -> tuple[int, str]:
    """(size, sha256 hex) of a local file."""
    h, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while chunk := f.read(bufsize):
            h.update(chunk)
            size += len(chunk)
    return size, h.hexdigest()


# botocore's network errors (s3fs raises them as they are once its own retries are spent)
# are not OSErrors; recognised by name, so that botocore is not imported to check
BOTOCORE_NETWORK_ERRORS = {"ConnectionError", "HTTPClientError"}


def is_transient(exc: BaseException) -> bool:
    """True for I/O errors that may go away on retry (a dropped mount, a timeout, an
    object store out of reach)."""
    if isinstance(exc, PERMANENT_OS_ERRORS):
        return False
    if isinstance(exc, (OSError, TimeoutError, ConnectionError)):
        return True
    return any(c.__module__.startswith("botocore") and c.__name__ in BOTOCORE_NETWORK_ERRORS
               for c in type(exc).__mro__)


def retry_io(fn: Callable[[], T], what: str, attempts: int = 6, base_delay: float = 0.5,
             max_delay: float = 30.0, sleep: Callable[[float], None] = time.sleep) -> T:
    """Call fn(), retrying transient I/O errors with exponential backoff.

    Each retry is logged as a warning; after `attempts` failures the last error is raised.
    """
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except Exception as e:  # noqa: BLE001 - filtered by is_transient
            if not is_transient(e) or attempt == attempts:
                raise
            delay = min(max_delay, base_delay * 2 ** (attempt - 1))
            logger.warning("%s failed (%s: %s); retry %d/%d in %.1f s",
                           what, type(e).__name__, e, attempt, attempts - 1, delay)
            sleep(delay)
    raise AssertionError("unreachable")


def cpu_threads() -> int:
    """Threads a CPU runtime may infer with: $WORKFLOW_CPU_THREADS where set (a container
    whose CPU limit is below the machine's cores; a Spark task sets its own CPUs), else
    the CPUs this process may run on."""
    given = os.environ.get("WORKFLOW_CPU_THREADS", "").strip()
    if given.isdigit() and int(given) > 0:
        return int(given)
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def user_cache_dir() -> Path:
    """The workflow's per-user cache (`$XDG_CACHE_HOME` or `~/.cache`, then
    `image-index-workflow`): what is worked out once per machine, not per store."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") \
        / "image-index-workflow"


def cpu_name() -> str:
    """The CPU model (from /proc/cpuinfo where there is one), for reports."""
    import platform
    try:
        with open("/proc/cpuinfo") as f:
            return next((ln.split(":", 1)[1].strip() for ln in f
                         if ln.startswith("model name")), platform.processor())
    except OSError:
        return platform.processor()


def parse_size(text: str) -> int:
    """'8G', '512M', '1.5GB', '1000' -> bytes."""
    s = text.strip().upper().removesuffix("B").removesuffix("I")
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    mult = units.get(s[-1:], 1)
    try:
        return int(float(s[:-1] if s[-1:] in units else s) * mult)
    except ValueError:
        raise ValueError(f"cannot read {text!r} as a size; use e.g. 512M or 8G") from None
