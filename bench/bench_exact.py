#!/usr/bin/env python
"""Exact-search baseline: the workflow's exact k-NN against scikit-learn and the GEMM floor.

At the shape of the RAPIDS demo this project grew from (90,000 base vectors x 10,000
queries, 2048-d, k=3), on the same vectors in one run:

- workflow: `workflow.search.exact_search` over `rerank_store_blocks` (the base fed as
  blocks of `EXACT_BLOCK` rows, as `Searcher` does in mode `exact`), from float32 in
  memory;
- scikit-learn: `NearestNeighbors(n_neighbors=k, algorithm="brute", n_jobs=-1)`, fit +
  kneighbors, euclidean metric, in a child process that makes the same vectors and never
  loads Faiss. (In a process that has loaded Faiss, scikit-learn's brute k-NN runs on
  one core: it limits BLAS to 1 thread around its OpenMP loop, and the OpenBLAS bundled
  with faiss-cpu is built with OpenMP, so that limit sets the OpenMP library the two
  wheels share to 1 thread.)
- floor: one bare float32 matrix product `xq @ xb.T` (NumPy's BLAS, all cores) into an
  output allocated and touched beforehand, with no top-k: the compute every exact method
  has to do;
- Faiss IndexFlatIP: `index.search` alone (the index is filled before timing), for
  reference (--no-flat leaves it out).

The vectors are a seeded Gaussian mixture (--clusters clusters of differing spread around
random centres, queries drawn from the same mixture), float32, L2-normalised like the
workflow's features; on unit vectors the euclidean and inner-product rankings agree, so
the workflow's top-k ids are checked against scikit-learn's: the fraction of queries
whose top-k id sets agree must be at least 0.999, else the run fails (exit status 1).

The methods take turns in each of --rounds rounds (in an order that rotates every round);
ratios are taken within a round and their median is shown. Goals: scikit-learn /
workflow >= 4x, workflow / floor <= 1.25x. Other load on the machine (CPU time used by
other processes, from psutil) is measured around every timed call and reported, since
on a small machine it moves the timings. Prints a Markdown report and writes the same as
JSON to `<out>/exact.json`. Needs scikit-learn (pip install scikit-learn), which the
workflow itself does not use.

    python bench/bench_exact.py            # 90,000 x 10,000 x 2048, 1 round (minutes)
    python bench/bench_exact.py --quick    # 20,000 x 2,000 x 2048, 3 rounds
"""
from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
# The workflow (and with it Faiss) is imported inside the functions that use it, so that
# the scikit-learn child process (--sklearn-child) never loads Faiss.

FULL = {"nb": 90_000, "nq": 10_000, "rounds": 1}
QUICK = {"nb": 20_000, "nq": 2_000, "rounds": 3}
GOAL_VS_SKLEARN = 4.0    # scikit-learn time / workflow time, at least
GOAL_VS_FLOOR = 1.25     # workflow time / bare matrix product time, at most
MIN_AGREEMENT = 0.999    # queries whose top-k id sets agree with scikit-learn's
WORKFLOW, SKLEARN, FLOOR, FLAT = ("workflow exact_search", "scikit-learn brute",
                                  "floor: xq @ xb.T", "faiss IndexFlatIP")
SKLEARN_MISSING = ("scikit-learn is needed for the comparison (it is not a dependency of "
                   "the workflow): pip install scikit-learn")


# ---------------------------------------------------------------- data

