"""What a Spark executor's Python has: run there before any shard, by the spark executor.

This module imports nothing but the standard library at the top, and the spark executor
sends its functions by value: it runs in an executor whose Python lacks every package of
the workflow, the workflow itself included, and says what is missing instead of failing
on the first import.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import re
import socket
import sys
import time

PACKAGE = "workflow"
VERSION = re.compile(rb"""^__version__\s*=\s*["']([^"']+)["']""", re.M)


def package_version() -> str | None:
    """The `__version__` of the `workflow` package this Python would import, read from
    its `__init__.py` (a folder or a zip) without importing it; None when there is none."""
    try:
        spec = importlib.util.find_spec(PACKAGE)
    except (ImportError, ValueError):
        return None
    if spec is None or spec.origin is None:
        return None
    try:
        text = spec.loader.get_data(spec.origin)
    except OSError:
        return None
    m = VERSION.search(text)
    return m[1].decode() if m else "unknown"


def missing_modules(names: list[str]) -> list[str]:
    """Those of the top-level modules `names` this Python cannot import."""
    out = []
    for name in names:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            out.append(name)
    return out


def import_error(module: str) -> str | None:
    """The name of the module that stops `module` from importing, None when it imports."""
    try:
        importlib.import_module(module)
    except ModuleNotFoundError as e:
        return e.name or str(e)
    except ImportError as e:  # a broken install: a library that does not load
        return f"{module} ({e})"
    return None


def unreachable(paths: list[tuple[str, str]], fs_conf: dict) -> list[tuple[str, str, str]]:
    """(name, url, why) for each of `paths` this executor cannot see, with the driver's
    fsspec configuration (its --storage-options) applied first."""
    try:
        import fsspec
        import fsspec.config
    except ImportError:
        return []  # reported as a missing module
    for proto, options in fs_conf.items():
        fsspec.config.conf.setdefault(proto, {}).update(options)
    out = []
    for name, url in paths:
        try:
            fs, path = fsspec.core.url_to_fs(url)
            if not fs.exists(path):
                out.append((name, url, "not found"))
        except ImportError as e:  # the protocol's library (s3fs, gcsfs) is not installed
            out.append((name, url, f"missing module {e.name or e}"))
        except Exception as e:  # noqa: BLE001 - unreachable for any reason
            out.append((name, url, f"{type(e).__name__}: {e}"[:200]))
    return out


def report(modules: list[str], task_module: str | None, paths: list[tuple[str, str]],
           fs_conf: dict, seconds: float = 0.0, _partition=None) -> list[dict]:
    """One executor's answer: host, working folder (one per executor), Python, the
    package's version, what is missing. It lasts at least `seconds`, so that a round of
    such tasks spreads over every executor."""
    t0 = time.monotonic()
    version = package_version()
    missing = missing_modules(modules)
    if task_module and version is not None and not missing:
        blocker = import_error(task_module)
        if blocker:
            missing.append(blocker)
    unseen = unreachable(paths, fs_conf)
    time.sleep(max(0.0, seconds - (time.monotonic() - t0)))
    return [{"host": socket.gethostname(), "where": os.getcwd(), "python": sys.executable,
             "python_version": ".".join(map(str, sys.version_info[:3])), "workflow": version,
             "missing": missing, "unreachable": unseen}]
