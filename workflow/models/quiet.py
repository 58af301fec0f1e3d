"""TensorFlow without its screen of C++ start-up log lines.

Importing TensorFlow prints, straight to the process's standard error and before any
Python logging is involved, lines from its C++ side (absl's "All log messages before
absl::InitializeLog()", oneDNN, CUDA stubs, CPU-feature advice), twice over on some
builds, and more when it first looks for devices ("failed call to cuInit" on a machine
without a GPU). `TF_CPP_MIN_LOG_LEVEL` no longer reaches those that come before absl starts.
`import_tensorflow` therefore imports it with file descriptor 2 sent to a temporary
file, then writes back every line that is not one of those log lines (a Python warning
or anything else printed meanwhile is not lost), and everything when the import fails or
when the workflow logs at DEBUG (`--log-level DEBUG`).
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import tempfile

logger = logging.getLogger(__name__)

NOISE = re.compile(
    r"^(WARNING: All log messages before absl::InitializeLog\(\) is called"
    r"|[IWE]\d{4} [\d:.]+\s+\d+ \S+:\d+\]"  # absl/glog lines: I, W or E, date, thread, file
    r"|INFO: Created TensorFlow Lite XNNPACK delegate for CPU\.$"
    r"|To enable the following instructions: .*rebuild TensorFlow"
    r"|.*rebuild TensorFlow with the appropriate compiler flags)")


def import_tensorflow():
    """The `tensorflow` module, imported quietly the first time (see the module doc)."""
    if "tensorflow" in sys.modules:
        return sys.modules["tensorflow"]
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # C++ INFO and WARNING after start
    with native_stderr_filtered(show_all=logger.isEnabledFor(logging.DEBUG)):
        import tensorflow as tf
        tf.config.list_physical_devices()  # the devices' start-up lines (a CPU-only
        # machine's "failed call to cuInit") come here, once, rather than at first use
    return tf


@contextlib.contextmanager
def native_stderr_filtered(show_all: bool = False):
    """Run the block with file descriptor 2 captured; then write back what it printed,
    without TensorFlow's C++ log lines unless `show_all` or the block raised."""
    sys.stderr.flush()
    saved = os.dup(2)
    failed = True
    with tempfile.TemporaryFile(mode="w+b") as capture:
        try:
            os.dup2(capture.fileno(), 2)
            yield
            failed = False
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            text = capture.read().decode("utf-8", "replace")
            keep = text.splitlines(keepends=True) if show_all or failed else [
                line for line in text.splitlines(keepends=True) if not NOISE.match(line)]
            if keep:
                sys.stderr.write("".join(keep))
                sys.stderr.flush()
