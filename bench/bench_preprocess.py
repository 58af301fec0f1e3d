#!/usr/bin/env python
"""Preprocess throughput benchmark: reduced JPEG decoding vs the naive way, 1 and N workers.

Makes test photos once (the real photographs bundled with scikit-image, resized with
INTER_CUBIC to 4000x3000 and 500x375 plus mild seeded noise, saved as JPEG q92), then
measures images/s for each method in the same run over several rounds, reporting the
median round. Within a round the three single-process methods take turns a few images
at a time (so a slower or busier moment of the machine hits them alike); the pool and
stage methods then run once each, in an order that changes every round. The photos are
read once, untimed, before each block, so every method finds them in the page cache.

- naive: `cv2.imread` (full decode) + `cv2.resize` (short side 256, INTER_AREA) +
  `cv2.imencode` q90, one process, `cv2.setNumThreads(1)`.
- workflow: read the bytes + `preprocess_image(data, ImageOptions())`, same process.
- workflow, full decode: the same with `ImageOptions(reduced_decode=False)`.
- pool: `SupervisedPool` running `ImageWorker(ImageOptions())` with 1 and with
  os.cpu_count() workers over bytes read beforehand in the parent, handed over in chunks
  as the stage does (steady state: the
  workers are started and warmed up before timing).
- stage: the whole `preprocess.run` over a folder of the photos with all workers, into a
  fresh temporary store each round (end to end: planning, worker start-up, reading,
  HDF5 writing and the store commit); and the same over a single photo, its fixed cost.

Prints a Markdown table plus the machine, date and command, and writes everything as
JSON to `<out>/preprocess.json`.

    python bench/bench_preprocess.py            # full: 24 large + 2000 small, 5 rounds
    python bench/bench_preprocess.py --quick    # 6 large + 40 small, 3 rounds (~20 s)
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from functools import partial
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]

# Colour photographs bundled with scikit-image (missing ones are skipped).
SOURCE_PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg",
                 "motorcycle_left.png", "motorcycle_right.png", "hubble_deep_field.jpg",
                 "retina.jpg", "ihc.png")
SIZES = {"large": (4000, 3000), "small": (500, 375)}  # (width, height)
TARGET = 256          # short side after resizing, as ImageOptions' default
OUT_QUALITY = 90      # re-encoding quality, as ImageOptions' default
PHOTO_QUALITY = 92    # quality of the generated test photos
NOISE_SIGMA = 3.0     # grey levels of Gaussian noise added after upscaling
FULL = {"large": 24, "small": 2000, "rounds": 5, "passes": 1}
QUICK = {"large": 6, "small": 40, "rounds": 3, "passes": 1}
CHUNK = {"large": 2, "small": 10}  # images per turn when interleaving in-process methods
GOAL_LARGE_RATIO = 3.0     # workflow vs naive per core, 4000x3000
GOAL_SMALL_RATIO = 0.95    # "no slower" on 500x375, read as: within 5%
GOAL_STAGE = 0.75          # the stage's rate over its bare pool's, 500x375
GOAL_SCALING = 0.9         # N-worker speed-up >= 0.9 * N counts as near-linear


# ---------------------------------------------------------------- test photos

def skimage_photos() -> list[np.ndarray]:
    """The bundled colour photographs as BGR arrays."""
    import skimage
    data = Path(skimage.__file__).parent / "data"
    photos = [img for name in SOURCE_PHOTOS
              if (img := cv2.imread(str(data / name), cv2.IMREAD_COLOR)) is not None]
    if len(photos) < 3:
        raise SystemExit(f"need at least 3 of {SOURCE_PHOTOS} in {data}; found {len(photos)}")
    return photos


def make_photo(src: np.ndarray, size: tuple[int, int], seed: int) -> bytes:
    """A 4:3 crop of `src` (random position and scale, maybe mirrored) resized to `size`
    with INTER_CUBIC, plus Gaussian noise, as JPEG bytes. Deterministic for a seed."""
    rng = np.random.default_rng(seed)
    h, w = src.shape[:2]
    cw = min(w, h * 4 // 3)
    cw = max(8, int(cw * rng.uniform(0.75, 1.0)))
    ch = cw * 3 // 4
    x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    crop = src[y:y + ch, x:x + cw]
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    img = cv2.resize(np.ascontiguousarray(crop), size, interpolation=cv2.INTER_CUBIC)
    noise = rng.standard_normal(img.shape, dtype=np.float32) * NOISE_SIGMA
    img = np.clip(img.astype(np.float32) + noise, 0, 255).round().astype(np.uint8)
    ok, enc = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, PHOTO_QUALITY])
    assert ok
    return enc.tobytes()


def ensure_photos(out: Path, counts: dict[str, int]) -> dict[str, list[Path]]:
    """`out/photos/<size>/photo-NNN.jpg`, generated once and reused when present."""
    photos: list[np.ndarray] | None = None
    found: dict[str, list[Path]] = {}
    for key, n in counts.items():
        w, h = SIZES[key]
        folder = out / "photos" / f"{key}_{w}x{h}"
        folder.mkdir(parents=True, exist_ok=True)
        paths = [folder / f"photo-{i:03d}.jpg" for i in range(n)]
        missing = [i for i, p in enumerate(paths) if not p.exists()]
        if missing:
            print(f"making {len(missing)} {w}x{h} test photos in {folder} ...", flush=True)
            photos = photos or skimage_photos()
        for i in missing:
            seed = 1000 * (list(SIZES).index(key) + 1) + i
            data = make_photo(photos[i % len(photos)], (w, h), seed)
            tmp = paths[i].with_suffix(".tmp")
            tmp.write_bytes(data)
            tmp.replace(paths[i])
        found[key] = paths
    return found


# ---------------------------------------------------------------- methods

def naive_one(path: str) -> bytes:
    """The baseline: full decode, resize the short side to TARGET, re-encode."""
    img = cv2.imread(path)
    h, w = img.shape[:2]
    s = TARGET / min(h, w)
    if s < 1:
        img = cv2.resize(img, (max(1, round(w * s)), max(1, round(h * s))),
                         interpolation=cv2.INTER_AREA)
    ok, enc = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, OUT_QUALITY])
    assert ok
    return enc.tobytes()


def run_naive(paths: list[str]) -> None:
    for p in paths:
        naive_one(p)


def run_workflow(paths: list[str], opts) -> None:
    from workflow.inputs.imaging import preprocess_image
    for p in paths:
        with open(p, "rb") as f:
            data = f.read()
        r = preprocess_image(data, opts)
        if r.status != 0:
            raise RuntimeError(f"{p}: {r.reason}")


def run_pool(pool, datas: list[bytes]) -> None:
    """The images in chunks, as the stage hands them to its workers."""
    from workflow.stages.preprocess import chunked
    n = 0
    for _, results in pool.imap_unordered(enumerate(chunked((d, "") for d in datas))):
        for r in results:
            if r.status != 0:
                raise RuntimeError(f"pool job failed: {r.reason}")
            n += 1
    assert n == len(datas)


def stage_folder(paths: list[Path], work_dir: Path) -> Path:
    """A new folder under `work_dir` holding (hard links to) exactly `paths`."""
    folder = Path(tempfile.mkdtemp(prefix="src-", dir=work_dir))
    for p in paths:
        try:
            os.link(p, folder / p.name)
        except OSError:
            shutil.copyfile(p, folder / p.name)
    return folder


def run_stage(folder: Path, paths: list[Path], workers: int, work_dir: Path) -> None:
    """The whole preprocess stage over `folder` (holding `paths`), into a new store
    under `work_dir`."""
    from workflow.stages.preprocess import PreprocessConfig, run
    tmp = Path(tempfile.mkdtemp(prefix="store-", dir=work_dir))
    res = run(PreprocessConfig(store=str(tmp / "store"), sources=(str(folder),),
                               scratch=str(tmp / "scratch"), workers=workers,
                               progress=False))
    if not res.complete or res.ok != len(paths):
        raise RuntimeError(f"stage did not process every image: {res.summary()}")


def single_thread() -> None:
    """Pool worker initialiser: OpenCV on one thread (the pool is the parallelism)."""
    cv2.setNumThreads(1)


def pool_failure(chunk, kind: str, message: str):
    """SupervisedPool's on_failure: a result that run_pool reports as an error."""
    from workflow.inputs.imaging import ImageResult, Status
    status = Status.TIMEOUT if kind == "timeout" else Status.CRASHED
    return [ImageResult(int(status), f"{kind}: {message}", b"", 0, 0, "")]


