#!/usr/bin/env python
"""Near-duplicate groups at scale: the duplicates stage on the 2M x 1280 store.

1. A hard-linked copy (`cp -al`: committed files are never rewritten, so the original
   is untouched) of the store `bench_update.py` leaves (`--base`: 2,020,000 vectors,
   10,000 removed).
2. Planted near-copies: a corpus update whose `--planted` vectors are seeded copies of
   random images of the corpus with noise (cosine 0.97-0.995 to their source; one to
   three copies per source), committed as preprocess --update and extract would; then
   the add stage (incremental), in a child process.
3. The duplicates stage in a child process, its peak RSS from wait4, the time split from
   its log (neighbours, loading, pHashes, grouping, outputs). The threshold is given
   (`--threshold`): synthetic features have no model to measure one with.
4. Found: the share of planted (source, copy) pairs that end in one group, and how many
   groups hold no planted image (the synthetic vectors' own close pairs).

Goals (2 cores): the stage in under 45 minutes, peak RSS under 4 GB, the planted groups
found.

    python bench/bench_duplicates.py [--base bench/out/update/store] [--planted 3000]
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
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from bench_index import run_stage  # noqa: E402
from bench_update import append_update  # noqa: E402

from workflow.formats.plan import corpus_version, planned_count  # noqa: E402
from workflow.storage.store import Store  # noqa: E402
from workflow.utils import cpu_name  # noqa: E402


def plant(root: Path, n_sources: int, seed: int) -> dict[int, list[int]]:
    """Commit copies of `n_sources` random corpus images; {source id: copy ids}."""
    from workflow.search import Searcher
    s = Searcher(str(root), cache_size=0)
    xb, (_, removed) = s.xb, s.removals()
    rng = np.random.default_rng(seed)
    first = len(xb)
    pool = np.unique(rng.choice(first, 2 * n_sources, replace=False))
    pool = pool[~removed[pool] & np.any(np.asarray(xb[pool]) != 0, axis=1)]
    sources = np.sort(rng.choice(pool, n_sources, replace=False))
    copies = rng.integers(1, 4, n_sources)
    of = np.repeat(sources, copies)
    target = rng.uniform(0.97, 0.995, len(of))
    x = np.asarray(xb[of], np.float32)
    noise = rng.normal(size=x.shape).astype(np.float32)
    noise -= (noise * x).sum(1, keepdims=True) * x  # orthogonal to the source
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    planted = target[:, None] * x + np.sqrt(1 - target[:, None] ** 2) * noise
    append_update(root, len(of), x.shape[1], 10_000, seed,
                  make=lambda lo, hi: planted[lo - first:hi - first].astype(np.float16))
    store = Store(root)
    report = {"images": planned_count(store), "duplicates": {"drop": False, "count": 0,
                                                             "groups": []}}
    work = store.scratch / "bench-dups"
    work.mkdir(parents=True, exist_ok=True)
    (work / "report.json").write_text(json.dumps(report))
    store.commit(work / "report.json", "images/report.json", "preprocess", "report",
                 store.run_info()["stages"]["preprocess"]["fingerprint"],
                 {"duplicates": 0, "version": corpus_version(store)})
    out: dict[int, list[int]] = {}
    for i, s in enumerate(of.tolist()):
        out.setdefault(s, []).append(first + i)
    return out


def found(root: Path, planted: dict[int, list[int]]) -> dict:
    groups = json.loads((root / "duplicates" / "groups.json").read_text())["groups"]
    group_of = {i: g for g, grp in enumerate(groups) for i in grp["ids"]}
    pairs = [(s, c) for s, cs in planted.items() for c in cs]
    hit = sum(1 for s, c in pairs if s in group_of and group_of.get(c) == group_of[s])
    with_planted = {group_of[i] for i in (*planted, *(c for cs in planted.values() for c in cs))
                    if i in group_of}
    return {"planted_pairs": len(pairs), "found_pairs": hit, "found_share": hit / len(pairs),
            "groups": len(groups), "groups_without_planted": len(groups) - len(with_planted),
            "largest_group": max((len(g["ids"]) for g in groups), default=0)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", type=Path, default=REPO / "bench" / "out" / "update" / "store")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "out" / "dups")
    ap.add_argument("--planted", type=int, default=3000, help="images copied")
    ap.add_argument("--threshold", type=float, default=0.96)
    ap.add_argument("--seed", type=int, default=7)
    a = ap.parse_args()
    shutil.rmtree(a.out, ignore_errors=True)
    a.out.mkdir(parents=True)
    root = a.out / "store"
    subprocess.run(["cp", "-al", str(a.base), str(root)], check=True)
    report = {"date": dt.date.today().isoformat(),
              "machine": f"{cpu_name()}, {os.cpu_count()} cores, Python "
                         f"{platform.python_version()}",
              "command": "python bench/bench_duplicates.py " + " ".join(sys.argv[1:])}
    planted = plant(root, a.planted, a.seed)
    report["add"] = run_stage("add", root, [])
    report["duplicates"] = run_stage("duplicates", root, ["--threshold", str(a.threshold)])
    report["found"] = found(root, planted)
    report["images"] = planned_count(Store(root))
    (a.out / "duplicates.json").write_text(json.dumps(report, indent=1))
    print_report(report)


def print_report(r: dict) -> None:
    d, f = r["duplicates"], r["found"]
    print(f"\n{r['date']} | {r['machine']} | {r['command']}\n")
    print("| measure | value | goal |\n|---|---:|---|")
    print(f"| images | {r['images']:,} | |")
    print(f"| duplicates stage | {d['seconds'] / 60:.1f} min ({r['images'] / d['seconds']:.0f}"
          " images/s) | under 45 min |")
    print(f"| peak RSS | {d['peak_rss_gb']:.2f} GB | under 4 GB |")
    print(f"| planted (source, copy) pairs found | {f['found_pairs']:,} of "
          f"{f['planted_pairs']:,} ({f['found_share']:.1%}) | all |")
    print(f"| groups; without a planted image; largest | {f['groups']:,}; "
          f"{f['groups_without_planted']:,}; {f['largest_group']} | |")
    print("\nTime split (the stage's log):")
    for line in d["log"]:
        print("   ", line.split("INFO", 1)[-1].strip())


if __name__ == "__main__":
    main()
