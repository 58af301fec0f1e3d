#!/usr/bin/env python
"""Search benchmark: the evaluate stage on the 2M synthetic store, and flowers12 end to end.

`index` (default): runs `python -m workflow evaluate` from scratch on the store that
`bench/bench_index.py` leaves behind (2M x 1280 structured synthetic vectors) in a child
process, and prints each mode's recall and latency at its cheapest setting reaching the
target recall, the stage's wall time and peak RSS (from `os.wait4`), and the goal checks:
hierarchical recall@10 >= 0.99 with single-query p50 under 3 ms; at 2M, the whole stage
within 2 minutes. Writes the figures to `--out`/search.json, where bench/bench_e2e.py's
2M projection reads the evaluate stage's time.

`flowers`: flowers12 (960 real photos, 12 classes) from ../shared/assets through all
seven stages with the TFLite MobileNet v1 embedding model; prints precision@10 by class of
every mode at its tuned setting next to exact search. Goal: hierarchical within 0.01 of
exact.

    python bench/bench_index.py                    # first, once: makes the 2M store
    python bench/bench_search.py index [--store bench/out/index/store]
    python bench/bench_search.py flowers
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
ASSETS = REPO.parent / "shared" / "assets"


def machine() -> str:
    from workflow.utils import cpu_name
    cpu = cpu_name()
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}"


def stage(args: list[str], log: Path) -> tuple[float, float]:
    """Run `python -m workflow ARGS` as a child; (wall seconds, peak RSS GB)."""
    t = time.perf_counter()
    with open(log, "w") as err:
        p = subprocess.Popen([sys.executable, "-m", "workflow", *args, "--no-progress"],
                             cwd=REPO, stdout=err, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(p.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{args[0]} failed:\n{log.read_text()[-3000:]}")
    return time.perf_counter() - t, usage.ru_maxrss / 2**20


def tuned_rows(report: dict) -> list[str]:
    from workflow.report.evaluation import tuned_table
    return tuned_table(report).splitlines()


def bench_index(a) -> None:
    store = Path(a.store)
    if not (store / "index" / "index.faiss").exists():
        raise SystemExit(f"{store} has no filled index: run bench/bench_index.py first")
    log = store.parent / "evaluate.log"
    if not a.reuse:  # the whole stage as a first run does it, its ground truth included
        for old in (store / "evaluation", store / "_done" / "evaluate"):
            shutil.rmtree(old, ignore_errors=True)
    seconds, rss = stage(["evaluate", "--store", str(store), "--queries", str(a.queries),
                          "--target-recall", str(a.target_recall), "--labels", "none"], log)
    report = json.loads((store / "evaluation" / "report.json").read_text())
    print(f"\n{dt.date.today()} | {machine()} | python bench/bench_search.py "
          f"{' '.join(sys.argv[1:])}\n")
    print(f"{report['n']:,} x {report['d']} vectors, {report['index']}; {report['queries']:,} "
          f"corpus queries (own id left out); evaluate stage {seconds:.0f} s, peak RSS "
          f"{rss:.2f} GB")
    print("\n".join(tuned_rows(report)))
    for ln in log.read_text().splitlines():
        if " took " in ln:
            print("  " + ln)
    h = report["tuned"].get("hierarchical")
    if h:
        ok = h["recall@10"] >= 0.99 and h["p50_ms"] < 3.0
        print(f"\ngoal: hierarchical recall@10 >= 0.99 with p50 < 3 ms: recall@10 "
              f"{h['recall@10']:.3f}, p50 {h['p50_ms']:.2f} ms -> {'met' if ok else 'NOT met'}")
    c = report["cache"]
    print(f"query cache: a repeated {c['mode']} query in {c['p50_ms']:.3f} ms (p50)")
    if report["n"] >= 1_000_000:
        print(f"goal: the evaluate stage at 2M within 2 minutes: {seconds:.0f} s -> "
              f"{'met' if seconds <= 120 else 'NOT met'}")
    out = Path(a.out) / "search.json"  # read by bench/bench_e2e.py's projection
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"date": dt.date.today().isoformat(), "machine": machine(),
                               "n": report["n"], "d": report["d"], "index": report["index"],
                               "queries": report["queries"],
                               "target_recall": report["target_recall"],
                               "seconds": round(seconds, 1), "peak_rss_gb": round(rss, 2),
                               "tuned": report["tuned"]}, indent=1, default=str) + "\n")


def bench_flowers(a) -> None:
    if not ASSETS.is_dir():
        raise SystemExit(f"needs the test assets at {ASSETS}")
    out = Path(a.out) / "flowers"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    store = out / "store"
    model = ASSETS / "models" / "mobilenet_v1_1.0_224_quant_embedding_extractor.tflite"
    steps = [["preprocess", "--source", str(ASSETS / "images" / "flowers12"),
              "--shard-size", "250"],
             ["extract", "--model", str(model)], ["train"], ["add"], ["prefilter"],
             ["evaluate", "--queries", "960", "--target-recall", str(a.target_recall)]]
    times = {}
    for s in steps:
        times[s[0]], _ = stage([s[0], "--store", str(store), *s[1:]], out / f"{s[0]}.log")
    report = json.loads((store / "evaluation" / "report.json").read_text())
    print(f"\n{dt.date.today()} | {machine()} | python bench/bench_search.py "
          f"{' '.join(sys.argv[1:])}\n")
    print("stage times: " + ", ".join(f"{k} {v:.1f} s" for k, v in times.items()))
    print("\n".join(tuned_rows(report)))
    p = report["precision"]["by_mode"]
    names = list(p)
    print("\n| precision | " + " | ".join(names) + " |\n|---|" + "---:|" * len(names))
    for k in ("P@1", "P@10"):
        print(f"| mean {k} | " + " | ".join(f"{p[n][k]['mean']:.3f}" for n in names) + " |")
    exact, hier = p["exact (ground truth)"]["P@10"]["mean"], p["hierarchical"]["P@10"]["mean"]
    print(f"\ngoal: hierarchical P@10 within 0.01 of exact: {hier:.3f} vs {exact:.3f} -> "
          f"{'met' if abs(hier - exact) <= 0.01 else 'NOT met'}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("what", choices=["index", "flowers"], nargs="?", default="index")
    ap.add_argument("--store", default=str(REPO / "bench" / "out" / "index" / "store"))
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--target-recall", type=float, default=0.99)
    ap.add_argument("--out", default=str(REPO / "bench" / "out"))
    ap.add_argument("--reuse", action="store_true",
                    help="index: reuse the ground truth and sweeps already in the store "
                         "(default: evaluate from scratch, as a first run does)")
    a = ap.parse_args()
    sys.path.insert(0, str(REPO))
    bench_index(a) if a.what == "index" else bench_flowers(a)


if __name__ == "__main__":
    main()