# ---------------------------------------------------------------- measuring

def psnr_reduced_vs_full(paths: list[str], n: int = 4) -> float:
    """Mean PSNR (dB) of the workflow's output with vs without reduced decoding."""
    from workflow.inputs.imaging import ImageOptions, preprocess_image
    vals = []
    for p in paths[:n]:
        data = Path(p).read_bytes()
        a, b = (cv2.imdecode(np.frombuffer(preprocess_image(data, ImageOptions(
            reduced_decode=r)).jpeg, np.uint8), cv2.IMREAD_COLOR) for r in (True, False))
        vals.append(cv2.PSNR(a, b))
    return float(np.mean(vals))


def time_once(fn: Callable[[], None]) -> tuple[float, float]:
    """(wall seconds, this process's CPU seconds) of one call."""
    t, c = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - t, time.process_time() - c


def read_all(paths: list[Path]) -> None:
    """Read the files, so that each timed run finds them in the page cache (this VM's
    kernel pages cold file pages out in the background)."""
    for p in paths:
        p.read_bytes()


class Method(NamedTuple):
    """One way of processing the photos: fn(items) handles a list of items (paths or
    bytes); `paired` methods are timed chunk by chunk, alternating with each other."""
    fn: Callable[[list], None]
    items: list
    paired: bool = False