def mixture(nb: int, nq: int, d: int, clusters: int, seed: int):
    """(base, queries): float32 L2-normalised rows of one Gaussian mixture, made in
    chunks to keep the temporaries small. Each cluster has its own spread, so some
    neighbourhoods are tight and some loose, as with real image features. The same
    arguments give the same vectors in any process."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((clusters, d), dtype=np.float32)
    spread = rng.uniform(0.6, 1.2, clusters).astype(np.float32)

    def draw(n: int, stream: int) -> np.ndarray:
        r = np.random.default_rng([seed, stream])
        out = np.empty((n, d), np.float32)
        for lo in range(0, n, 8192):
            m = min(8192, n - lo)
            c = r.integers(0, clusters, m)
            x = r.standard_normal((m, d), dtype=np.float32)
            x *= spread[c, None]
            x += centers[c]
            x /= np.linalg.norm(x, axis=1, keepdims=True)
            out[lo:lo + m] = x
        return out

    return draw(nb, 1), draw(nq, 2)


# ---------------------------------------------------------------- scikit-learn child

def sklearn_child(a: argparse.Namespace) -> int:
    """The child process: makes the vectors, warms up, then for each line `run` on stdin
    times fit + kneighbors once and answers with one JSON line (seconds, CPU seconds);
    the first run's ids go to the .npy file named by --sklearn-child."""
    try:
        from sklearn.neighbors import NearestNeighbors
        from sklearn.utils._openmp_helpers import _openmp_effective_n_threads
    except ImportError:
        raise SystemExit(SKLEARN_MISSING) from None
    assert "faiss" not in sys.modules
    xb, xq = mixture(a.nb, a.nq, a.d, a.clusters, a.seed)

    def knn(base, queries):
        nn = NearestNeighbors(n_neighbors=a.k, algorithm="brute", n_jobs=-1).fit(base)
        return nn.kneighbors(queries, return_distance=False)

    knn(xb[:4096], xq[:64])  # warm-up, untimed
    print(json.dumps({"ready": True, "openmp_threads": _openmp_effective_n_threads()}),
          flush=True)
    first = True
    for line in sys.stdin:
        if line.strip() != "run":
            break
        c0, t0 = time.process_time(), time.perf_counter()
        ids = knn(xb, xq)
        seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
        if first:
            np.save(a.sklearn_child, ids)
            first = False
        print(json.dumps({"seconds": seconds, "cpu_s": cpu}), flush=True)
    print(json.dumps({"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                      / 1024}), flush=True)
    return 0


class SklearnChild:
    """The parent's handle on the scikit-learn child process."""

    def __init__(self, a: argparse.Namespace, work: Path):
        self.ids_path = work / "sklearn-ids.npy"
        args = [f"--{k}={getattr(a, k)}" for k in ("nb", "nq", "d", "k", "clusters", "seed")]
        self.proc = subprocess.Popen(
            [sys.executable, __file__, f"--sklearn-child={self.ids_path}", *args],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.info: dict = {}

    def _answer(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"the scikit-learn child process failed (exit status "
                             f"{self.proc.wait()}; its error is above)")
        return json.loads(line)

    def ready(self) -> None:
        self.info = self._answer()

    def run(self) -> dict:
        self.proc.stdin.write("run\n")
        self.proc.stdin.flush()
        return self._answer()

    def close(self) -> np.ndarray:
        """Ends the child; returns the ids of its first run."""
        self.proc.stdin.close()
        self.info.update(self._answer())
        self.proc.wait()
        return np.load(self.ids_path)


# ---------------------------------------------------------------- methods

def methods(xb: np.ndarray, xq: np.ndarray, k: int, flat: bool,
            child: SklearnChild | None) -> dict[str, Callable[[], dict]]:
    """name -> a call running that method once over all queries, returning a dict with
    its top-k ids ("ids", for the searches run here) and the CPU seconds of a child
    process ("child_cpu_s", for scikit-learn)."""
    import faiss

    from workflow.index.knn import exact_search, rerank_store_blocks
    valid = np.ones(len(xb), bool)
    scores = np.empty((len(xq), len(xb)), np.float32)
    scores.fill(0)  # touch every page now, so the floor's timing holds no page faults

    def floor():
        np.matmul(xq, xb.T, out=scores)
        return {}

    out = {WORKFLOW: lambda: {"ids": exact_search(xq, rerank_store_blocks(xb, valid), k)[1]},
           FLOOR: floor}
    if child is not None:
        out[SKLEARN] = lambda: {"child_cpu_s": child.run()["cpu_s"]}
    if flat:
        index = faiss.IndexFlatIP(xb.shape[1])
        index.add(xb)
        out[FLAT] = lambda: {"ids": index.search(xq, k)[1]}
    return out


# ---------------------------------------------------------------- measuring

def cpu_snapshot() -> tuple[float, float, float, float]:
    """(wall s, CPU s busy on the whole machine, CPU s of this process, CPU s stolen by
    the hypervisor), to tell how much else ran meanwhile (as in bench_preprocess.py)."""
    import psutil
    t = psutil.cpu_times()
    busy = t.user + t.nice + t.system + getattr(t, "irq", 0) + getattr(t, "softirq", 0)
    own = os.times()
    return time.perf_counter(), busy, own.user + own.system, getattr(t, "steal", 0.0)


def other_load(before: tuple, after: tuple, child_cpu: float = 0.0) -> dict:
    """Cores that other processes (and the hypervisor) took on average between two
    snapshots, and the cores this process and its running child used."""
    wall = after[0] - before[0]
    own = (after[2] - before[2]) + child_cpu
    other = max(0.0, (after[1] - before[1]) - own)
    return {"wall_s": wall, "other_cores": other / wall,
            "steal_cores": (after[3] - before[3]) / wall, "own_cores": own / wall}


def measure(calls: dict[str, Callable[[], dict]], rounds: int) -> tuple[dict, dict]:
    """Each call once per round, in an order rotating every round. Returns (per name:
    lists of seconds and of loads over the rounds; per name: the first round's ids)."""
    names = list(calls)
    timings = {n: {"seconds": [], "other_cores": [], "own_cores": [], "child_cpu_s": []}
               for n in names}
    ids = {}
    for r in range(rounds):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            before = cpu_snapshot()
            res = calls[name]()
            child_cpu = res.get("child_cpu_s", 0.0)
            load = other_load(before, cpu_snapshot(), child_cpu)
            timings[name]["child_cpu_s"].append(child_cpu)
            timings[name]["seconds"].append(load["wall_s"])
            timings[name]["other_cores"].append(load["other_cores"] + load["steal_cores"])
            timings[name]["own_cores"].append(load["own_cores"])
            if "ids" in res:
                ids.setdefault(name, res["ids"])
        print(f"  round {r + 1}/{rounds}: " + ", ".join(
            f"{n} {timings[n]['seconds'][-1]:.2f} s" for n in names), file=sys.stderr,
            flush=True)
    return timings, ids


def agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Fraction of rows whose id sets are equal."""
    return float(np.mean(np.all(np.sort(a, 1) == np.sort(b, 1), axis=1)))


def thread_info() -> dict:
    """Faiss's OpenMP threads and every BLAS/OpenMP library loaded, with its threads."""
    import faiss
    info = {"faiss_omp_max_threads": faiss.omp_get_max_threads(), "libraries": []}
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return info
    for lib in threadpool_info():
        owner = Path(lib["filepath"]).parent.name.removesuffix(".libs")
        info["libraries"].append({
            "owner": owner, "api": lib["user_api"], "library": lib["internal_api"],
            "version": lib.get("version"), "architecture": lib.get("architecture"),
            "threading": lib.get("threading_layer"), "threads": lib["num_threads"]})
    return info


def machine() -> str:
    from workflow.utils import cpu_name
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (f"{cpu_name()}, {os.cpu_count()} cores, {mem:.0f} GiB, "
            f"Python {platform.python_version()}")


# ---------------------------------------------------------------- report

def paired(timings: dict, a: str, b: str) -> float:
    """Median over the rounds of a's time / b's time in the same round."""
    return statistics.median(x / y for x, y in zip(timings[a]["seconds"],
                                                   timings[b]["seconds"]))


def build_rows(timings: dict, nq: int) -> list[dict]:
    rows = []
    for name, t in timings.items():
        sec = statistics.median(t["seconds"])
        rows.append({"method": name, "seconds": sec, "queries_per_s": nq / sec,
                     "vs_workflow": paired(timings, name, WORKFLOW),
                     "rounds_s": t["seconds"],
                     "other_cores": statistics.median(t["other_cores"]),
                     "own_cores": statistics.median(t["own_cores"])})
    return rows


def goals(timings: dict) -> list[dict]:
    vs_sk, vs_fl = paired(timings, SKLEARN, WORKFLOW), paired(timings, WORKFLOW, FLOOR)
    return [{"goal": f"scikit-learn / workflow >= {GOAL_VS_SKLEARN:g}x", "value": vs_sk,
             "met": vs_sk >= GOAL_VS_SKLEARN},
            {"goal": f"workflow / floor <= {GOAL_VS_FLOOR:g}x", "value": vs_fl,
             "met": vs_fl <= GOAL_VS_FLOOR}]


def markdown(meta: dict, rows: list[dict], goal_list: list[dict], notes: list[str]) -> str:
    lines = [f"{meta['date']} | {meta['machine']} | {meta['command']}", "",
             f"{meta['nb']:,} base x {meta['nq']:,} queries, d={meta['d']}, k={meta['k']}, "
             f"{meta['clusters']}-cluster Gaussian mixture, float32, L2-normalised; "
             f"{meta['rounds']} interleaved round(s) (median; ratios taken within a round); "
             f"peak RSS {meta['peak_rss_mb']:,} MB (scikit-learn child "
             f"{meta['sklearn_peak_rss_mb']:,} MB)", "",
             "| method | wall s | queries/s | time vs workflow | rounds (s) "
             "| cores used | other load (cores) |",
             "|---|---:|---:|---:|---|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['method']} | {r['seconds']:.2f} | {r['queries_per_s']:,.0f} | "
                     f"{r['vs_workflow']:.2f}x | "
                     f"{', '.join(f'{x:.2f}' for x in r['rounds_s'])} | "
                     f"{r['own_cores']:.2f} | {r['other_cores']:.2f} |")
    lines.append("")
    lines += [f"- {n}" for n in notes]
    lines += [f"- goal: {g['goal']}: {g['value']:.2f}x -> {'met' if g['met'] else 'NOT met'}"
              for g in goal_list]
    return "\n".join(lines)


def notes_for(a, meta: dict, timings: dict, load: dict, agree: dict) -> list[str]:
    threads = meta["threads"]
    blas = "; ".join(
        f"{x['owner']} {x['library']}{' ' + x['version'] if x['version'] else ''}"
        f"{' (' + x['architecture'] + ')' if x['architecture'] else ''}: {x['threads']}"
        for x in threads["libraries"]) or "threadpoolctl not installed"
    floor = statistics.median(timings[FLOOR]["seconds"])
    flop = 2 * a.nb * a.nq * a.d
    tile = meta["exact_tile"]
    out = [
        f"Other load during the run: other processes used {load['other_cores']:.2f} of "
        f"{os.cpu_count()} cores on average, hypervisor steal {load['steal_cores']:.2f} "
        f"({load['wall_s']:.0f} s of timed calls)",
        f"threads: Faiss OpenMP {threads['faiss_omp_max_threads']}; {blas}; scikit-learn "
        f"OpenMP {threads['sklearn_openmp']} (child process without Faiss)",
        f"floor: {flop / floor / 1e9:.0f} GFLOP/s ({flop / 1e12:.2f} TFLOP)",
        f"workflow: EXACT_BLOCK = {meta['exact_block']:,} rows per block, "
        f"{-(-a.nb // meta['exact_block'])} block(s)"
        + (f", EXACT_TILE = {tile:,} (queries and base rows per product)" if tile else ""),
        "top-k agreement (queries whose top-k id sets are equal): " + ", ".join(
            f"{n} {v:.4f}" for n, v in agree.items()),
        f"scikit-learn / floor: {paired(timings, SKLEARN, FLOOR):.2f}x (what scikit-learn "
        "/ workflow would be with the workflow exactly at the floor)",
    ]
    if load["other_cores"] + load["steal_cores"] > 0.1:
        out.insert(1, f"WARNING: other processes took {load['other_cores']:.2f} cores on "
                   "average during the run; the timings are slower and noisier than on a "
                   "quiet machine")
    return out


# ---------------------------------------------------------------- main

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--quick", action="store_true",
                   help=f"{QUICK['nb']:,} base x {QUICK['nq']:,} queries, "
                        f"{QUICK['rounds']} rounds (about a minute)")
    p.add_argument("--nb", type=int, help=f"base vectors (default {FULL['nb']:,})")
    p.add_argument("--nq", type=int, help=f"queries (default {FULL['nq']:,})")
    p.add_argument("--d", type=int, default=2048, help="dimension (default 2048)")
    p.add_argument("--k", type=int, default=3, help="neighbours per query (default 3)")
    p.add_argument("--clusters", type=int, default=300,
                   help="clusters of the Gaussian mixture (default 300)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rounds", type=int, help=f"interleaved rounds (default "
                                              f"{FULL['rounds']}, {QUICK['rounds']} "
                                              "with --quick)")
    p.add_argument("--no-flat", dest="flat", action="store_false",
                   help="leave out the Faiss IndexFlatIP reference row")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "out",
                   help="folder for exact.json (default bench/out)")
    p.add_argument("--sklearn-child", type=Path, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    base = QUICK if a.quick else FULL
    for key in ("nb", "nq", "rounds"):
        if getattr(a, key) is None:
            setattr(a, key, base[key])
        if getattr(a, key) < 1:
            p.error(f"--{key} must be at least 1")
    if a.k < 1 or a.k > a.nb:
        p.error("--k must be between 1 and --nb")
    return a


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    if a.sklearn_child:
        return sklearn_child(a)
    if importlib.util.find_spec("sklearn") is None:
        raise SystemExit(SKLEARN_MISSING)
    import workflow.index.knn as search
    with tempfile.TemporaryDirectory(prefix="bench-exact-") as work:
        child = SklearnChild(a, Path(work))  # makes its vectors while this process does
        t0 = time.perf_counter()
        xb, xq = mixture(a.nb, a.nq, a.d, a.clusters, a.seed)
        print(f"made {a.nb:,} + {a.nq:,} vectors of {a.d} in "
              f"{time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
        calls = methods(xb, xq, a.k, a.flat, child)
        for f in methods(xb[:4096], xq[:64], a.k, a.flat, None).values():
            f()  # warm-up, untimed: imports, thread pools, first calls
        child.ready()
        cpu0 = cpu_snapshot()
        timings, ids = measure(calls, a.rounds)
        load = other_load(cpu0, cpu_snapshot(),
                          sum(sum(t["child_cpu_s"]) for t in timings.values()))
        ids[SKLEARN] = child.close()

    agree = {"workflow vs scikit-learn": agreement(ids[WORKFLOW], ids[SKLEARN])}
    if a.flat:
        agree["faiss IndexFlatIP vs scikit-learn"] = agreement(ids[FLAT], ids[SKLEARN])
    threads = {**thread_info(), "sklearn_openmp": child.info.get("openmp_threads")}
    meta = {"date": dt.date.today().isoformat(), "machine": machine(),
            "command": "python bench/bench_exact.py " + " ".join(
                argv if argv is not None else sys.argv[1:]),
            "nb": a.nb, "nq": a.nq, "d": a.d, "k": a.k, "clusters": a.clusters,
            "seed": a.seed, "rounds": a.rounds, "exact_block": search.EXACT_BLOCK,
            "exact_tile": getattr(search, "EXACT_TILE", None),  # absent before tiling
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            "sklearn_peak_rss_mb": round(child.info.get("peak_rss_mb", 0)),
            "threads": threads, "other_load": {k: round(v, 2) for k, v in load.items()}}
    rows = build_rows(timings, a.nq)
    goal_list = goals(timings)
    notes = notes_for(a, meta, timings, load, agree)
    text = markdown(meta, rows, goal_list, notes)
    print(text)
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "exact.json").write_text(json.dumps(
        {**meta, "rows": rows, "goals": goal_list, "agreement": agree, "notes": notes,
         "markdown": text}, indent=1) + "\n")
    if agree["workflow vs scikit-learn"] < MIN_AGREEMENT:
        print(f"\nFAILED: the workflow's top-{a.k} ids agree with scikit-learn's on only "
              f"{agree['workflow vs scikit-learn']:.4f} of the queries (at least "
              f"{MIN_AGREEMENT} expected)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
