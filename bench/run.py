#!/usr/bin/env python
"""Run the whole benchmark suite: every figure in BENCHMARKS.md, one script after another.

Each section is one script under bench/, run in its own process (so that one section's
memory and threads do not colour the next), with its report printed as it comes and
collected into `bench/out/report.md`. Every script prints the date, the machine and its
own command at the top of its report and measures the ratios it reports side by side in
one run. Sections, in order:

  preprocess  naive vs reduced decoding, 500x375 and 4000x3000 photos, 1 and all workers
  extract     decode-only, model-only and pipeline images/s: EfficientNet-B0, TFLite MobileNet
  exact       exact k-NN at 90,000 x 10,000 queries, 2048-d, k=3: the workflow vs
              scikit-learn (brute, all cores) vs a bare matrix product
  index       train, add (+merge), prefilter at 2M x 1280: wall time and peak RSS
  search      recall@10 and p50/p99 per search mode and parameter on the 2M index
  flowers     all seven stages on flowers12 with the TFLite model: precision@10 per mode
  spark       the extract stage on a 2-worker Spark standalone cluster vs the process
              executor, and the fixed cost of a Spark task
  object-store  every stage with the store on an S3 server process (moto's) against
              local disk: wall time, bytes moved and requests per shard
  e2e         every stage on a real-image corpus of 20,000 images, and the hours a
              2M-image run needs on a Colab T4 runtime and on a CPU-only one
  gpu         extract (EfficientNet-B0/B4, mixed precision), exact search and k-means on
              the GPU; only where one is present

--quick runs every section small (a smoke test of the suite: about 15 minutes on 2 cores);
the full suite takes about 1.5 hours on 2 cores and ~20 GB of disk under bench/out/.
A section whose needs are missing (../shared/assets, PySpark, scikit-learn, moto, a GPU) is
reported as skipped with the reason; `pip install -r requirements-bench.txt` installs
what the suite needs.

    python bench/run.py [--quick] [--only exact,e2e] [--skip index,search]
"""
from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from workflow.utils import cpu_name  # noqa: E402

ASSETS = REPO.parent / "shared" / "assets"
QUICK_INDEX = ["--out", "bench/out/index-quick"]


@dataclass(frozen=True)
class Section:
    name: str
    script: str
    full: tuple[str, ...]
    quick: tuple[str, ...] | None  # None: not run with --quick
    needs: tuple[str, ...] = ()    # "assets", "pyspark", "sklearn", "gpu"


SECTIONS = [
    Section("preprocess", "bench_preprocess.py", (), ("--quick",)),
    Section("extract", "bench_extract.py", (), ("--n", "64", "--rounds", "1")),
    Section("exact", "bench_exact.py", (), ("--quick",), ("sklearn",)),
    Section("blas", "bench_blas.py", (), ("--n", "10000", "--repeat", "1")),
    Section("index", "bench_index.py", (), ("--n", "200000", *QUICK_INDEX)),
    Section("search", "bench_search.py", ("index",),
            ("index", "--store", "bench/out/index-quick/store", "--queries", "200")),
    Section("update", "bench_update.py", (),
            ("--n", "200000", "--new", "20000", "--remove", "10000", "--out",
             "bench/out/update-quick")),
    Section("evaluate", "bench_evaluate.py", (), ("--n", "1000", "--out",
                                                 "bench/out/evaluate-quick")),
    Section("flowers", "bench_search.py", ("flowers",), None, ("assets",)),
    Section("spark", "bench_spark.py", (), ("--n", "64", "--shards", "4", "--rounds", "2",
                                            "--tiny", "8"), ("pyspark",)),
    Section("object-store", "bench_object_store.py", (), ("--n", "48", "--shard-size", "16"),
            ("assets", "s3")),
    Section("e2e", "bench_e2e.py", (), ("--quick",), ("assets",)),
    Section("gpu", "bench_gpu.py", (), ("--quick",), ("gpu", "assets")),
]