def measure(methods: dict[str, Method], rounds: int, chunk: int,
            prepare: Callable[[], None]) -> dict[str, dict[str, list[float]]]:
    """images/s and this process's CPU ms per image, per method and round.

    Each round first runs the paired methods (the single-process ones) interleaved
    `chunk` items at a time, the order rotating every chunk, so that they see the same
    machine; then every other method once over all its items, in an order that changes
    every round. `prepare` runs, untimed, before each of those blocks.
    """
    paired = [k for k, m in methods.items() if m.paired]
    whole = [k for k, m in methods.items() if not m.paired]
    out = {k: {"rates": [], "cpu_ms": []} for k in methods}
    for r in range(rounds):
        spent = {k: [0.0, 0.0] for k in methods}
        prepare()
        n = len(methods[paired[0]].items) if paired else 0
        for c, lo in enumerate(range(0, n, chunk)):
            for k in paired[c % len(paired):] + paired[:c % len(paired)]:
                wall, cpu = time_once(lambda m=methods[k], lo=lo: m.fn(m.items[lo:lo + chunk]))
                spent[k][0] += wall
                spent[k][1] += cpu
        order = whole[r % len(whole):] + whole[:r % len(whole)] if whole else []
        for k in (order[::-1] if r % 2 else order):
            prepare()
            spent[k] = list(time_once(lambda m=methods[k]: m.fn(m.items)))
        for k, (wall, cpu) in spent.items():
            n_k = len(methods[k].items)
            out[k]["rates"].append(n_k / wall)
            out[k]["cpu_ms"].append(1000 * cpu / n_k)
        print(f"  round {r + 1}/{rounds}: " + ", ".join(
            f"{k} {out[k]['rates'][-1]:.1f}" for k in methods), flush=True)
    return out


def cpu_snapshot() -> tuple[float, float, float, float]:
    """(wall s, CPU s busy on the whole machine, CPU s of this process and its reaped
    children, CPU s stolen by the hypervisor), to tell how much else ran meanwhile."""
    import psutil
    t = psutil.cpu_times()
    busy = t.user + t.nice + t.system + getattr(t, "irq", 0) + getattr(t, "softirq", 0)
    own = os.times()
    return (time.perf_counter(), busy, own.user + own.system + own.children_user
            + own.children_system, getattr(t, "steal", 0.0))


