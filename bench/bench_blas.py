#!/usr/bin/env python
"""Faiss's matrix kernels: the OpenBLAS kernel the workflow chooses for the CPU
(`workflow.execution.blas`) against the one the faiss-cpu wheel's OpenBLAS picks by
itself, side by side in one run.

Each measurement runs in a fresh child process, because OpenBLAS reads its kernel once,
when it is loaded: "shipped" imports the package with `WORKFLOW_BLAS=shipped` and no
`OPENBLAS_CORETYPE` (what a user gets from the wheel alone), "chosen" imports it as
every stage does. The two alternate, `--repeat` times each. Measured in each child:
k-means of 60,000 x 1280 random vectors into 1,024 centroids (10 iterations, as the
train stage runs it: Faiss's BLAS-based assignment), and `faiss.knn` of 2,000 queries
against 60,000 (the exact search and ground-truth kernel); the centroids' and the
neighbours' hashes show whether both kernels computed the same thing.

    python bench/bench_blas.py [--repeat 2] [--n 60000] [--threads 2] [--also Haswell]
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from workflow.utils import cpu_name  # noqa: E402

CHILD = r"""
import hashlib, json, sys, time
import numpy as np
import workflow, faiss, threadpoolctl
from workflow.execution import blas
n, d, k, threads = (int(v) for v in sys.argv[1:5])
faiss.omp_set_num_threads(threads)
rng = np.random.default_rng(0)
x = rng.standard_normal((n, d), dtype=np.float32)
arch = [i.get("architecture") for i in threadpoolctl.threadpool_info()
        if i.get("internal_api") == "openblas" and "faiss" in i["filepath"]]
t = time.perf_counter()
km = faiss.Kmeans(d, k, niter=10, seed=1234, max_points_per_centroid=10**6)
km.train(x)
kmeans = time.perf_counter() - t
q = x[:2000] + 0.1 * rng.standard_normal((2000, d), dtype=np.float32)
t = time.perf_counter()
dist, ids = faiss.knn(q, x, 10)
knn = time.perf_counter() - t
print(json.dumps({"kernel": arch[0] if arch else None, "state": blas.state,
                  "kmeans_s": kmeans, "knn_s": knn,
                  "centroids": hashlib.sha256(km.centroids.tobytes()).hexdigest()[:12],
                  "neighbours": hashlib.sha256(ids.tobytes()).hexdigest()[:12]}))
"""


def child(variant: str, a: argparse.Namespace) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_CORETYPE",
                                                              "WORKFLOW_BLAS")}
    if variant == "shipped":
        env["WORKFLOW_BLAS"] = "shipped"
    elif variant != "chosen":  # a kernel named with --also
        env["OPENBLAS_CORETYPE"] = variant
    out = subprocess.run([sys.executable, "-c", CHILD, str(a.n), "1280", "1024",
                          str(a.threads)], cwd=REPO, env=env, check=True,
                         capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--n", type=int, default=60000)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--also", nargs="*", default=[], metavar="KERNEL",
                    help="other OpenBLAS kernels to time beside them (e.g. Haswell)")
    a = ap.parse_args()
    runs: dict[str, list[dict]] = {"shipped": [], "chosen": [], **{k: [] for k in a.also}}
    for _ in range(a.repeat):
        for variant in runs:
            runs[variant].append(child(variant, a))
    print(f"\n{dt.date.today().isoformat()} | {cpu_name()}, {os.cpu_count()} cores, Python "
          f"{platform.python_version()} | python bench/bench_blas.py {' '.join(sys.argv[1:])}\n")
    print(f"k-means of {a.n:,} x 1280 into 1,024 (10 iterations); knn of 2,000 x {a.n:,}; "
          f"{a.threads} threads; median of {a.repeat} runs each, alternating\n")
    print("| kernel | chosen by | k-means s | knn s | centroids | neighbours |")
    print("|---|---|---:|---:|---|---|")
    med = {}
    for variant, rs in runs.items():
        med[variant] = (statistics.median(r["kmeans_s"] for r in rs),
                        statistics.median(r["knn_s"] for r in rs))
        r = rs[0]
        who = {"shipped": "OpenBLAS 0.3.15 itself", "chosen": "the workflow"}.get(
            variant, "OPENBLAS_CORETYPE")
        print(f"| {r['kernel']} | {who} | {med[variant][0]:.1f} | {med[variant][1]:.2f} | "
              f"{r['centroids']} | {r['neighbours']} |")
    print(f"\nspeed-up: k-means {med['shipped'][0] / med['chosen'][0]:.1f}x, "
          f"knn {med['shipped'][1] / med['chosen'][1]:.1f}x")
    same = {v: len({(r["centroids"], r["neighbours"]) for r in rs}) for v, rs in runs.items()}
    print(f"distinct results per variant: {same}")


if __name__ == "__main__":
    main()
