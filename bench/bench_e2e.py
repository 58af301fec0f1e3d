#!/usr/bin/env python
"""End-to-end benchmark: all seven stage scripts on a real-image corpus, and a 2M projection.

1. Corpus (made once under --out, reused while its manifest matches): the real images in
   ../shared/assets/images (flowers12: 960 JPEGs 224x224; cifar10-test: 10,000 JPEGs
   32x32; photos/: 7 larger photos, BMP and JPEG) plus seeded, deterministic variants
   made with OpenCV up to --n images: a crop (50-100% of the area, aspect jittered), a
   mirror, a quarter turn or a small rotation, a scale change (half of the variants get a
   long side of 500-1000 px, with mild sensor-like noise where upscaled, so that decode
   sizes are realistic; the others 0.6-1.5x), brightness/contrast, a few in grayscale,
   and JPEG re-encoding at quality 60-95. Every image sits in a class folder
   (`flowers-daisy/`, `cifar-cat/`, `photo-parrot/`; a variant in its source's class),
   so the evaluation's precision by class still means something. Below the default
   --n, the originals are a seeded sample keeping the full corpus's share of originals
   and variants, so a --quick run sees the same mix of sizes. Without ../shared/assets
   the benchmark stops with a message (the demo corpus is no stand-in: 60 subjects).
2. Stages: `python scripts/01_preprocess.py ... 08_duplicates.py` in order, each as its
   own child process into a fresh store under --out, with the stages' defaults apart from
   --model/--weights (EfficientNet-B0 with --weights none by default: the same compute as
   ImageNet weights, which cannot be downloaded here; on a CPU it runs on the CPU runtime
   in the precision `--precision auto` picks, as a user's run would; a pretrained model
   of the assets, e.g. MobileNet v2, gives features whose evaluation and near-duplicate
   groups mean something). For each stage: wall seconds,
   items and rate, CPU cores busy (user + system time of the stage and its reaped
   workers, from os.wait4, over wall time), peak RSS of its largest process (the
   highest VmHWM in /proc) and of its whole process tree (RSS summed over processes),
   sampled every 0.05 s at first, every 0.5 s after 10 s (os.wait4's ru_maxrss is
   not used: on Linux a child's maximum RSS starts from its parent's RSS at fork, so it
   reports at least this process's size), and the stage's own figures (its summary
   line, preprocess's report, the time split of extract, evaluate's recall@10 and
   precision@10 per mode). Between extract and train, the stage's decoding of stored
   JPEGs to the model input is timed in this process, in its thread executor with 1
   and 2 threads: the bound on extraction on a GPU runtime.
3. Projection for 2,000,000 images on a Colab T4 runtime (2 vCPUs) and on a CPU-only
   2-vCPU runtime, from the measured rates, with every assumption printed. Train, add,
   prefilter and evaluate at 2M take the times measured by bench/bench_index.py and
   bench/bench_search.py (read from bench/out/index/index.json and bench/out/search.json
   where present, else the figures in BENCHMARKS.md). The T4's EfficientNet-B0 rate is a
   parameter, --t4-model-rate: its default of 1,000 images/s (Keras, float16 mixed
   precision, batch 256) is an estimate, not a measurement: NVIDIA's DeepLearningExamples
   (PyTorch EfficientNet README) report 6,176 images/s for EfficientNet-B0 with AMP at
   batch 256 on a V100 16GB; a T4 has about a third of the V100's memory bandwidth (320
   vs 900 GB/s), which bounds this depthwise-convolution network, so about 2,000
   images/s for that tuned code; halved for Keras/TensorFlow without TensorRT on Colab's
   70 W T4, which clocks down under sustained load. A cross-check: this workflow's
   model-only rate on an H100 (Keras on JAX, BENCHMARKS.md) is 18,400 images/s; scaled
   by memory bandwidth (3,350 vs 320 GB/s) that is about 1,760 on a T4 before the same
   halving. Measure it on the runtime with
   bench/bench_extract.py and pass the figure.

Prints a Markdown report (date | machine | command first) and writes it with every
figure as JSON to bench/out/e2e.json (--json).

    python bench/bench_e2e.py            # 20,000 images: ~20-25 min on 2 cores, ~1 GB of disk
    python bench/bench_e2e.py --quick    # 1,500 images: ~5 min
    python bench/bench_e2e.py \
        --model ../shared/assets/models/mobilenet_v1_1.0_224_quant_embedding_extractor.tflite
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import multiprocessing
import os
import platform
import re
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
ASSETS = REPO.parent / "shared" / "assets"
IMAGES = ASSETS / "images"

FULL_N = 20_000               # default corpus size
QUICK_N = 1_500               # with --quick
PROJECT_N = 2_000_000         # the projection's corpus size (the workflow's design point)
CORPUS_VERSION = 1            # bump when the variants change: the corpus is then remade
IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
# Variants: share with a long side of 500-1000 px, else a scale of SCALE; JPEG quality.
LARGE_SHARE, LARGE_SIDE, SCALE, QUALITY = 0.5, (500, 1000), (0.6, 1.5), (60, 95)
GRAY_SHARE = 0.05             # variants saved as 1-channel (grayscale) JPEGs
PHOTO_SOURCE_SHARE = 0.5      # variants made from flowers12 / photos (the rest: cifar10)
NOISE_SIGMA = 4.0             # grey levels of noise on upscaled variants (sensor-like)
CHUNK = 100                   # corpus items per job of the generating processes
SIZE_BINS = [(0, 64), (65, 255), (256, 499), (500, 1000), (1001, 10**9)]  # long side, px
SEARCH_QUERIES = 5            # image queries given to 06_search.py

# Stage times at 2M x 1280 on this 2-core machine (BENCHMARKS.md), used where
# bench/out/index/index.json or bench/out/search.json are absent: train, add, prefilter
# and evaluate of 2026-12-07 (bench_index.py, bench_search.py index); duplicates of
# 2026-11-29 (bench_duplicates.py: 2,026,001 images in 17.4 min).
INDEX_2M_SECONDS = {"train": 175.0, "add": 372.0, "prefilter": 159.0, "evaluate": 753.0,
                    "duplicates": 1044.0}
INDEX_2M_SOURCE = {"duplicates": "BENCHMARKS.md (2,026,001 x 1280, 2026-11-29)"}
T4_MODEL_RATE = 1000.0        # images/s, EfficientNet-B0 on a T4 (see the docstring)

STAGES = [  # (name, script)
    ("preprocess", "01_preprocess.py"), ("extract", "02_extract.py"),
    ("train", "03_train.py"), ("add", "04_add.py"), ("prefilter", "05_prefilter.py"),
    ("search", "06_search.py"), ("evaluate", "07_evaluate.py"),
    ("duplicates", "08_duplicates.py")]


# ---------------------------------------------------------------- corpus

def list_originals(root: Path) -> list[tuple[str, str]]:
    """(path, class) of every real image under `root`, sorted: flowers12 and cifar10 by
    their class folders, each photo of photos/ its own class."""
    out = []
    for dataset, prefix in (("flowers12", "flowers"), ("cifar10-test", "cifar")):
        for p in sorted((root / dataset).rglob("*")):
            if p.suffix.lower() in IMAGE_EXTS and p.is_file():
                out.append((str(p), f"{prefix}-{p.parent.name}"))
    for p in sorted((root / "photos").glob("*")):
        if p.suffix.lower() in IMAGE_EXTS and p.is_file():
            out.append((str(p), f"photo-{p.stem}"))
    return out


def corpus_plan(originals: list[tuple[str, str]], n: int, seed: int) -> list[tuple]:
    """The corpus as jobs: ("copy", src, rel) for an original kept as it is, and
    ("variant", src, rel, item) for a generated one (item seeds its transforms).

    The share of originals is that of the default corpus (all originals, topped up with
    variants to FULL_N), so smaller corpora have the same mix; above FULL_N every
    original is kept."""
    rng = np.random.default_rng([seed, 0])
    k = min(len(originals), round(n * len(originals) / max(n, FULL_N)))
    keep = np.sort(rng.choice(len(originals), k, replace=False))
    jobs: list[tuple] = []
    for i in keep:
        src, cls = originals[i]
        jobs.append(("copy", src, f"{cls}/{Path(src).name}"))
    photo = [i for i, (_, c) in enumerate(originals) if not c.startswith("cifar-")]
    small = [i for i, (_, c) in enumerate(originals) if c.startswith("cifar-")]
    for j in range(n - k):
        pool = photo if (rng.random() < PHOTO_SOURCE_SHARE and photo) or not small else small
        src, cls = originals[pool[int(rng.integers(len(pool)))]]
        jobs.append(("variant", src, f"{cls}/v-{j:06d}.jpg", j))
    return jobs


class _Noise:
    """Per-process noise tiles (seeded, the same in every process): a variant adds a
    window of them at an offset of its own, so the noise costs two saturating adds."""
    pos: np.ndarray | None = None
    neg: np.ndarray | None = None

    @classmethod
    def tiles(cls, seed: int) -> tuple[np.ndarray, np.ndarray]:
        if cls.pos is None:
            side = LARGE_SIDE[1] + 24
            noise = np.random.default_rng([seed, 1]).normal(0, NOISE_SIGMA, (side, side, 3))
            noise = noise.round().clip(-255, 255)
            cls.pos = np.maximum(noise, 0).astype(np.uint8)
            cls.neg = np.maximum(-noise, 0).astype(np.uint8)
        return cls.pos, cls.neg


def make_variant(src: np.ndarray, rng: np.random.Generator, seed: int) -> tuple[np.ndarray, int]:
    """A transformed copy of `src` (BGR) and the JPEG quality to save it with."""
    h, w = src.shape[:2]
    area, aspect = rng.uniform(0.5, 1.0), math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
    cw = int(np.clip(round(w * math.sqrt(area * aspect)), min(8, w), w))
    ch = int(np.clip(round(h * math.sqrt(area / aspect)), min(8, h), h))
    x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    img = src[y:y + ch, x:x + cw]
    if rng.random() < 0.5:
        img = img[:, ::-1]
    img = np.ascontiguousarray(img)
    turn = rng.random()
    if turn < 0.25:  # a quarter or half turn, as a phone photo saved without EXIF
        img = cv2.rotate(img, (cv2.ROTATE_90_CLOCKWISE, cv2.ROTATE_180,
                               cv2.ROTATE_90_COUNTERCLOCKWISE)[int(rng.integers(3))])
    elif turn < 0.4:  # a small tilt, borders reflected
        m = cv2.getRotationMatrix2D((img.shape[1] / 2, img.shape[0] / 2),
                                    rng.uniform(-15, 15), 1.0)
        img = cv2.warpAffine(img, m, (img.shape[1], img.shape[0]),
                             borderMode=cv2.BORDER_REFLECT_101)
    h, w = img.shape[:2]
    large = rng.random() < LARGE_SHARE
    s = (rng.integers(LARGE_SIDE[0], LARGE_SIDE[1] + 1) / max(h, w) if large
         else rng.uniform(*SCALE))
    nw, nh = max(16, round(w * s)), max(16, round(h * s))
    img = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_CUBIC if s > 1 else cv2.INTER_AREA)
    if large and s > 1.5:  # upscaled a lot: add noise, or the JPEG is unrealistically smooth
        pos, neg = _Noise.tiles(seed)
        oy = int(rng.integers(0, pos.shape[0] - nh + 1))
        ox = int(rng.integers(0, pos.shape[1] - nw + 1))
        img = cv2.subtract(cv2.add(img, pos[oy:oy + nh, ox:ox + nw]), neg[oy:oy + nh, ox:ox + nw])
    if rng.random() < 0.5:  # exposure and contrast
        img = cv2.convertScaleAbs(img, alpha=rng.uniform(0.7, 1.3), beta=rng.uniform(-30, 30))
    if rng.random() < GRAY_SHARE:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
    return img, int(rng.integers(QUALITY[0], QUALITY[1] + 1))


def make_items(jobs: list[tuple], folder: str, seed: int) -> list[tuple[str, int, int, int]]:
    """Worker: write a chunk of corpus items; (extension, width, height, bytes) of each."""
    out = []
    for job in jobs:
        kind, src, rel = job[:3]
        dest = Path(folder) / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        if kind == "copy":
            data = Path(src).read_bytes()
            img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        else:
            img, quality = make_variant(cv2.imread(src, cv2.IMREAD_COLOR),
                                        np.random.default_rng([seed, 2, job[3]]), seed)
            ok, enc = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])
            assert ok, rel
            data = enc.tobytes()
        dest.write_bytes(data)
        out.append((dest.suffix.lower(), img.shape[1], img.shape[0], len(data)))
    return out


def _single_thread() -> None:
    """Corpus worker initialiser: OpenCV on one thread (the processes are the parallelism)."""
    cv2.setNumThreads(1)


def size_table(items: list[tuple[str, int, int, int]]) -> list[dict]:
    """Images, share and mean file size per long-side bin."""
    rows = []
    for lo, hi in SIZE_BINS:
        sel = [b for _, w, h, b in items if lo <= max(w, h) <= hi]
        if sel:
            rows.append({"long_side": f"{lo}-{hi} px" if hi < 10**9 else f"> {lo - 1} px",
                         "images": len(sel), "share": len(sel) / len(items),
                         "mean_kb": sum(sel) / len(sel) / 1e3})
    return rows


def build_corpus(out: Path, n: int, seed: int, workers: int) -> dict:
    """The corpus folder under `out`, made once; its manifest (written last) says what
    is in it and how long it took to make."""
    if not IMAGES.is_dir():
        raise SystemExit(f"this benchmark needs the real test images at {IMAGES} "
                         "(../shared/assets relative to the repository); they are absent")
    folder = out / f"corpus-{n}-seed{seed}"
    manifest_path = folder / "manifest.json"
    if manifest_path.exists():
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("version") == CORPUS_VERSION:
            return {**manifest, "reused": True}
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    t = time.perf_counter()
    originals = list_originals(IMAGES)
    if not originals:
        raise SystemExit(f"no images found under {IMAGES}")
    jobs = corpus_plan(originals, n, seed)
    chunks = [jobs[i:i + CHUNK] for i in range(0, len(jobs), CHUNK)]
    print(f"making the corpus: {n:,} images in {folder} with {workers} processes ...",
          flush=True)
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                             initializer=_single_thread) as ex:
        items = [x for part in ex.map(make_items, chunks, [str(folder)] * len(chunks),
                                      [seed] * len(chunks)) for x in part]
    seconds = time.perf_counter() - t
    manifest = {
        "version": CORPUS_VERSION, "n": n, "seed": seed, "folder": str(folder),
        "originals": sum(j[0] == "copy" for j in jobs),
        "variants": sum(j[0] == "variant" for j in jobs),
        "classes": len({j[2].split("/")[0] for j in jobs}),
        "megabytes": sum(x[3] for x in items) / 1e6, "seconds": seconds, "workers": workers,
        "formats": dict(Counter(x[0] for x in items)), "sizes": size_table(items),
        "megapixels_mean": float(np.mean([w * h for _, w, h, _ in items])) / 1e6}
    manifest_path.write_text(json.dumps(manifest, indent=1) + "\n")
    return {**manifest, "reused": False}


# ---------------------------------------------------------------- running the stages

def peak_rss(pid: int) -> int:
    """A process's own peak RSS so far (VmHWM, bytes), 0 where it cannot be read."""
    try:
        with open(f"/proc/{pid}/status") as f:
            return next((int(ln.split()[1]) * 1024 for ln in f if ln.startswith("VmHWM:")), 0)
    except (OSError, ValueError):
        return 0