def other_load(before: tuple, after: tuple) -> dict:
    """CPU that other processes (and the hypervisor) took while the benchmark ran."""
    wall = after[0] - before[0]
    other = max(0.0, (after[1] - before[1]) - (after[2] - before[2]))
    return {"wall_s": round(wall, 1), "other_cores": round(other / wall, 2),
            "steal_cores": round((after[3] - before[3]) / wall, 2)}


def machine_info() -> dict:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        cpu = platform.processor() or "unknown"
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2 ** 30
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": round(mem, 1),
            "python": platform.python_version(), "opencv": cv2.__version__,
            "numpy": np.__version__, "os": platform.platform()}


# ---------------------------------------------------------------- reporting

def paired_ratio(a: list[float], b: list[float]) -> float:
    """Median over rounds of a[i] / b[i] (each round's methods ran close together)."""
    return statistics.median(x / y for x, y in zip(a, b))


def build_rows(results: dict[str, dict[str, dict[str, list[float]]]],
               n_workers: int) -> list[dict]:
    label = {"naive": ("naive imread + resize", 1),
             "workflow": ("workflow preprocess_image", 1),
             "workflow_full": ("workflow, reduced_decode=False", 1),
             "pool_1": ("SupervisedPool + ImageWorker", 1),
             f"pool_{n_workers}": ("SupervisedPool + ImageWorker", n_workers),
             "stage": ("preprocess.run (end to end)", n_workers),
             "stage_fixed": ("preprocess.run on 1 photo (fixed cost)", n_workers)}
    rows = []
    for key, by_method in results.items():
        w, h = SIZES[key]
        naive = by_method["naive"]["rates"]
        for name, m in by_method.items():
            med = statistics.median(m["rates"])
            method, workers = label[name]
            rows.append({"key": name, "method": method, "size": f"{w}x{h}",
                         "workers": workers, "images_per_s": med,
                         "ratio_vs_naive": None if name == "stage_fixed" else
                         paired_ratio(m["rates"], naive),
                         "ms_per_image": 1000 / med, "rounds": m["rates"],
                         "parent_cpu_ms_per_image": statistics.median(m["cpu_ms"])})
    return rows


def markdown_table(rows: list[dict]) -> str:
    lines = ["| method | size | workers | images/s | ratio vs naive | ms/image "
             "| rounds (images/s) |", "| --- | --- | ---: | ---: | ---: | ---: | --- |"]
    for r in rows:
        spread = ", ".join(f"{x:.1f}" for x in r["rounds"])
        ratio = "-" if r["ratio_vs_naive"] is None else f"{r['ratio_vs_naive']:.2f}x"
        lines.append(f"| {r['method']} | {r['size']} | {r['workers']} | "
                     f"{r['images_per_s']:.1f} | {ratio} | "
                     f"{r['ms_per_image']:.1f} | {spread} |")
    return "\n".join(lines)


def row(rows: list[dict], key: str, size: str) -> dict:
    return next(r for r in rows if r["key"] == key and r["size"] == size)


def speedup(rows: list[dict], n_workers: int, size: str) -> float:
    """Median over rounds of the N-worker pool's images/s over the 1-worker pool's."""
    return paired_ratio(row(rows, f"pool_{n_workers}", size)["rounds"],
                        row(rows, "pool_1", size)["rounds"])


