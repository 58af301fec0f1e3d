#!/usr/bin/env python
"""Index benchmark at scale: train + add (+ merge) and prefilter on N synthetic vectors.

Writes N structured synthetic vectors of dimension d (clusters in a 16-dimensional
subspace plus noise, L2-normalised; iid Gaussian vectors would make IVF-PQ look broken)
as float16 feature shards of `--shard-size` into a fresh store, as the extract stage
would. The preprocess and extract stages are stood in for: their markers are committed
with placeholder image shards (and a plan whose keys are `synthetic/NNNNNNN`), since
only the feature shards matter here. Then it runs
the train, add and prefilter stages in child processes, one at a time, and reports each
stage's wall time and peak RSS (of the child process, from `os.wait4`), plus a
recall@10 check of the filled index against exact search on 200 queries.

Goals on a 2-core machine at 2M x 1280: train + add + merge under 10 minutes, the
prefilter build under 10 minutes, every stage under 8 GB of memory.

    python bench/bench_index.py [--n 2000000] [--d 1280] [--out bench/out/index]
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from workflow.formats.features import write_feature_shard  # noqa: E402
from workflow.formats.images import ImageShardWriter  # noqa: E402
from workflow.formats.layout import shard_name  # noqa: E402
from workflow.formats.plan import Plan, shard_bounds  # noqa: E402
from workflow.storage.store import Store  # noqa: E402
from workflow.utils import cpu_name  # noqa: E402


def vectors(lo: int, hi: int, d: int, seed: int, basis: np.ndarray, centers: np.ndarray):
    """Rows lo..hi of the synthetic corpus (deterministic per block)."""
    rng = np.random.default_rng([seed, lo])
    n = hi - lo
    x = centers[rng.integers(0, len(centers), n)] + rng.normal(size=(n, 16)).astype(np.float32)
    x = x @ basis + 0.35 * rng.normal(size=(n, d)).astype(np.float32)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float16)


def write_store(root: Path, n: int, d: int, shard_size: int, seed: int) -> Store:
    store = Store(root)
    rng = np.random.default_rng(seed)
    basis = rng.normal(size=(16, d)).astype(np.float32) / 4
    centers = rng.normal(size=(1000, 16)).astype(np.float32) * 2
    pre = store.freeze_stage("preprocess", {"synthetic": True, "n": n, "seed": seed})
    ext = store.freeze_stage("extract", {"synthetic": True, "dim": d}, pre)
    bounds = shard_bounds(n, shard_size)
    work = store.scratch / "bench"
    work.mkdir(parents=True, exist_ok=True)
    placeholder = work / "placeholder.h5"
    ImageShardWriter(str(placeholder), [], [], {"fingerprint": pre}).close()
    plan = work / "plan.h5"
    Plan([], [f"synthetic/{i:07d}" for i in range(n)], np.zeros(n, np.int16), [""] * n,
         np.zeros(n, np.int64), np.zeros(n, np.int64), bounds).save(str(plan))
    store.commit(plan, "images/plan.h5", "preprocess", "plan", pre,
                 {"n": n, "shards": len(bounds) - 1})
    for i in range(len(bounds) - 1):
        unit, lo, hi = shard_name(i), int(bounds[i]), int(bounds[i + 1])
        store.commit(placeholder, f"images/{unit}.h5", "preprocess", unit, pre,
                     {"stats": {"n": hi - lo, "ok": hi - lo, "failed": {}}})
        path = work / f"{unit}.h5"
        write_feature_shard(str(path), np.arange(lo, hi), vectors(lo, hi, d, seed, basis,
                                                                    centers), ext,
                            {"model": "synthetic"})
        store.commit(path, f"features/{unit}.h5", "extract", unit, ext,
                     {"n": hi - lo, "dim": d})
        path.unlink()
    store.commit(placeholder, "images/report.json", "preprocess", "report", pre,
                 {"duplicates": 0})
    return store


def run_stage(name: str, store: Path, extra: list[str]) -> dict:
    """Run one stage in a child process; its own peak RSS comes from wait4."""
    log = store.parent / f"{name}.log"
    t = time.perf_counter()
    with open(log, "w") as err, open(store.parent / f"{name}.out", "w") as out:
        p = subprocess.Popen([sys.executable, "-m", "workflow", name, "--store", str(store),
                              "--no-progress", *extra], cwd=REPO, stdout=out, stderr=err)
        _, status, usage = os.wait4(p.pid, 0)
    seconds = time.perf_counter() - t
    p.returncode = os.waitstatus_to_exitcode(status)
    stderr = log.read_text()
    if p.returncode != 0:
        raise SystemExit(f"{name} failed:\n{stderr[-3000:]}")
    print((store.parent / f"{name}.out").read_text().strip(), flush=True)
    return {"stage": name, "seconds": seconds, "peak_rss_gb": usage.ru_maxrss / 2**20,
            "log": [ln for ln in stderr.splitlines() if " took " in ln or "train:" in ln]}


def recall_check(store: Store, n: int, d: int, seed: int, nq: int = 200) -> dict:
    """recall@10 of IVF-PQ (+ exact re-rank of its top 100) against exact search."""
    import faiss

    from workflow.formats.index import load_index, load_rerank
    index, xb = load_index(store), load_rerank(store)
    rng = np.random.default_rng(seed + 1)
    qids = np.sort(rng.choice(n, nq, replace=False))
    xq = np.asarray(xb[qids], np.float32)
    gt = np.empty((nq, 10), np.int64)
    best = np.full((nq, 10), -np.inf, np.float32)
    for lo in range(0, n, 200_000):
        s = xq @ np.asarray(xb[lo:lo + 200_000], np.float32).T
        top = np.argpartition(-s, 10, axis=1)[:, :10]
        cand = np.concatenate([best, np.take_along_axis(s, top, 1)], 1)
        ids = np.concatenate([gt, top + lo], 1)
        keep = np.argsort(-cand, axis=1)[:, :10]
        best, gt = np.take_along_axis(cand, keep, 1), np.take_along_axis(ids, keep, 1)
    out = {}
    for nprobe in (16, 64):
        faiss.extract_index_ivf(index).nprobe = nprobe
        _, I = index.search(xq, 100)
        out[f"ivfpq nprobe={nprobe}"] = float(np.mean(
            [len(set(I[i, :10]) & set(gt[i])) / 10 for i in range(nq)]))
        rr = []
        for i in range(nq):
            c = I[i][I[i] >= 0]
            sc = np.asarray(xb[np.sort(c)], np.float32) @ xq[i]
            top = np.sort(c)[np.argsort(-sc)[:10]]
            rr.append(len(set(top) & set(gt[i])) / 10)
        out[f"ivfpq nprobe={nprobe} + re-rank top 100"] = float(np.mean(rr))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=2_000_000)
    ap.add_argument("--d", type=int, default=1280)
    ap.add_argument("--shard-size", type=int, default=10_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "out" / "index")
    a = ap.parse_args()
    shutil.rmtree(a.out, ignore_errors=True)
    t = time.perf_counter()
    store = write_store(a.out / "store", a.n, a.d, a.shard_size, a.seed)
    print(f"wrote {a.n:,} x {a.d} synthetic features in {time.perf_counter() - t:.0f} s",
          flush=True)
    rows = [run_stage("train", a.out / "store", []), run_stage("add", a.out / "store", []),
            run_stage("prefilter", a.out / "store", [])]
    recall = recall_check(store, a.n, a.d, a.seed)
    cpu = cpu_name()
    report = {"date": dt.date.today().isoformat(),
              "machine": f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}",
              "command": "python bench/bench_index.py " + " ".join(sys.argv[1:]),
              "n": a.n, "d": a.d, "stages": rows, "recall@10": recall}
    (a.out / "index.json").write_text(json.dumps(report, indent=1))
    print(f"\n{report['date']} | {report['machine']} | {report['command']}\n")
    print("| stage | wall time | peak RSS |\n|---|---:|---:|")
    for r in rows:
        print(f"| {r['stage']} | {r['seconds']:.0f} s | {r['peak_rss_gb']:.2f} GB |")
    print("\nrecall@10 against exact search (200 queries from the corpus):")
    for k, v in recall.items():
        print(f"- {k}: {v:.3f}")
    for r in rows:
        for ln in r["log"]:
            print(f"  {r['stage']}: {ln}")


if __name__ == "__main__":
    main()
