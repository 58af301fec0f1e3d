#!/usr/bin/env python
"""Index types at 2M x 1280: today's `IVF4096,PQ64` against 4-bit fast-scan PQ
(`IVF4096,PQ128x4fs`, the same 64 bytes a vector) and RaBitQ (`IVF4096,RaBitQ`, one bit a
dimension), each with the exact re-rank from the float16 store and as the IVF part of
`hierarchical`.

The base is a finished store of bench/bench_index.py (its index is the `IVF4096,PQ64`
row). Every other index type gets a hard-linked copy of it (files are replaced, never
written in place, so the base is safe) whose train, add, prefilter and evaluate stages
are reset; then train (`--index-factory`), add and prefilter run in child processes,
timed, and the evaluate stage tunes `ivfpq+rerank` and `hierarchical` for recall@10
0.99 (`--target-recall`); each row gives their p50 and p99 latency at that recall, the
index file's size, train + add, and the peak RSS of each stage's process (os.wait4).
The base can be any finished store: a type naming the base's own factory measures the
base's index type with its train and add timed too.

    python bench/bench_index_types.py --base bench/out/index/store [--types PQ128x4fs RaBitQ]
        (a type with "IVF" in it is a whole factory string: PCAR512,IVF4096,RaBitQ)
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

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from workflow.utils import cpu_name  # noqa: E402

PEAK_MB: dict[tuple[str, str], float] = {}  # (store, stage) -> the child's peak RSS


def stage(store: Path, name: str, *extra: str) -> float:
    """Wall seconds of a stage in a child process; its peak RSS goes to PEAK_MB."""
    t = time.perf_counter()
    p = subprocess.Popen([sys.executable, "-m", "workflow", name, "--store", str(store),
                          "--no-progress", *extra], cwd=REPO, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE)
    err = p.stderr.read()
    _, status, usage = os.wait4(p.pid, 0)
    seconds = time.perf_counter() - t
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{name} on {store} failed:\n{err.decode()[-3000:]}")
    PEAK_MB[(str(store), name)] = usage.ru_maxrss / 1024
    return seconds


def evaluate(store: Path, target: str) -> dict:
    stage(store, "evaluate", "--remeasure", "--target-recall", target, "--modes",
          "ivfpq+rerank", "hierarchical")
    rep = json.loads((store / "evaluation" / "report.json").read_text())
    return {m: {k: t[k] for k in ("params", "recall@10", "p50_ms", "p99_ms", "target_met")}
            for m, t in rep["tuned"].items()}


def row(store: Path, factory: str, seconds: dict, target: str) -> dict:
    tuned = evaluate(store, target)
    return {"factory": factory, "seconds": seconds, "tuned": tuned,
            "index_mb": (store / "index" / "index.faiss").stat().st_size / 2**20,
            "peak_mb": {n: PEAK_MB.get((str(store), n)) for n in ("train", "add", "evaluate")}}


def interleaved(stores: list[tuple[str, Path]], n: int, rounds: int) -> dict:
    """Single-query latency (k=10) of each store in both modes at its tuned settings (the
    evaluation's search defaults), the same corpus queries (own id left out), the stores
    taking turns query by query, their order swapped every round: (factory, mode) -> ms."""
    import numpy as np

    from workflow.search import measure as meter
    from workflow.search.searcher import Searcher
    searchers = [(name, Searcher(str(p), cache_size=0)) for name, p in stores]
    qids = meter.sample_query_ids(searchers[0][1].xb, n, seed=7)
    xq = np.asarray(searchers[0][1].xb[qids], np.float32)
    lat = {(name, m): [] for name, _ in searchers for m in MODES}
    for _, s in searchers:  # warm: the index, the re-rank store and Annoy in memory
        for m in MODES:
            s.search_vectors(xq, 10, m, exclude=qids)
    per = max(1, n // rounds)
    for r in range(rounds):
        order = searchers if r % 2 == 0 else searchers[::-1]
        for i in range(r * per, min(n, (r + 1) * per)):
            for name, s in order:
                for m in MODES:
                    t = time.perf_counter()
                    s.search_vectors(xq[i:i + 1], 10, m, exclude=qids[i:i + 1])
                    lat[(name, m)].append(time.perf_counter() - t)
    return {k: {"p50": float(np.percentile(v, 50)) * 1e3, "p99": float(np.percentile(v, 99))
                * 1e3, "queries": len(v)} for k, v in lat.items()}


MODES = ("ivfpq+rerank", "hierarchical")


def print_interleaved(stores: list[tuple[str, Path]], n: int, rounds: int) -> dict:
    res = interleaved(stores, n, rounds)
    first = stores[0][0]
    print(f"\nSide by side: {n} single queries at each index's tuned settings, the indexes "
          f"taking turns query by query ({rounds} rounds, order swapped each round)\n")
    print("| index | mode | p50 ms | p99 ms | p50 vs the first |")
    print("|---|---|---:|---:|---:|")
    for (name, m), v in res.items():
        print(f"| {name} | {m} | {v['p50']:.2f} | {v['p99']:.2f} | "
              f"{v['p50'] / res[(first, m)]['p50']:.2f}x |")
    return {f"{k[0]} {k[1]}": v for k, v in res.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", type=Path, required=True)
    ap.add_argument("--types", nargs="*", default=["PQ128x4fs", "RaBitQ"])
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "out" / "index-types")
    ap.add_argument("--target-recall", default="0.99")
    ap.add_argument("--interleave", type=int, default=500, metavar="N",
                    help="then N single queries per index and mode, the indexes taking "
                    "turns (0: none)")
    ap.add_argument("--interleave-only", action="store_true",
                    help="only the side-by-side latency, on the stores a run left in --out")
    a = ap.parse_args()
    if a.interleave_only:
        stores = [(json.loads((p / "_done" / "train" / "index.json").read_text())["factory"],
                   p) for p in [a.base] + [a.out / k for k in a.types]]
        print_interleaved(stores, a.interleave, 5)
        return
    base_factory = json.loads((a.base / "_done" / "train" / "index.json").read_text()
                              )["factory"]
    nlist = base_factory.split(",")[0]
    rows = [row(a.base, base_factory, {}, a.target_recall)]
    for kind in a.types:
        store = a.out / kind
        shutil.rmtree(store, ignore_errors=True)
        store.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["cp", "-al", str(a.base), str(store)], check=True)
        for name in ("train", "add", "prefilter", "evaluate"):
            subprocess.run([sys.executable, "-m", "workflow", "reset", name, "--store",
                            str(store), "--yes"], cwd=REPO, check=True, capture_output=True)
        factory = kind if "IVF" in kind else f"{nlist},{kind}"  # a whole factory, or a code
        seconds = {"train": stage(store, "train", "--index-factory", factory),
                   "add": stage(store, "add"), "prefilter": stage(store, "prefilter")}
        rows.append(row(store, factory, seconds, a.target_recall))
    print(f"\n{dt.date.today().isoformat()} | {cpu_name()}, {os.cpu_count()} cores, Python "
          f"{platform.python_version()} | python bench/bench_index_types.py "
          f"{' '.join(sys.argv[1:])}\n")
    t = a.target_recall
    print(f"| index | index file | train s | add s | peak RSS train / add / evaluate MB | "
          f"ivfpq+rerank at {t}: setting, p50 / p99 ms "
          f"| hierarchical at {t}: setting, p50 / p99 ms |")
    print("|---|---:|---:|---:|---:|---|---|")
    for r in rows:
        cells = []
        for mode in ("ivfpq+rerank", "hierarchical"):
            t = r["tuned"][mode]
            params = ", ".join(f"{k}={v}" for k, v in t["params"].items())
            flag = "" if t["target_met"] else f" (not reached: {t['recall@10']:.3f})"
            cells.append(f"{params}{flag}, {t['p50_ms']:.2f} / {t['p99_ms']:.2f}")
        s = r["seconds"]
        peak = " / ".join("-" if v is None else f"{v:,.0f}" for v in r["peak_mb"].values())
        print(f"| {r['factory']} | {r['index_mb']:.0f} MB | {s.get('train', 0):.0f} | "
              f"{s.get('add', 0):.0f} | {peak} | {cells[0]} | {cells[1]} |")
    side = {}
    if a.interleave:
        stores = [(r["factory"], p) for r, p in zip(rows, [a.base] + [a.out / k for k in
                                                                    a.types])]
        side = print_interleaved(stores, a.interleave, 5)
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "index_types.json").write_text(json.dumps({"rows": rows, "interleaved": side},
                                                        indent=1))


if __name__ == "__main__":
    main()
