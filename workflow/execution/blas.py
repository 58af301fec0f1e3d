"""Faiss's matrix products at full speed on any x86-64 CPU.

The `faiss-cpu` wheel bundles its own OpenBLAS (0.3.15 in Faiss 1.8-1.15), which picks
its kernels by CPU model when it is loaded. It does not know CPUs newer than itself
(recent Intel Xeons among them) and falls back to its generic "Prescott" kernel, 5-6
times slower at the products k-means, adding, exact search and the evaluation's ground
truth are made of. OpenBLAS takes the kernel from `OPENBLAS_CORETYPE` instead when that
is set before it loads; so, before Faiss is imported anywhere (`workflow/__init__.py`
calls `configure()`, in every entry point and in every worker process and Spark
executor, which import the package first), the kernel is chosen from the instruction
sets the CPU reports (AVX-512: SkylakeX, AVX2 with FMA: Haswell, AVX: Sandybridge).

A kernel is used only once a child process has loaded Faiss with it and computed a
small product equal to NumPy's (`verify`, once per CPU, kernel and Faiss version, the
answer cached in `~/.cache/image-index-workflow/blas.json`). A user's own
`OPENBLAS_CORETYPE` is left alone, as is everything when Faiss is already loaded or the
CPU is not x86-64; `WORKFLOW_BLAS=shipped` turns the choice off.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

from ..utils import user_cache_dir

KERNELS = (  # (OpenBLAS core type, the CPU flags its kernels need), best first
    ("SkylakeX", frozenset({"avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl"})),
    ("Haswell", frozenset({"avx2", "fma"})),
    ("Sandybridge", frozenset({"avx"})),
)
GENERIC = frozenset({"prescott", "katmai", "coppermine", "northwood", "banias", "core2",
                     "penryn", "dunnington", "atom", "nehalem", "generic"})
CHECK = """
import numpy as np, faiss
rng = np.random.default_rng(0)
xq = rng.standard_normal((64, 96), dtype=np.float32)
xb = rng.standard_normal((500, 96), dtype=np.float32)
d, i = faiss.knn(xq, xb, 5, metric=faiss.METRIC_INNER_PRODUCT)
want = np.sort(xq @ xb.T, axis=1)[:, ::-1][:, :5]
print("same" if np.allclose(d, want, rtol=1e-4, atol=1e-3) else "different")
"""

state: dict = {"kernel": None, "why": "not configured"}


def cpu_flags() -> tuple[str, frozenset]:
    """(the CPU's model name, its instruction-set flags), from /proc/cpuinfo; empty where
    that cannot be read (not Linux)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "", frozenset()
    model, flags = "", frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and not model:
            model = value.strip()
        elif key.strip() == "flags" and not flags:
            flags = frozenset(value.split())
    return model, flags


def choose(flags: frozenset) -> str | None:
    """The fastest OpenBLAS kernel these CPU flags run, or None."""
    return next((name for name, need in KERNELS if need <= flags), None)


def configure() -> None:
    """Set OPENBLAS_CORETYPE for the Faiss about to be loaded; records what was done and
    why in `state` (logged by the command line)."""
    if os.environ.get("OPENBLAS_CORETYPE"):
        state.update(kernel=os.environ["OPENBLAS_CORETYPE"], why="OPENBLAS_CORETYPE as set")
        return
    if os.environ.get("WORKFLOW_BLAS") == "shipped":
        state.update(kernel=None, why="WORKFLOW_BLAS=shipped: OpenBLAS's own choice")
        return
    if "faiss" in sys.modules or platform.machine().lower() not in ("x86_64", "amd64"):
        state.update(kernel=None, why="Faiss already loaded or not an x86-64 CPU")
        return
    model, flags = cpu_flags()
    kernel = choose(flags)
    if kernel is None:
        state.update(kernel=None, why="no AVX: OpenBLAS's own choice")
    elif verified(kernel, model, flags):
        os.environ["OPENBLAS_CORETYPE"] = kernel
        state.update(kernel=kernel, why=f"chosen for {model or 'this CPU'}")
    else:
        state.update(kernel=None, why=f"the {kernel} kernel did not compute NumPy's result "
                                      "here: OpenBLAS's own choice")


def verified(kernel: str, model: str, flags: frozenset) -> bool:
    """Whether Faiss computes NumPy's product with this kernel: asked once of a child
    process, then cached by CPU, kernel and Faiss version."""
    try:
        from importlib.metadata import version
        faiss_version = version("faiss-cpu")
    except Exception:  # a Faiss built from source, or the GPU wheel: ask every time
        faiss_version = "unknown"
    key = hashlib.sha256(json.dumps([model, sorted(flags), kernel, faiss_version])
                         .encode()).hexdigest()[:16]
    cache = user_cache_dir() / "blas.json"
    known = _read(cache)
    if key in known:
        return known[key]
    env = {**os.environ, "OPENBLAS_CORETYPE": kernel, "OMP_NUM_THREADS": "1"}
    try:
        out = subprocess.run([sys.executable, "-c", CHECK], env=env, capture_output=True,
                             text=True, timeout=120).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return False
    ok = out.endswith("same")
    if out.endswith(("same", "different")):  # a definite answer: remembered
        _write(cache, {**known, key: ok})
    return ok


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _write(path: Path, data: dict) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only home: asked again next time
