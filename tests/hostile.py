"""Per-image jobs that misbehave on purpose, for the supervised pool tests.

They live in their own module so that spawned worker processes can import them.
"""
import os
import time

from workflow.preprocess import ImageWorker


def square(x):
    """Returns x*x; hangs on 'hang', kills its own process on 'crash'."""
    if x == "hang":
        time.sleep(3600)
    if x == "crash":
        os._exit(11)
    return x * x


class HostileImageWorker(ImageWorker):
    """The real per-image job, except for files whose bytes start with HANG or CRASH."""

    def __call__(self, chunk):
        for data, _ in chunk:
            if (data or b"").startswith(b"HANG"):
                time.sleep(3600)
            if (data or b"").startswith(b"CRASH"):
                os.abort()
        return super().__call__(chunk)


def always_crash(x):
    os._exit(3)


class BrokenEnvironmentWorker(ImageWorker):
    """Dies on every image, as workers do when their environment is broken."""

    def __call__(self, chunk):
        os._exit(9)


def squares(xs):
    """A chunk job: [x] -> [x*x]; hangs or dies on 'hang' / 'crash' anywhere in the chunk."""
    return [square(x) for x in xs]


class KillsItsTaskOnce(ImageWorker):
    """The real per-image job, but the first call anywhere (marked by a flag file) kills
    the process that started this worker: under the spark executor, the Python worker
    running the shard's task, so that Spark must retry the task."""

    def __init__(self, opts, flag: str):
        super().__init__(opts)
        self.flag = flag

    def __call__(self, chunk):
        try:
            fd = os.open(self.flag, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return super().__call__(chunk)
        os.close(fd)
        os.kill(os.getppid(), 9)
        time.sleep(3600)