def goals(rows: list[dict], n_workers: int, n_small: int) -> list[dict]:
    large, small = ("{}x{}".format(*SIZES[k]) for k in ("large", "small"))
    out = []
    r = row(rows, "workflow", large)["ratio_vs_naive"]
    out.append({"goal": f"reduced decoding >= {GOAL_LARGE_RATIO:g}x naive per core, {large}",
                "value": r, "met": r >= GOAL_LARGE_RATIO})
    r = row(rows, "workflow", small)["ratio_vs_naive"]
    out.append({"goal": f"no slower than naive per core, {small} (ratio >= "
                        f"{GOAL_SMALL_RATIO:g}, i.e. within 5%)", "value": r,
                "met": r >= GOAL_SMALL_RATIO})
    for size in (large, small):
        s = speedup(rows, n_workers, size)
        out.append({"goal": f"near-linear scaling, {n_workers} vs 1 workers, {size} "
                            f"(speed-up >= {GOAL_SCALING * n_workers:.2g})",
                    "value": s, "met": n_workers > 1 and s >= GOAL_SCALING * n_workers})
    pool, stage = row(rows, f"pool_{n_workers}", small), row(rows, "stage", small)
    r = paired_ratio(stage["rounds"], pool["rounds"])
    out.append({"goal": f"the stage at >= {GOAL_STAGE:g} of its bare pool's rate, {small}, "
                        f"{n_small} photos", "value": r, "met": r >= GOAL_STAGE})
    fixed = 1 / row(rows, "stage_fixed", small)["images_per_s"]  # seconds
    net = [n_small / max(n_small / x - fixed, 1e-9) for x in stage["rounds"]]
    r = paired_ratio(net, pool["rounds"])
    out.append({"goal": f"the same without the stage's fixed cost ({fixed:.2f} s, the "
                        "1-photo row): its rate on a large corpus", "value": r,
                "met": r >= GOAL_STAGE})
    return out


def report(meta: dict, rows: list[dict], goal_list: list[dict], notes: list[str]) -> str:
    m = meta["machine"]
    text = [f"Date: {meta['date']}  ",
            f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB; "
            f"Python {m['python']}, OpenCV {m['opencv']}, NumPy {m['numpy']}  ",
            f"Command: `{meta['command']}`  ",
            f"Photos: {meta['photos']}; {meta['rounds']} rounds, median shown  ",
            f"Other load during the run: other processes used {meta['other']['other_cores']}"
            f" of {m['cores']} cores on average, hypervisor steal "
            f"{meta['other']['steal_cores']} ({meta['other']['wall_s']} s run)",
            "", markdown_table(rows), ""]
    text += [f"- {n}" for n in notes]
    text += [f"- goal: {g['goal']}: {g['value']:.2f} -> {'met' if g['met'] else 'NOT met'}"
             for g in goal_list]
    return "\n".join(text)


