#!/usr/bin/env python
"""Update benchmark: a corpus that grows and shrinks, at scale.

Builds (or reuses) the synthetic store of `bench_index.py` (N x d structured vectors,
stages train, add and prefilter run), measures search, then appends `--new` vectors as
a corpus update would (a new plan segment and its feature shards, as preprocess
--update and extract commit them), and times the stages that follow: train (passed
over, with its fit report), add (new parts, the merged index and the re-rank store
extended) and prefilter (a segment over the new shards), each in a child process. Then
it removes `--remove` random ids with `python -m workflow remove --from-file`, and
measures search again. Search: 200 queries from the corpus, recall@10 of the
hierarchical mode against exact search, and single-query p50 latency, before the update,
after it, and after the removal, side by side in one run.

Goals (2 cores, 2M x 1280, 20,000 new, 10,000 removed): add + prefilter for the update
under 5 minutes; latency and recall within 10% of before; the removal under 10 s with
p50 latency within 10%.

    python bench/bench_update.py [--n 2000000] [--new 20000] [--remove 10000]
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from bench_index import run_stage, vectors, write_store  # noqa: E402

from workflow.formats.features import write_feature_shard  # noqa: E402
from workflow.formats.images import ImageShardWriter  # noqa: E402
from workflow.formats.layout import plan_file, plan_unit, shard_name  # noqa: E402
from workflow.formats.plan import Plan, corpus_version, plan_markers, shard_bounds  # noqa: E402
from workflow.storage.store import Store  # noqa: E402
from workflow.utils import cpu_name  # noqa: E402

PARAMS = {"nprobe": 32, "rerank": 100, "annoy": 100, "search_k": -1}


def generator(d: int, seed: int):
    rng = np.random.default_rng(seed)
    basis = rng.normal(size=(16, d)).astype(np.float32) / 4
    centers = rng.normal(size=(1000, 16)).astype(np.float32) * 2
    return basis, centers


def base_store(out: Path, n: int, d: int, shard_size: int, seed: int) -> Path:
    """The store of bench_index.py, built once and reused (`--rebuild` starts over)."""
    root = out / "store"
    if (out / "base.json").exists():
        print(f"reusing the base store in {root}", flush=True)
        return root
    import shutil
    shutil.rmtree(out, ignore_errors=True)
    t = time.perf_counter()
    write_store(root, n, d, shard_size, seed)
    rows = [run_stage(s, root, []) for s in ("train", "add", "prefilter")]
    (out / "base.json").write_text(json.dumps({"build_s": time.perf_counter() - t,
                                               "stages": rows}, indent=1))
    return root


def append_update(root: Path, new: int, d: int, shard_size: int, seed: int,
                  make=None) -> float:
    """Commit the next corpus version as preprocess --update and extract would: a plan
    segment of `new` items and their feature shards (vectors of ids lo..hi from
    `make(lo, hi)`, default the generator's). Returns the seconds it took."""
    t = time.perf_counter()
    store = Store(root)
    version = corpus_version(store) + 1
    first = sum(int(m.extra["n"]) for m in plan_markers(store))
    shards = sum(int(m.extra["shards"]) for m in plan_markers(store))
    pre = store.run_info()["stages"]["preprocess"]["fingerprint"]
    ext = store.run_info()["stages"]["extract"]["fingerprint"]
    work = store.scratch / "bench-update"
    work.mkdir(parents=True, exist_ok=True)
    bounds = shard_bounds(new, shard_size) + first
    seg = Plan([], [f"synthetic/{i:07d}" for i in range(first, first + new)],
               np.zeros(new, np.int16), [""] * new, np.zeros(new, np.int64),
               np.zeros(new, np.int64), bounds, [], version, first)
    seg.save(str(work / "plan.h5"))
    store.commit(work / "plan.h5", plan_file(version), "preprocess", plan_unit(version), pre,
                 {"n": new, "shards": len(bounds) - 1, "first_id": first, "sources": []})
    placeholder = work / "placeholder.h5"
    ImageShardWriter(str(placeholder), [], [], {"fingerprint": pre}).close()
    basis, centers = generator(d, seed)
    make = make or (lambda lo, hi: vectors(lo, hi, d, seed, basis, centers))
    for k in range(len(bounds) - 1):
        unit, lo, hi = shard_name(shards + k), int(bounds[k]), int(bounds[k + 1])
        store.commit(placeholder, f"images/{unit}.h5", "preprocess", unit, pre,
                     {"stats": {"n": hi - lo, "ok": hi - lo, "failed": {}}})
        path = work / f"{unit}.h5"
        write_feature_shard(str(path), np.arange(lo, hi), make(lo, hi), ext,
                            {"model": "synthetic"})
        store.commit(path, f"features/{unit}.h5", "extract", unit, ext, {"n": hi - lo, "dim": d})
        path.unlink()
    store.commit(placeholder, "images/report.json", "preprocess", "report", pre,
                 {"duplicates": 0, "version": version})
    return time.perf_counter() - t


def measure(root: Path, qids: np.ndarray, reps: int = 200) -> dict:
    """recall@10 (hierarchical, PARAMS) against exact search, and p50 latency."""
    from workflow.search import Searcher
    s = Searcher(str(root), cache_size=0)
    n = len(s.xb)
    xq = np.asarray(s.xb[qids], np.float32)
    _, gt = s.search_vectors(xq, 10, "exact")
    _, got = s.search_vectors(xq, 10, "hierarchical", s.params("hierarchical", **PARAMS))
    recall = float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(got, gt)]))
    p = s.params("hierarchical", **PARAMS)
    times = []
    for i in range(min(reps, len(xq))):
        t = time.perf_counter()
        s.search_vectors(xq[i:i + 1], 10, "hierarchical", p)
        times.append(time.perf_counter() - t)
    return {"n": n, "removed": s.removed_count, "recall@10": recall,
            "p50_ms": 1000 * float(np.median(times)),
            "p95_ms": 1000 * float(np.percentile(times, 95))}