class TreeRSS(threading.Thread):
    """Samples a process and all its descendants: keeps the peak of their summed RSS
    and the highest peak RSS (VmHWM) of any one of them. Samples come every 0.05 s
    for the first second, 0.1 s up to 10 s, then every 0.5 s (short stages are brief)."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid, self.peak, self.largest = pid, 0, 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        import psutil
        try:
            root = psutil.Process(self.pid)
        except psutil.Error:
            return
        t0 = time.monotonic()
        while not self._stop_event.is_set():
            total = 0
            try:
                for p in [root, *root.children(recursive=True)]:
                    try:
                        total += p.memory_info().rss
                    except psutil.Error:  # a worker that just exited
                        continue
                    self.largest = max(self.largest, peak_rss(p.pid))
            except psutil.Error:  # the stage itself has exited
                return
            self.peak = max(self.peak, total)
            age = time.monotonic() - t0
            self._stop_event.wait(0.05 if age < 1 else 0.1 if age < 10 else 0.5)

    def stop(self) -> tuple[int, int]:
        """(peak of the tree's summed RSS, peak RSS of its largest process), bytes."""
        self._stop_event.set()
        self.join()
        return self.peak, self.largest


def run_stage(name: str, script: str, args: list[str], logs: Path) -> dict:
    """Run one stage script as a child process, as a user would; its wall time, CPU time
    (from wait4) and peak RSS (sampled: largest process, whole tree)."""
    cmd = [sys.executable, f"scripts/{script}", *args]
    out, err = logs / f"{name}.out", logs / f"{name}.log"
    print(f"  {name}: {' '.join(cmd[1:])}", flush=True)
    t = time.perf_counter()
    with open(out, "w") as fo, open(err, "w") as fe:
        p = subprocess.Popen(cmd, cwd=REPO, stdout=fo, stderr=fe)
        sampler = TreeRSS(p.pid)
        sampler.start()
        _, status, usage = os.wait4(p.pid, 0)
        p.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - t
    tree_peak, largest = sampler.stop()
    if p.returncode != 0:
        raise SystemExit(f"{name} failed with exit status {p.returncode}:\n"
                         f"{err.read_text()[-3000:]}\n{out.read_text()[-2000:]}")
    cpu = usage.ru_utime + usage.ru_stime
    return {"stage": name, "command": "python " + " ".join(
                os.path.relpath(c, REPO) if os.path.isabs(c) and c.startswith(str(REPO))
                else c for c in cmd[1:]),
            "seconds": seconds, "cpu_seconds": cpu, "cores_busy": cpu / seconds,
            "peak_rss_mb": largest / 2**20, "tree_peak_rss_mb": tree_peak / 2**20,
            "stdout": out.read_text(), "log": err.read_text()}


def marker(store: Path, stage: str, unit: str) -> dict:
    return json.loads((store / "_done" / stage / f"{unit}.json").read_text())


def markers(store: Path, stage: str) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((store / "_done" / stage).glob("*.json"))]


