#!/usr/bin/env python
"""The evaluate stage as it runs now (every setting's recall in batches, single-query
latency only where it decides the tuning) against `--full-sweep` (every setting timed one
query at a time), side by side on the same stores.

For each store: the ground truth is computed once (not timed), then the stage runs in a
child process with `--remeasure --full-sweep` and with `--remeasure` alone, alternating
`--repeat` times. Printed per store: the wall time of each; per mode the setting each
picks; and, from the full sweep's own table, the p50 latency of the setting the fast
evaluation picked against that of the setting the full sweep picked (the goal: within
5%, at the target recall).

Stores: `--n` makes synthetic ones with bench/bench_index.py (structured vectors, d
1280; 1,000 and 20,000 by default, kept in `--out`); `--store` adds existing ones (the
2M store bench_index.py leaves, a store of real photos).

    python bench/bench_evaluate.py [--n 1000 20000] [--store STORE ...] [--repeat 1]
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

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from workflow.utils import cpu_name  # noqa: E402


def evaluate(store: Path, *extra: str) -> float:
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "workflow", "evaluate", "--store", str(store),
                    "--no-progress", *extra], cwd=REPO, check=True, capture_output=True)
    return time.perf_counter() - t


def report(store: Path) -> dict:
    return json.loads((store / "evaluation" / "report.json").read_text())


def synthetic(n: int, out: Path) -> Path:
    store = out / f"n{n}" / "store"
    if not (store / "index").exists():
        subprocess.run([sys.executable, "bench/bench_index.py", "--n", str(n), "--out",
                        str(out / f"n{n}")], cwd=REPO, check=True, capture_output=True)
    return store


def compare(store: Path, repeat: int) -> dict:
    evaluate(store)  # the ground truth, once, outside the timings
    times: dict[str, list[float]] = {"full": [], "fast": []}
    for _ in range(repeat):
        times["full"].append(evaluate(store, "--remeasure", "--full-sweep"))
        full = report(store)
        times["fast"].append(evaluate(store, "--remeasure"))
        fast = report(store)
    modes = {}
    for mode, t in fast["tuned"].items():
        pts = {json.dumps(p["params"], sort_keys=True): p for p in full["sweeps"][mode]}
        ft = full["tuned"][mode]
        same_setting = pts[json.dumps(t["params"], sort_keys=True)]
        modes[mode] = {"fast": t["params"], "full": ft["params"],
                       "met": [t["target_met"], ft["target_met"]],
                       "ratio": same_setting["p50_ms"] / ft["p50_ms"],
                       "timed": sum(p["p50_ms"] is not None for p in fast["sweeps"][mode]),
                       "measured": len(fast["sweeps"][mode]),
                       "settings": len(full["sweeps"][mode])}
    return {"store": str(store), "n": full["n"], "queries": full["queries"],
            "full_s": min(times["full"]), "fast_s": min(times["fast"]), "modes": modes,
            "default": [json.loads((store / "evaluation" / "search_defaults.json")
                                   .read_text())["default_mode"]]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, nargs="*", default=[1000, 20000])
    ap.add_argument("--store", type=Path, nargs="*", default=[])
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "out" / "evaluate")
    ap.add_argument("--repeat", type=int, default=1)
    a = ap.parse_args()
    stores = [synthetic(n, a.out) for n in a.n] + list(a.store)
    results = [compare(s, a.repeat) for s in stores]
    print(f"\n{dt.date.today().isoformat()} | {cpu_name()}, {os.cpu_count()} cores, Python "
          f"{platform.python_version()} | python bench/bench_evaluate.py "
          f"{' '.join(sys.argv[1:])}\n")
    print("| store | images | queries | full sweep | now | speed-up | default mode |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for r in results:
        print(f"| {Path(r['store']).parent.name}/{Path(r['store']).name} | {r['n']:,} | "
              f"{r['queries']:,} | {r['full_s']:.1f} s | {r['fast_s']:.1f} s | "
              f"{r['full_s'] / r['fast_s']:.1f}x | {r['default'][0]} |")
    print("\nPer mode: the setting each picks, and the full sweep's p50 of the fast pick "
          "over that of its own pick (goal: at most 1.05)\n")
    print("| images | mode | settings measured / timed / in the grid | fast pick | "
          "full-sweep pick | p50 ratio | target met (fast, full) |")
    print("|---:|---|---|---|---|---:|---|")
    for r in results:
        for mode, m in r["modes"].items():
            def fmt(p):
                return ", ".join(f"{k}={v}" for k, v in p.items()) or "-"
            print(f"| {r['n']:,} | {mode} | {m['measured']} / {m['timed']} / {m['settings']} "
                  f"| {fmt(m['fast'])} | {fmt(m['full'])} | {m['ratio']:.2f} | "
                  f"{m['met'][0]}, {m['met'][1]} |")
    (a.out).mkdir(parents=True, exist_ok=True)
    (a.out / "evaluate.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