# ---------------------------------------------------------------- main

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--quick", action="store_true",
                   help=f"fewer photos ({QUICK['large']} large, {QUICK['small']} small)")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "out",
                   help="folder for the test photos and preprocess.json (default bench/out)")
    p.add_argument("--rounds", type=int, help=f"interleaved rounds (default {FULL['rounds']}, "
                                              f"{QUICK['rounds']} with --quick)")
    p.add_argument("--large", type=int, help="number of 4000x3000 photos (default 24)")
    p.add_argument("--small", type=int, help="number of 500x375 photos (default 2000)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                   help="workers for the 'all workers' rows (default os.cpu_count())")
    args = p.parse_args(argv)
    base = QUICK if args.quick else FULL
    args.passes = base["passes"]
    for k in ("large", "small", "rounds"):
        if getattr(args, k) is None:
            setattr(args, k, base[k])
        if getattr(args, k) < 1:
            p.error(f"--{k} must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if str(REPO) not in sys.path:  # the package lives beside bench/, and spawned pool
        sys.path.insert(0, str(REPO))  # workers inherit this path from the parent
    from workflow.execution.pool import SupervisedPool
    from workflow.inputs.imaging import ImageOptions
    from workflow.stages.preprocess import ImageWorker

    cv2.setNumThreads(1)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    photos = ensure_photos(out, {"large": args.large, "small": args.small})
    cpu0 = cpu_snapshot()
    n_workers = max(1, args.workers)
    meta = {"date": dt.date.today().isoformat(), "machine": machine_info(),
            "command": " ".join(["python", os.path.relpath(__file__, Path.cwd()),
                                 *(argv if argv is not None else sys.argv[1:])]),
            "photos": ", ".join(f"{len(v)} x {k} {SIZES[k][0]}x{SIZES[k][1]} JPEG "
                                f"q{PHOTO_QUALITY}" for k, v in photos.items()),
            "rounds": args.rounds}
    print(f"machine: {meta['machine']}", flush=True)

    results: dict[str, dict[str, dict[str, list[float]]]] = {}
    notes = []
    worker = ImageWorker(ImageOptions())
    with ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="stage-",
                                                                    dir=out)))
        pools = {w: stack.enter_context(SupervisedPool(worker, w, 300.0, pool_failure,
                                                       init=single_thread, split=True))
                 for w in sorted({1, n_workers})}
        for key, paths in photos.items():
            passes = args.passes if key == "small" else 1
            strs = [str(p) for p in paths] * passes
            datas = [p.read_bytes() for p in paths]
            mb = sum(map(len, datas)) / len(datas) / 1e6
            datas *= passes
            reduced, full = ImageOptions(), ImageOptions(reduced_decode=False)
            methods = {
                "naive": Method(run_naive, strs, paired=True),
                "workflow": Method(partial(run_workflow, opts=reduced), strs, paired=True),
                "workflow_full": Method(partial(run_workflow, opts=full), strs, paired=True),
                **{f"pool_{w}": Method(partial(run_pool, pl), datas)
                   for w, pl in pools.items()},
                "stage": Method(partial(run_stage, stage_folder(paths, work),
                                        workers=n_workers, work_dir=work), paths),
            }
            if key == "small":
                methods["stage_fixed"] = Method(partial(
                    run_stage, stage_folder(paths[:1], work), workers=n_workers,
                    work_dir=work), paths[:1])
            size = "{}x{}".format(*SIZES[key])
            print(f"{key}: {len(paths)} photos {size}, {mb:.2f} MB each on average",
                  flush=True)
            for name, m in methods.items():  # warm-up, untimed
                if not name.startswith("stage"):
                    m.fn(m.items[:2 * n_workers])
            results[key] = measure(methods, args.rounds, CHUNK[key],
                                   partial(read_all, paths))
            notes.append(f"{size}: {len(paths)} photos, {mb:.2f} MB on average"
                         + (f"; each timed run of the single-process and pool methods goes "
                            f"{passes} times over them" if passes > 1 else ""))
            if key == "large":
                k = min(4, len(paths))
                notes.append(f"reduced vs full decoding, {size}: the 256-px outputs differ "
                             f"by {psnr_reduced_vs_full(strs, k):.1f} dB PSNR (mean of {k} "
                             "photos)")

    meta["other"] = other_load(cpu0, cpu_snapshot())
    if meta["other"]["other_cores"] + meta["other"]["steal_cores"] > 0.1:
        notes.insert(0, f"WARNING: other processes took {meta['other']['other_cores']} cores "
                     "on average during the run; the timings (the all-workers rows above "
                     "all) are lower than on a quiet machine")
    rows = build_rows(results, n_workers)
    for key in results:
        size = "{}x{}".format(*SIZES[key])
        pn = row(rows, f"pool_{n_workers}", size)
        single = row(rows, "workflow", size)["rounds"]
        notes.append(f"pool speed-up, {n_workers} workers over 1, {size}: "
                     f"{speedup(rows, n_workers, size):.2f}x; over the single-process "
                     f"workflow row: {paired_ratio(pn['rounds'], single):.2f}x (1 worker: "
                     f"{paired_ratio(row(rows, 'pool_1', size)['rounds'], single):.2f}x); "
                     f"the parent used {pn['parent_cpu_ms_per_image']:.2f} ms CPU per image "
                     f"to feed {n_workers} workers")
    notes.append("ratio vs naive and the speed-ups are medians over the rounds of the "
                 "ratio within each round; ms/image is wall time per image "
                 "(1000 / images/s), so for several workers "
                 "it is not the time one image takes; the stage row includes starting the "
                 "workers, planning, HDF5 writing and the store commit")
    goal_list = goals(rows, n_workers, len(photos["small"]))
    text = report(meta, rows, goal_list, notes)
    print("\n" + text)
    (out / "preprocess.json").write_text(json.dumps(
        {**meta, "rows": rows, "goals": goal_list, "notes": notes, "markdown": text,
         "seconds": round(time.perf_counter() - t_start, 1)}, indent=1) + "\n")
    print(f"\nwrote {out / 'preprocess.json'} ({time.perf_counter() - t_start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