def summary_line(stdout: str, stage: str) -> str:
    """The stage's own one-line summary (`<stage> complete: ...`)."""
    return next((ln for ln in stdout.splitlines() if ln.startswith(f"{stage} ")), "")


def stage_figures(r: dict, store: Path) -> None:
    """Items, rate and the stage's own reported figures, added to its row `r`."""
    name = r["stage"]
    r["summary"] = summary_line(r["stdout"], name)
    if name == "preprocess":
        report = json.loads((store / "images" / "report.json").read_text())
        r["items"], r["unit"] = report["images"], "images"
        own = re.search(r"; ([\d.]+) s\. Store", r["summary"])  # "...; 1.8 s. Store: ..."
        r["own"] = {"totals": report["totals"], "failures": len(report["failures"]),
                    "duplicates": report["duplicates"]["count"],
                    "shards": marker(store, "preprocess", "plan")["shards"],
                    "stage_seconds": float(own.group(1)) if own else None}
        # steady: without the interpreter's start and imports, a fixed cost per run
        r["steady_rate"] = r["items"] / r["own"]["stage_seconds"] if own else None
    elif name == "extract":
        shards = [m for m in markers(store, "extract") if m["unit"].startswith("shard-")]
        r["items"], r["unit"] = sum(m["n"] for m in shards), "images"
        # "...; 14.0 s (read 0.3 s, decode wait 0.1 s, infer 5.8 s, write 0.0 s)"
        split = re.search(r"\(([^()]*)\)\. Store", r["summary"])
        timings = {k: float(v) for k, v in re.findall(r"([a-z][a-z ]*?) ([\d.]+) s",
                                                      split.group(1))} if split else {}
        load = re.search(r"loading the model took ([\d.]+) s", r["log"])
        picked = re.search(r"precision auto: .*", r["log"])
        model = re.search(r"; model \S+ \((\w+), (\w+)\)", r["log"])  # (runtime, precision)
        r["own"] = {"timings_s": timings, "model_load_s": float(load.group(1)) if load else None,
                    "dim": shards[0]["dim"] if shards else None,
                    "runtime": model.group(1) if model else None,
                    "precision": model.group(2) if model else None,
                    "auto_line": picked.group(0) if picked else None}
        busy = sum(timings.values())
        r["steady_rate"] = r["items"] / busy if busy else None
    elif name == "train":
        m = marker(store, "train", "index")
        r["items"], r["unit"] = m["plan"]["n"], "vectors"
        r["own"] = {"factory": m["factory"], "plan": m["plan"]}
    elif name == "add":
        m = marker(store, "add", "index")
        r["items"], r["unit"] = m["ntotal"], "vectors"
        r["own"] = {"on_disk": m["on_disk"]}
    elif name == "prefilter":
        m = marker(store, "prefilter", "annoy")
        r["items"], r["unit"] = m["n"], "vectors"
        r["own"] = {"trees": m["trees"], "dim": m["dim"]}
    elif name == "search":
        lines = [ln for ln in r["stdout"].splitlines() if ln.startswith("{")]
        r["items"], r["unit"] = len(lines), "queries"
        r["summary"] = f"{len(lines)} image queries answered with --json and a result page"
        r["own"] = {"first": json.loads(lines[0]) if lines else None}
    elif name == "evaluate":
        report = json.loads((store / "evaluation" / "report.json").read_text())
        r["items"], r["unit"] = report["queries"], "queries"
        prec = (report.get("precision") or {}).get("by_mode", {})
        r["own"] = {"n": report["n"], "d": report["d"], "index": report["index"],
                    "target_recall": report["target_recall"],
                    "recall@10": {m: t["recall@10"] for m, t in report["tuned"].items()},
                    "params": {m: t["params"] for m, t in report["tuned"].items()},
                    "p50_ms": {m: t["p50_ms"] for m, t in report["tuned"].items()},
                    "P@10": {m: p["P@10"]["mean"] for m, p in prec.items()}}
        r["report"] = report
    elif name == "duplicates":
        knn = [m for m in markers(store, "duplicates") if m["unit"].startswith("shard-")]
        r["items"], r["unit"] = sum(m["n"] for m in knn), "images"
        groups = re.search(r"complete: ([\d,]+) groups holding ([\d,]+) images", r["summary"])
        threshold = re.search(r"threshold ([\d.]+), measured", r["log"])
        split = dict(re.findall(r"INFO [\w.]+: (.*?) took ([\d.]+) s", r["log"]))
        r["own"] = {"groups": int(groups.group(1).replace(",", "")) if groups else None,
                    "grouped": int(groups.group(2).replace(",", "")) if groups else None,
                    "threshold": float(threshold.group(1)) if threshold else None,
                    "timings_s": {k: float(v) for k, v in split.items()}}
    r["rate"] = r["items"] / r["seconds"]


