#!/usr/bin/env python
"""Spark on a real standalone cluster: the extract stage with `--executor spark` on a
master and two workers of one core each (started here on 127.0.0.1, as the tests do,
unless --master names a running one) against `--executor process` with two decoding
workers, on the same image shards, in one run, rounds interleaved; then the fixed cost
of a Spark task, from a store whose shards hold one image each.

Both executors run the same model (EfficientNet-B0, random weights, 224 px, the CPU
runtime the stage picks) with the same batch size. The Spark session is created once,
before the rounds, and kept: its start, and the first round's start-up of the
executors' Python workers (importing TensorFlow, building the model; the package is
shipped to them as a zip), are reported apart from the warm rounds. Each Spark stage
run also pays its probe of the executors (about 2-3 s).

    python bench/bench_spark.py [--n 640] [--shards 8] [--rounds 3] [--tiny 40]
                                [--master spark://HOST:7077]
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))  # the test suite's standalone cluster

from bench_extract import image_store  # noqa: E402

from workflow.stages.extract import ExtractConfig, run  # noqa: E402
from workflow.stages.status import reset_stage  # noqa: E402
from workflow.storage.store import Store  # noqa: E402
from workflow.utils import cpu_name  # noqa: E402


def timed_run(store: Store, cfg: ExtractConfig) -> tuple[float, int, int]:
    """Seconds, features and shards of one whole extract stage (reset first)."""
    reset_stage(store, "extract")
    t = time.perf_counter()
    res = run(cfg)
    assert res.complete, res
    return time.perf_counter() - t, res.n_features, res.n_shards


@contextlib.contextmanager
def cluster_master(given: str | None, folder: Path, workers: int):
    if given:
        yield given
        return
    from spark_cluster import StandaloneCluster
    t = time.perf_counter()
    with StandaloneCluster(folder, workers=workers, cores=1, memory="2g") as c:
        print(f"standalone cluster: master and {workers} workers up in "
              f"{time.perf_counter() - t:.1f} s", flush=True)
        yield c.master


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=640, help="images [default: %(default)s]")
    ap.add_argument("--shards", type=int, default=8, help="[default: %(default)s]")
    ap.add_argument("--rounds", type=int, default=3, help="[default: %(default)s]")
    ap.add_argument("--tiny", type=int, default=40,
                    help="shards of one image, for the per-task cost [default: %(default)s]")
    ap.add_argument("--workers", type=int, default=2,
                    help="cluster workers (1 core each) and process workers [default: "
                         "%(default)s]")
    ap.add_argument("--master", default=None,
                    help="a running cluster's master URL [default: start one here]")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "out")
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    store = image_store(a.out, a.n, a.shards)
    tiny = image_store(a.out, a.tiny, a.tiny)
    base = dict(model="efficientnet-b0", weights="none", batch_size=a.batch_size,
                progress=False)
    with cluster_master(a.master, a.out / "spark-cluster", a.workers) as master:
        from pyspark.sql import SparkSession
        t = time.perf_counter()
        spark = (SparkSession.builder.master(master).appName("bench-spark")
                 .config("spark.ui.showConsoleProgress", "false").getOrCreate())
        start = time.perf_counter() - t
        spark_name = f"spark, {a.workers} workers x 1 core"
        process_name = f"process, {a.workers} workers"
        cfgs = {process_name: dict(executor="process", workers=a.workers),
                spark_name: dict(executor="spark")}
        rows: dict[str, list[float]] = {k: [] for k in cfgs}
        n = 0
        for r in range(a.rounds):
            for name in (list(cfgs) if r % 2 else list(reversed(cfgs))):
                seconds, n, _ = timed_run(store, ExtractConfig(store=store.url, **base,
                                                               **cfgs[name]))
                rows[name].append(n / seconds)
                print(f"round {r + 1}: {name}: {n} images in {seconds:.1f} s", flush=True)
        per_task = {}
        for name in (spark_name, process_name):
            seconds, m, shards = timed_run(tiny, ExtractConfig(store=tiny.url, **base,
                                                               **cfgs[name]))
            per_task[name] = seconds / shards
            print(f"one-image shards: {name}: {shards} shards ({m} images) in "
                  f"{seconds:.1f} s", flush=True)
        spark.stop()
    print(f"\n{dt.date.today()} | {cpu_name()}, {os.cpu_count()} cores | python "
          f"bench/bench_spark.py {' '.join(sys.argv[1:])}\n")
    print(f"{n} images in {a.shards} shards; EfficientNet-B0 224 px, batch "
          f"{a.batch_size}; Spark session start {start:.1f} s (not in the rates); the "
          "first round of each includes its workers' start-up\n")
    print("| executor | images/s per round | best | warm rounds' mean |\n"
          "|---|---|---:|---:|")
    for name, rates in rows.items():
        warm = rates[1:] or rates
        print(f"| {name} | {', '.join(f'{x:.1f}' for x in rates)} | {max(rates):.1f} | "
              f"{sum(warm) / len(warm):.1f} |")
    sp, pr = rows[spark_name], rows[process_name]
    warm_sp, warm_pr = sp[1:] or sp, pr[1:] or pr
    print(f"\nspark / process: best rounds {max(sp) / max(pr):.2f}; warm rounds' means "
          f"{(sum(warm_sp) / len(warm_sp)) / (sum(warm_pr) / len(warm_pr)):.2f}")
    print(f"\nper shard of one image, whole stage / shards: spark "
          f"{per_task[spark_name]:.2f} s, process {per_task[process_name]:.2f} s; a Spark "
          f"task costs about {per_task[spark_name] - per_task[process_name]:.2f} s more "
          "than a local shard")


if __name__ == "__main__":
    main()