def missing(need: str) -> str | None:
    """Why a need is not met, or None."""
    if need == "assets":
        return None if ASSETS.is_dir() else f"{ASSETS} is absent"
    if need in ("pyspark", "sklearn"):
        if importlib.util.find_spec(need) is None:
            return f"{need} is not installed (pip install -r requirements-bench.txt)"
        if need == "pyspark" and shutil.which("java") is None:
            return "PySpark needs Java 17 (java not found)"
        return None
    if need == "s3":
        if importlib.util.find_spec("s3fs") is None or importlib.util.find_spec("moto") is None:
            return ("s3fs and moto's server are not installed (pip install -r "
                    "requirements-dev.txt)")
        return None
    if need == "gpu":
        if shutil.which("nvidia-smi") is None:
            return "no GPU here (nvidia-smi not found): run bench/bench_gpu.py on a GPU machine"
        return None
    raise ValueError(need)


def machine() -> str:
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (f"{cpu_name()}, {os.cpu_count()} cores, {mem:.1f} GiB; Python "
            f"{platform.python_version()} on {platform.system()} {platform.release()}")


def run_section(s: Section, quick: bool) -> dict:
    args = s.quick if quick else s.full
    if args is None:
        return {"section": s.name, "command": "", "status": "skipped",
                "why": "not part of --quick"}
    command = ["python", f"bench/{s.script}", *args]
    out = {"section": s.name, "command": " ".join(command)}
    why = next(filter(None, (missing(n) for n in s.needs)), None)
    if why:
        return {**out, "status": "skipped", "why": why}
    print(f"\n## {s.name}\n\n`{out['command']}` (started "
          f"{dt.datetime.now().isoformat(timespec='seconds')})\n", flush=True)
    t = time.perf_counter()
    proc = subprocess.Popen([sys.executable, *command[1:]], cwd=REPO, text=True,
                            stdout=subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1",
                                                         "TF_CPP_MIN_LOG_LEVEL": "2"})
    lines = []
    for line in proc.stdout:
        print(line, end="", flush=True)
        lines.append(line)
    code = proc.wait()
    out.update(status="ok" if code == 0 else f"failed (exit {code})",
               seconds=round(time.perf_counter() - t, 1), report="".join(lines))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split(
        "\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="every section small (smoke run)")
    ap.add_argument("--only", default="", help="comma-separated sections to run")
    ap.add_argument("--skip", default="", help="comma-separated sections to leave out")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "out" / "report.md")
    a = ap.parse_args()
    names = [s.name for s in SECTIONS]
    only = [x for x in a.only.split(",") if x]
    skip = [x for x in a.skip.split(",") if x]
    unknown = [x for x in only + skip if x not in names]
    if unknown:
        ap.error(f"unknown section(s) {', '.join(unknown)}; choose from {', '.join(names)}")
    chosen = [s for s in SECTIONS if (not only or s.name in only) and s.name not in skip]
    header = (f"# Benchmark suite\n\nDate: {dt.date.today().isoformat()}  \nMachine: "
              f"{machine()}  \nCommand: `python bench/run.py {' '.join(sys.argv[1:])}`\n")
    print(header, flush=True)
    t = time.perf_counter()
    results = [run_section(s, a.quick) for s in chosen]
    summary = ["\n## Summary\n", "| section | status | minutes | command |", "|---|---|---:|---|"]
    for r in results:
        status = r["status"] + (f": {r['why']}" if "why" in r else "")
        minutes = f"{r['seconds'] / 60:.1f}" if "seconds" in r else ""
        summary.append(f"| {r['section']} | {status} | {minutes} | `{r['command']}` |"
                       if r["command"] else f"| {r['section']} | {status} | | |")
    summary.append(f"\nTotal: {(time.perf_counter() - t) / 60:.1f} minutes")
    print("\n".join(summary))
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(header + "".join(
        f"\n## {r['section']}\n\n`{r['command']}`\n\n{r.get('report', r.get('why', ''))}"
        for r in results) + "\n".join(summary) + "\n")
    a.out.with_suffix(".json").write_text(json.dumps(results, indent=1))
    print(f"\nWritten: {a.out}")
    return 0 if all(r["status"] in ("ok", "skipped") for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