def decode_rates(store: Path, size: int, batch: int = 32, limit: int = 3000) -> dict:
    """Stored JPEGs -> model input in images/s: the extract stage's own decoding
    (DecodeChunk) in this process, and in its thread executor with 1 thread (the stage's
    default on 2 vCPUs: --workers = CPUs - 1) and 2: what feeds the model on a GPU."""
    from workflow.execution.decoding import DecodeChunk
    from workflow.execution.executors import make_executor
    from workflow.formats.images import read_image_shard
    jpegs = []
    for path in sorted((store / "images").glob("shard-*.h5")):
        s = read_image_shard(str(path))
        jpegs += [j for j, st in zip(s["jpeg"], s["status"]) if st == 0]
    jpegs = jpegs[::max(1, len(jpegs) // limit)][:limit]  # spread over every class
    chunks = [jpegs[i:i + batch] for i in range(0, len(jpegs), batch)]
    fn = DecodeChunk(size)
    fn(chunks[0])  # warm up
    t = time.perf_counter()
    for c in chunks:
        fn(c)
    out = {"images": len(jpegs), "size": size, "in_process": len(jpegs) / (time.perf_counter() - t)}
    for workers in (1, 2):
        with make_executor("thread", fn, workers, 600, lambda *a: None) as pool:
            list(pool.imap_unordered(enumerate(chunks[:workers])))  # warm up
            t = time.perf_counter()
            list(pool.imap_unordered(enumerate(chunks)))
            out[f"threads_{workers}"] = len(jpegs) / (time.perf_counter() - t)
    return out


def cpu_snapshot() -> tuple[float, float, float]:
    """(wall s, CPU s busy on the whole machine, CPU s of this process and its reaped
    children), to tell how much else ran during the benchmark."""
    import psutil
    t = psutil.cpu_times()
    own = os.times()
    return (time.perf_counter(), t.user + t.nice + t.system + getattr(t, "irq", 0)
            + getattr(t, "softirq", 0),
            own.user + own.system + own.children_user + own.children_system)


# ---------------------------------------------------------------- projection

def index_figures() -> tuple[dict, dict]:
    """Seconds of train, add, prefilter and evaluate at 2M, and where each comes from."""
    seconds = dict(INDEX_2M_SECONDS)
    source = {s: INDEX_2M_SOURCE.get(s, "BENCHMARKS.md (2M x 1280)") for s in INDEX_2M_SECONDS}
    for path in (REPO / "bench" / "out" / "index" / "index.json",
                 REPO / "bench" / "out" / "index.json"):
        if path.exists():
            rep = json.loads(path.read_text())
            if rep.get("n") == PROJECT_N:
                for s in rep["stages"]:
                    seconds[s["stage"]] = s["seconds"]
                    source[s["stage"]] = f"{os.path.relpath(path, REPO)} ({rep['date']})"
            break
    path = REPO / "bench" / "out" / "search.json"
    if path.exists():
        rep = json.loads(path.read_text())
        if rep.get("n") == PROJECT_N and "seconds" in rep:
            seconds["evaluate"] = rep["seconds"]
            source["evaluate"] = f"bench/out/search.json ({rep.get('date', '?')})"
    return seconds, source


def project(rows: dict, decode: dict, a, tflite: bool) -> tuple[list[dict], list[str]]:
    """Hours per stage for PROJECT_N images on a T4 runtime and a CPU-only runtime, both
    with 2 vCPUs, and the assumptions behind them."""
    n, f = PROJECT_N, a.cpu_factor
    pre, ext, search = rows["preprocess"], rows["extract"], rows["search"]
    pre_rate = (pre["steady_rate"] or pre["rate"]) * f
    idx, idx_source = index_figures()
    load = ext["own"]["model_load_s"] or 0.0
    cpu_model = ext["steady_rate"] * f
    decode1 = decode["threads_1"] * f
    gpu_model = cpu_model if tflite else a.t4_model_rate
    t4_extract = min(decode1, gpu_model)
    bound = ("TFLite runs on the CPU (no GPU delegate): as CPU-only" if tflite else
             "decoding (1 thread)" if decode1 < gpu_model else "T4 model rate")
    out = [
        {"stage": "preprocess", "bound": "CPU (2 worker processes)",
         "rate": f"{pre_rate:,.0f} images/s", "source": "measured here",
         "t4_h": n / pre_rate / 3600, "cpu_h": n / pre_rate / 3600},
        {"stage": "extract", "bound": f"T4: {bound}; CPU: model on 2 cores",
         "rate": f"T4 {t4_extract:,.{0 if t4_extract >= 100 else 1}f}, CPU "
                 f"{cpu_model:,.1f} images/s",
         "source": "measured here" + ("" if tflite else f"; T4 model rate {gpu_model:,.0f}/s "
                                      "assumed (--t4-model-rate)"),
         "t4_h": (n / t4_extract + load) / 3600, "cpu_h": (n / cpu_model + load) / 3600}]
    for stage in ("train", "add", "prefilter", "evaluate", "duplicates"):
        s = idx[stage] / f
        unit = "images" if stage == "duplicates" else "vectors"
        rate = f"1,000 queries in {s:,.0f} s" if stage == "evaluate" else f"{n / s:,.0f} {unit}/s"
        out.append({"stage": stage, "bound": "CPU (Faiss / Annoy on 2 cores)", "rate": rate,
                    "source": idx_source[stage], "t4_h": s / 3600, "cpu_h": s / 3600})
    out.append({"stage": "search", "bound": "fixed: model and index load",
                "rate": f"{search['items']} queries in {search['seconds']:.0f} s",
                "source": "measured here (not scaled)", "t4_h": search["seconds"] / 3600,
                "cpu_h": search["seconds"] / 3600})
    out.append({"stage": "total", "bound": "", "rate": "", "source": "",
                "t4_h": sum(r["t4_h"] for r in out), "cpu_h": sum(r["cpu_h"] for r in out)})
    mix = ", ".join(f"{r['share']:.0%} {r['long_side']}" for r in a.corpus["sizes"])
    notes = [
        f"both runtimes have 2 vCPUs, each as fast as one core of this machine times "
        f"--cpu-factor {f:g} (Colab's 2 vCPUs are often the two hyperthreads of one Xeon "
        "core: pass a factor below 1 if so); CPU-bound stages take the time measured here "
        "divided by that factor",
        "preprocess is CPU-bound (decode, resize, re-encode in 2 worker processes) and "
        "runs at the rate measured here (images / the seconds the stage reports, i.e. "
        f"without Python's start and imports) on this corpus's mix of sizes ({mix}; "
        f"{a.corpus['megapixels_mean']:.2f} megapixels on average); camera-size photos are "
        "far slower (BENCHMARKS.md: 38 images/s for 4000x3000, i.e. 14.6 h for 2M). It needs "
        "no GPU, so on Colab it can run on a CPU runtime: same hours",
        "reading the sources and writing the store are at local-disk speed as here; reading "
        "from Drive (one file at a time, or tar members) may be slower and is not included",
        "extract, CPU-only: the model on 2 cores at the steady rate measured here "
        f"({ext['steady_rate']:,.1f} images/s = images / the stage's read + decode wait + "
        f"infer + write seconds), plus loading the model once ({load:.1f} s)",
        ("extract, T4 runtime: the model is TFLite, which the workflow runs on the CPU, so "
         "the GPU does not help: the CPU-only rate" if tflite else
         f"extract, T4 runtime: min(decoding of the stored JPEGs to {decode['size']} px in "
         f"the stage's default 1 decoding thread (--workers = vCPUs - 1), measured here at "
         f"{decode['threads_1']:,.0f} images/s ({decode['threads_2']:,.0f} with 2 threads); "
         f"the T4's model rate, assumed {a.t4_model_rate:,.0f} images/s) = "
         f"{t4_extract:,.0f} images/s. The default model rate is an estimate (see --help: "
         "NVIDIA's V100 AMP figure scaled by memory bandwidth, halved for Keras and Colab's "
         "power-capped T4), not a measurement; the decoding rate is of this corpus's mix "
         "of sizes, and an upper bound, as the inference loop's own CPU work (batching, "
         "copying to the GPU, normalising, writing) shares the 2 vCPUs"),
        "train, add, prefilter, evaluate and duplicates at 2M take the times measured on "
        "this 2-core machine by bench/bench_index.py, bench/bench_search.py and "
        "bench/bench_duplicates.py on 2M x 1280 synthetic "
        "features (EfficientNet-B0's dimension" + (
            f"; this run's features have {ext['own']['dim']}" if ext["own"]["dim"] != 1280
            else "") + "), on the CPU for both runtimes: with faiss-gpu on the T4, k-means "
        "and the exact ground truth would run on the GPU, so the T4 figures are upper bounds",
        "evaluate at 2M: 1,000 queries, its exact ground truth and parameter sweeps "
        "(bench/bench_search.py index); duplicates at 2M: every image's 10 nearest through "
        "the index, re-scored exactly, then grouped, at a given threshold (its calibration, "
        "a few hundred edited copies through the model, is not included); search: one "
        "invocation, as measured here, not scaled",
        "hours are of work: a Colab session's limits (and --max-minutes) split it across "
        "sessions, each resuming where the last stopped, at the cost of at most one shard "
        "redone and one model load per session (not included)"]
    return out, notes


def full_run_estimate(rows: dict, corpus: dict, n_full: int) -> dict:
    """Seconds a run of `n_full` images would take on this machine, from this run's
    figures: the corpus, preprocess and extract scale with images (extract plus loading
    the model once); train, add, prefilter and evaluate, whose costs are neither linear
    nor constant in N (capped training sample, fixed query count), are interpolated on a
    log-log line between this run and their 2M figures; search is taken as measured."""
    n = corpus["n"]
    est = {"corpus": corpus["seconds"] * n_full / n}
    pre = rows["preprocess"]
    start = pre["seconds"] - (pre["own"]["stage_seconds"] or 0.0)  # interpreter, imports
    est["preprocess"] = n_full / (pre["steady_rate"] or pre["rate"]) + start
    ext = rows["extract"]
    est["extract"] = n_full / ext["steady_rate"] + (ext["own"]["model_load_s"] or 0.0)
    at_2m, _ = index_figures()
    for s in ("train", "add", "prefilter", "evaluate", "duplicates"):
        t = rows[s]["seconds"]
        slope = math.log(at_2m[s] / t) / math.log(PROJECT_N / n) if n < PROJECT_N else 1.0
        est[s] = t * (n_full / n) ** slope
    est["search"] = rows["search"]["seconds"]
    return est


# ---------------------------------------------------------------- report

def machine() -> str:
    from workflow.utils import cpu_name
    return f"{cpu_name()}, {os.cpu_count()} cores, Python {platform.python_version()}"


def mb(x: float) -> str:
    return f"{x:,.0f} MB"


def report(meta: dict, corpus: dict, rows: dict, decode: dict, proj: list[dict],
           notes: list[str], estimate: dict | None) -> str:
    c = corpus
    text = [f"{meta['date']} | {meta['machine']} | {meta['command']}", "",
            f"Corpus: {c['n']:,} images ({c['originals']:,} originals from "
            f"../shared/assets/images, {c['variants']:,} generated variants) in "
            f"{c['classes']} class folders, {c['megabytes']:,.1f} MB "
            f"({', '.join(f'{v:,} {k}' for k, v in sorted(c['formats'].items()))}); "
            + (f"reused, made earlier in {c['seconds']:.1f} s" if c["reused"] else
               f"made in {c['seconds']:.1f} s with {c['workers']} processes"), "",
            "| long side | images | share | mean file size |", "|---|---:|---:|---:|"]
    text += [f"| {r['long_side']} | {r['images']:,} | {r['share']:.1%} | {r['mean_kb']:.0f} kB |"
             for r in c["sizes"]]
    text += ["", f"Model: {meta['model']}" + (f", --weights {meta['weights']}"
                                                if meta["weights"] else "")
             + f"; other processes used {meta['other_cores']:.2f} of {os.cpu_count()} cores "
             f"on average during the stages ({meta['stages_s']:.0f} s)", "",
             "| stage | items | wall s | rate | CPU cores busy | peak RSS, largest process "
             "| peak RSS, process tree |", "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows.values():
        rate = f"{r['rate']:,.1f} {r['unit']}/s"
        if r.get("steady_rate"):
            rate += f" ({r['steady_rate']:,.1f} steady)"
        text.append(f"| {r['stage']} | {r['items']:,} {r['unit']} | {r['seconds']:.1f} | "
                    f"{rate} | {r['cores_busy']:.2f} | {mb(r['peak_rss_mb'])} | "
                    f"{mb(r['tree_peak_rss_mb'])} |")
    text += ["", "steady: extract: images / the stage's read + decode wait + infer + write "
             "seconds (without loading the model); preprocess: images / the seconds the "
             "stage reports (without Python's start and imports). Peak RSS sampled every "
             "0.05-0.5 s.", ""]
    text += [f"Commands, from the repository root (S: {meta['store']}, C: the corpus, "
             f"SCRATCH: {meta['scratch']}, OUT: {meta['out']}):", ""]
    for r in rows.values():
        cmd = r["command"]
        for path, short in ((meta["store"], "S"), (c["folder"], "C"),
                            (meta["scratch"], "SCRATCH"), (meta["out"], "OUT")):
            cmd = cmd.replace(path, short)
        text.append(f"- `{cmd}`")
    text += ["", "What each stage reported:", ""]
    text += [f"- {r['summary']}" for r in rows.values() if r["summary"]]
    pre = rows["preprocess"]["own"]
    text.append(f"- preprocess report: {pre['totals']}, {pre['failures']} failures, "
                f"{pre['duplicates']} exact duplicates, {pre['shards']} shard(s)")
    ext = rows["extract"]["own"]
    text.append(f"- extract: ran on {ext['runtime']} in {ext['precision']}"
                + (f" (`{ext['auto_line']}`)" if ext["auto_line"] else ""))
    dup = rows["duplicates"]["own"]
    text.append(f"- duplicates: threshold {dup['threshold']} (measured on the store); "
                + ", ".join(f"{k} {v:.1f} s" for k, v in dup["timings_s"].items()))
    text.append(f"- extract: model loaded in {ext['model_load_s']} s; decoding stored JPEGs "
                f"to {decode['size']} px (the stage's DecodeChunk on {decode['images']:,} "
                f"images, timed in the benchmark process): {decode['in_process']:,.0f} "
                f"images/s in the calling thread, {decode['threads_1']:,.0f} in the thread "
                f"executor with 1 thread, {decode['threads_2']:,.0f} with 2")
    ev = rows["evaluate"]
    text += ["", f"Evaluation ({ev['own']['n']:,} x {ev['own']['d']}, {ev['own']['index']}, "
             f"{ev['items']:,} queries, target recall@10 {ev['own']['target_recall']}):", ""]
    from workflow.report.evaluation import tuned_table
    text.append(tuned_table(ev["report"]))
    if ev["own"]["P@10"]:
        names = list(ev["own"]["P@10"])
        text += ["", "| precision by class | " + " | ".join(names) + " |",
                 "|---|" + "---:|" * len(names),
                 "| mean P@10 | " + " | ".join(f"{ev['own']['P@10'][k]:.3f}" for k in names)
                 + " |"]
    text += ["", f"## Projection: {PROJECT_N:,} images", "",
             "| stage | bound by | rate | source | hours, T4 runtime (2 vCPUs) "
             "| hours, CPU-only (2 vCPUs) |", "|---|---|---|---|---:|---:|"]
    for r in proj:
        name = f"**{r['stage']}**" if r["stage"] == "total" else r["stage"]
        t4, cpu = (f"**{r['t4_h']:.1f}**", f"**{r['cpu_h']:.1f}**") if r["stage"] == "total" \
            else (f"{r['t4_h']:.2f}", f"{r['cpu_h']:.2f}")
        text.append(f"| {name} | {r['bound']} | {r['rate']} | {r['source']} | {t4} | {cpu} |")
    text += ["", "Assumptions:", ""] + [f"- {x}" for x in notes]
    if estimate:
        total = sum(estimate.values())
        text += ["", f"Estimated duration of a full run (--n {FULL_N:,}) on this machine, from "
                 f"this run's figures: {total / 60:.0f} min (" + ", ".join(
                     f"{k} {v:.0f} s" for k, v in estimate.items()) + "; per-image stages "
                 "scaled linearly, train/add/prefilter/evaluate interpolated log-log "
                 "towards their 2M figures, and a busier machine than this run's takes "
                 "longer)"]
    return "\n".join(text)


# ---------------------------------------------------------------- main

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--n", type=int, help=f"images in the corpus (default {FULL_N:,}; "
                                         f"{QUICK_N:,} with --quick)")
    p.add_argument("--quick", action="store_true", help=f"a {QUICK_N:,}-image corpus")
    p.add_argument("--seed", type=int, default=0, help="seed of the corpus (default 0)")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "out" / "e2e",
                   help="folder for the corpus, the store and the logs (default bench/out/e2e)")
    p.add_argument("--json", type=Path, default=REPO / "bench" / "out" / "e2e.json",
                   help="where to write the JSON report (default bench/out/e2e.json)")
    p.add_argument("--model", default="efficientnet-b0",
                   help="extract's --model: a Keras application name or a model file, e.g. "
                        "../shared/assets/models/mobilenet_v1_1.0_224_quant_embedding_"
                        "extractor.tflite (default efficientnet-b0)")
    p.add_argument("--weights", help="extract's --weights (default: none for a Keras "
                                     "application, i.e. random weights, the same compute as "
                                     "ImageNet's; not passed for a model file)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                   help="processes making the corpus (default os.cpu_count()); the stages "
                        "keep their own defaults")
    p.add_argument("--t4-model-rate", type=float, default=T4_MODEL_RATE,
                   help=f"images/s of the model alone on a T4 for the projection (default "
                        f"{T4_MODEL_RATE:,.0f}: an estimate for EfficientNet-B0, float16, "
                        "batch 256; see above)")
    p.add_argument("--cpu-factor", type=float, default=1.0,
                   help="speed of one runtime vCPU relative to one core of this machine, "
                        "for the projection (default 1.0)")
    a = p.parse_args(argv)
    a.n = a.n or (QUICK_N if a.quick else FULL_N)
    if a.n < 100:
        p.error("--n must be at least 100")
    if a.t4_model_rate <= 0 or a.cpu_factor <= 0:
        p.error("--t4-model-rate and --cpu-factor must be positive")
    if a.weights is None and not Path(a.model).suffix:
        a.weights = "none"  # a Keras application: random weights (no download here)
    return a


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    t_start = time.perf_counter()
    out = a.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    a.corpus = corpus = build_corpus(out, a.n, a.seed, max(1, a.workers))
    print(f"corpus: {corpus['n']:,} images, {corpus['megabytes']:,.1f} MB, "
          f"{'reused' if corpus['reused'] else 'made'} in {corpus['seconds']:.1f} s", flush=True)
    for r in corpus["sizes"]:
        print(f"  long side {r['long_side']}: {r['images']:,} ({r['share']:.1%}), "
              f"{r['mean_kb']:.0f} kB on average", flush=True)

    store, scratch, logs = out / "store", out / "scratch", out / "logs"
    for d in (store, scratch, logs):
        shutil.rmtree(d, ignore_errors=True)
    logs.mkdir(parents=True)
    model = a.model if not Path(a.model).suffix else str(Path(a.model).resolve())
    tflite = model.lower().endswith(".tflite")
    common = ["--store", str(store), "--scratch", str(scratch)]
    files = sorted(str(p) for p in Path(corpus["folder"]).rglob("*")
                   if p.suffix.lower() in IMAGE_EXTS)
    queries = [files[i * len(files) // SEARCH_QUERIES] for i in range(SEARCH_QUERIES)]
    args = {
        "preprocess": ["--source", corpus["folder"], *common, "--no-progress"],
        "extract": [*common, "--model", model,
                    *(["--weights", a.weights] if a.weights else []), "--no-progress"],
        "train": [*common, "--no-progress"], "add": [*common, "--no-progress"],
        "prefilter": [*common, "--no-progress"],
        "search": [*common, "--query", *queries, "--json", "--out", str(out / "search.html")],
        "evaluate": [*common, "--no-progress"], "duplicates": [*common, "--no-progress"]}
    print(f"running the stages into {store} ...", flush=True)
    cpu0 = cpu_snapshot()
    rows, decode = {}, {}
    for name, script in STAGES:
        rows[name] = run_stage(name, script, args[name], logs)
        stage_figures(rows[name], store)
        r = rows[name]
        print(f"    {r['items']:,} {r['unit']} in {r['seconds']:.1f} s ({r['rate']:,.1f}/s), "
              f"peak RSS {r['tree_peak_rss_mb']:,.0f} MB", flush=True)
        if name == "extract":  # the decoding bound for a GPU runtime, between two stages
            size = json.loads((store / "run.json").read_text())[
                "stages"]["extract"]["settings"]["input_size"]
            decode = decode_rates(store, size)
    cpu1 = cpu_snapshot()
    wall = cpu1[0] - cpu0[0]
    stages_s = sum(r["seconds"] for r in rows.values())
    other = max(0.0, (cpu1[1] - cpu0[1]) - (cpu1[2] - cpu0[2])) / wall
    proj, notes = project(rows, decode, a, tflite)
    estimate = full_run_estimate(rows, corpus, FULL_N) if a.n != FULL_N else None
    meta = {"date": dt.date.today().isoformat(), "machine": machine(),
            "command": " ".join(["python", os.path.relpath(__file__, Path.cwd()),
                                 *(argv if argv is not None else sys.argv[1:])]),
            "model": a.model, "weights": a.weights, "other_cores": other,
            "stages_s": stages_s, "store": str(store), "scratch": str(scratch),
            "out": str(out)}
    text = report(meta, corpus, rows, decode, proj, notes, estimate)
    print("\n" + text)
    a.json.parent.mkdir(parents=True, exist_ok=True)
    a.json.write_text(json.dumps(
        {**meta, "corpus": corpus, "decode": decode, "t4_model_rate": a.t4_model_rate,
         "cpu_factor": a.cpu_factor,
         "stages": [{k: v for k, v in r.items() if k not in ("stdout", "log", "report")}
                    for r in rows.values()],
         "projection": proj, "assumptions": notes, "full_run_estimate_s": estimate,
         "markdown": text, "seconds": round(time.perf_counter() - t_start, 1)},
        indent=1, default=str) + "\n")
    print(f"\nwrote {a.json} ({time.perf_counter() - t_start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
