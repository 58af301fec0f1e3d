#!/usr/bin/env python
"""Spark overhead: the extract stage with `--executor spark` on local[N] against the
default single-process pipeline (`--executor process`: decoding in worker processes,
inference here), on the same image shards, in one run, rounds interleaved.

Both runs use the same model (EfficientNet-B0, random weights, 224 px) and batch size.
On Spark each shard is a task with its own model in its Python worker; the first Spark
round also pays for starting the Python workers and building their models. The Spark
session is started once, before the rounds, and its start-up time is reported apart.

    python bench/bench_spark.py [--n 640] [--shards 4] [--rounds 2] [--master local[2]]
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench_extract import image_store  # noqa: E402

from workflow.stages.extract import ExtractConfig, run  # noqa: E402
from workflow.stages.status import reset_stage  # noqa: E402
from workflow.storage.store import Store  # noqa: E402
from workflow.utils import cpu_name  # noqa: E402


def timed_run(store: Store, cfg: ExtractConfig) -> tuple[float, int]:
    reset_stage(store, "extract")
    t = time.perf_counter()
    res = run(cfg)
    assert res.complete
    return time.perf_counter() - t, res.n_features


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=640)
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--master", default=f"local[{os.cpu_count() or 2}]")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "out")
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    store = image_store(a.out, a.n, a.shards)
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    from pyspark.sql import SparkSession
    t = time.perf_counter()
    spark = (SparkSession.builder.master(a.master).appName("bench-spark")
             .config("spark.ui.enabled", "false")
             .config("spark.ui.showConsoleProgress", "false").getOrCreate())
    start = time.perf_counter() - t
    base = dict(store=store.url, model="efficientnet-b0", weights="none",
                batch_size=a.batch_size, progress=False)
    cfgs = {"process": ExtractConfig(**base, executor="process"),
            f"spark {a.master}": ExtractConfig(**base, executor="spark")}
    rows: dict[str, list[float]] = {k: [] for k in cfgs}
    n = 0
    for r in range(a.rounds):
        order = list(cfgs) if r % 2 == 0 else list(reversed(cfgs))
        for name in order:
            seconds, n = timed_run(store, cfgs[name])
            rows[name].append(n / seconds)
            print(f"round {r + 1}: {name}: {n} images in {seconds:.1f} s", flush=True)
    spark.stop()
    cpu = cpu_name()
    print(f"\n{dt.date.today()} | {cpu}, {os.cpu_count()} cores | python bench/bench_spark.py "
          f"{' '.join(sys.argv[1:])}\n")
    print(f"{n} images in {a.shards} shards; EfficientNet-B0 224 px, batch {a.batch_size}; "
          f"Spark session start {start:.1f} s (not in the rates)\n")
    print("| executor | images/s per round | best |\n|---|---|---:|")
    for name, rates in rows.items():
        print(f"| {name} | {', '.join(f'{x:.1f}' for x in rates)} | {max(rates):.1f} |")
    sp, pr = rows[f"spark {a.master}"], rows["process"]
    print(f"\nspark / process, best rounds: {max(sp) / max(pr):.2f}; "
          f"last round: {sp[-1] / pr[-1]:.2f}")


if __name__ == "__main__":
    main()