def measure_apart(root: Path, qids: np.ndarray) -> dict:
    """`measure` in a child process, so that this one stays small: a child's peak RSS
    (from wait4) counts the memory of the process that started it."""
    path = root.parent / "qids.npy"
    np.save(path, qids)
    r = subprocess.run([sys.executable, __file__, "--measure", str(root), str(path)],
                       cwd=REPO, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(r.stderr[-3000:])
    return json.loads(r.stdout.strip().splitlines()[-1])


def remove_ids(root: Path, k: int, seed: int, n: int) -> float:
    ids = np.sort(np.random.default_rng(seed + 7).choice(n, k, replace=False))
    f = root.parent / "remove.txt"
    f.write_text("\n".join(map(str, ids.tolist())) + "\n")
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "workflow", "remove", "--store", str(root),
                        "--from-file", str(f)], cwd=REPO, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(r.stderr[-2000:])
    print(r.stdout.strip(), flush=True)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=2_000_000)
    ap.add_argument("--d", type=int, default=1280)
    ap.add_argument("--new", type=int, default=20_000)
    ap.add_argument("--remove", type=int, default=10_000)
    ap.add_argument("--shard-size", type=int, default=10_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "out" / "update")
    ap.add_argument("--measure", nargs=2, metavar=("STORE", "QIDS"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.measure:
        print(json.dumps(measure(Path(a.measure[0]), np.load(a.measure[1]))))
        return
    root = base_store(a.out, a.n, a.d, a.shard_size, a.seed)
    if len(plan_markers(Store(root))) > 1:
        raise SystemExit(f"{root} was updated already: delete {a.out / 'base.json'} to "
                         "build the base store again")
    qids = np.sort(np.random.default_rng(a.seed + 1).choice(a.n, 200, replace=False))
    before = measure_apart(root, qids)
    print("before:", before, flush=True)
    write_s = append_update(root, a.new, a.d, a.shard_size, a.seed)
    rows = [run_stage(s, root, []) for s in ("train", "add", "prefilter")]
    after = measure_apart(root, np.concatenate([qids, a.n + np.arange(0, a.new, a.new // 20)]))
    after_old = measure_apart(root, qids)
    print("after:", after_old, flush=True)
    remove_s = remove_ids(root, a.remove, a.seed, a.n + a.new)
    removed = measure_apart(root, qids)
    print("after removal:", removed, flush=True)
    machine = f"{cpu_name()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    report = {"date": dt.date.today().isoformat(), "machine": machine,
              "command": "python bench/bench_update.py " + " ".join(sys.argv[1:]),
              "n": a.n, "d": a.d, "new": a.new, "params": PARAMS,
              "update_commit_s": write_s, "stages": rows, "remove_s": remove_s,
              "search": {"before": before, "after update (old queries)": after_old,
                         "after update (with new queries)": after,
                         "after removal": removed}}
    (a.out / "update.json").write_text(json.dumps(report, indent=1))
    print(f"\n{report['date']} | {report['machine']} | {report['command']}\n")
    print("| step | wall time | peak RSS |\n|---|---:|---:|")
    for r in rows:
        print(f"| {r['stage']} | {r['seconds']:.0f} s | {r['peak_rss_gb']:.2f} GB |")
    print(f"| add + prefilter | {sum(r['seconds'] for r in rows[1:]):.0f} s | |")
    print(f"| remove {a.remove:,} ids (CLI, incl. start-up) | {remove_s:.1f} s | |")
    print("\n| search (hierarchical, 200 queries) | recall@10 | p50 ms | p95 ms |\n"
          "|---|---:|---:|---:|")
    for k, v in report["search"].items():
        print(f"| {k} | {v['recall@10']:.3f} | {v['p50_ms']:.2f} | {v['p95_ms']:.2f} |")
    for r in rows:
        for ln in r["log"]:
            print(f"  {r['stage']}: {ln}")


if __name__ == "__main__":
    main()
