#!/usr/bin/env python
"""GPU benchmark: the extract stage on one GPU, plus exact search and k-means on it.

Meant for a GPU machine with many CPU cores (an H100 box, a Colab T4 runtime). It needs
Keras 3 on any backend (TensorFlow, JAX or PyTorch; `KERAS_BACKEND` picks one), OpenCV,
h5py; Faiss and Annoy are not needed. In one run:

1. Corpus: `--n` JPEG photos (300-500 px on the short side) made from real photos in
   `--images` (default ../shared/assets/images/flowers12) by seeded crops, flips and
   brightness changes, then stored by the preprocess stage (256 px JPEGs, as always) in
   shards of `--shard-size`, with every core decoding.
2. For each model (default EfficientNet-B0 at 224 px and B4 at 380 px, random weights:
   the same compute as ImageNet weights, which need the internet):
   - decode: the stage's decoding (stored JPEG -> model input) in 1 thread and in
     `--workers` threads;
   - model only: the embedder on batches decoded beforehand, mixed precision (float16)
     and float32 side by side, interleaved over rounds;
   - pipeline: the whole extract stage (read shard, decode, infer, write, commit) with
     mixed precision, steady images/s (per-shard times) and wall, once per decoding
     executor in `--executors`: `thread` (threads writing into the batch arrays) and
     `process` (processes writing into batches in shared memory), side by side.
3. Exact search (90,000 x 10,000 queries, 2048-d, k=3, the RAPIDS demo's shape) and
   k-means (`--kmeans-n` x 1280-d, `--kmeans-k` centroids, 10 iterations), with Faiss's
   GPU build where it loads, else as a PyTorch reference (cuBLAS matrix product + top-k /
   argmin: the same work as Faiss's brute-force GPU kernels), with the bare matrix
   product as the floor.

Writes a Markdown report to stdout and `gpu.json` to `--out`.

    python bench/bench_gpu.py [--n 40000] [--models efficientnet-b0,efficientnet-b4]
                              [--batch-size 256] [--workers CORES] [--out bench/out/gpu]
                              [--executors thread,process]
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import datetime as dt
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from workflow.execution.decoding import DecodeChunk  # noqa: E402
from workflow.execution.executors import make_executor  # noqa: E402
from workflow.formats.images import read_image_shard  # noqa: E402
from workflow.models.loading import make_embedder  # noqa: E402
from workflow.models.registry import (  # noqa: E402
    KERAS_APPS,
    ModelSpec,
)
from workflow.stages.extract import ExtractConfig  # noqa: E402
from workflow.stages.extract import run as extract
from workflow.stages.preprocess import PreprocessConfig  # noqa: E402
from workflow.stages.preprocess import run as preprocess
from workflow.stages.status import reset_stage  # noqa: E402
from workflow.storage.store import Store  # noqa: E402
from workflow.utils import cpu_name  # noqa: E402

ASSETS = REPO.parent / "shared" / "assets" / "images"


def variant(job: tuple[str, str, int]) -> None:
    """One seeded variant of a photo: crop, flip, brightness, short side 300-500 px."""
    import cv2
    src, dst, seed = job
    rng = np.random.default_rng(seed)
    img = cv2.imread(src, cv2.IMREAD_COLOR)
    h, w = img.shape[:2]
    s = rng.uniform(0.6, 1.0)
    ch, cw = int(h * s), int(w * s)
    y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
    img = img[y:y + ch, x:x + cw]
    if rng.random() < 0.5:
        img = img[:, ::-1]
    short = rng.integers(300, 501)
    f = short / min(ch, cw)
    img = cv2.resize(img, (round(cw * f * rng.uniform(1.0, 1.5)), round(ch * f)),
                     interpolation=cv2.INTER_CUBIC)
    img = cv2.convertScaleAbs(img, alpha=rng.uniform(0.8, 1.2), beta=rng.uniform(-20, 20))
    cv2.imwrite(dst, img, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(80, 96))])


def make_corpus(images: Path, root: Path, n: int, workers: int) -> Path:
    folder = root / "corpus"
    done = root / "corpus.done"
    if done.exists():
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    srcs = sorted(p for p in images.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg",
                                                                       ".png", ".bmp"))
    if not srcs:
        sys.exit(f"no photos under {images}: pass --images DIR")
    jobs = []
    for i in range(n):
        sub = folder / f"{i // 1000:03d}"
        sub.mkdir(parents=True, exist_ok=True)
        jobs.append((str(srcs[i % len(srcs)]), str(sub / f"{i:07d}.jpg"), i))
    with cf.ProcessPoolExecutor(workers) as pool:
        list(pool.map(variant, jobs, chunksize=64))
    done.touch()
    return folder


def stored_jpegs(store: Store, limit: int) -> list[bytes]:
    out: list[bytes] = []
    for unit, m in sorted(store.markers("preprocess").items()):
        if unit.startswith("shard-") and len(out) < limit:
            s = read_image_shard(str(store.fetch(m, store.scratch / "bench" / f"{unit}.h5")))
            out += [j for j, st in zip(s["jpeg"], s["status"]) if st == 0]
    return out[:limit]


def decode_rate(jpegs: list[bytes], size: int, bs: int, workers: int) -> float:
    chunks = [jpegs[i:i + bs] for i in range(0, len(jpegs), bs)]
    with make_executor("thread", DecodeChunk(size), workers, 600, lambda *a: None) as pool:
        list(pool.imap_unordered(enumerate(chunks[:workers])))  # warm up
        t = time.perf_counter()
        list(pool.imap_unordered(enumerate(chunks)))
        return len(jpegs) / (time.perf_counter() - t)


def model_rates(embedders: dict, batches: list[np.ndarray], rounds: int) -> dict:
    """images/s of each embedder on the same decoded batches, interleaved over rounds;
    batches are handed over as the stage does (one in flight while the next starts)."""
    rates: dict[str, list[float]] = {k: [] for k in embedders}
    for e in embedders.values():
        e(batches[0])  # compile / warm up
    for _r in range(rounds):
        for name, e in embedders.items():
            t = time.perf_counter()
            pending = None
            for b in batches:
                nxt = e.launch(b)
                if pending is not None:
                    pending()
                pending = nxt
            pending()
            rates[name].append(sum(len(b) for b in batches) / (time.perf_counter() - t))
    return {k: float(np.median(v)) for k, v in rates.items()}


def pipeline(store: Store, model: str, bs: int, workers: int, executor: str) -> dict:
    reset_stage(store, "extract")
    cfg = ExtractConfig(store=store.url, model=model, weights="none", progress=False,
                        batch_size=bs, workers=workers, executor=executor,
                        mixed_precision="on")
    t = time.perf_counter()
    res = extract(cfg)
    wall = time.perf_counter() - t
    steady = sum(res.timings.values())
    keys = list(res.timings)
    later = res.shards[1:]
    return {"images": res.n_features, "steady_images_per_s": res.n_features / steady,
            "after_first_shard_images_per_s":
                sum(s["n"] for s in later) / sum(s[k] for s in later for k in keys)
                if later else float("nan"),
            "wall_images_per_s": res.n_features / wall, "wall_s": wall,
            "timings_s": {k: round(v, 2) for k, v in res.timings.items()},
            "shards": res.shards}


def gpu_search(n_base: int, n_query: int, d: int, k: int, km_n: int, km_k: int,
               km_d: int) -> list[dict]:
    """Exact search and k-means on the GPU: Faiss where its GPU build loads, else torch."""
    rows: list[dict] = []
    try:
        import torch
    except ImportError:
        return [{"what": "GPU search", "note": "PyTorch not installed: skipped"}]
    if not torch.cuda.is_available():
        return [{"what": "GPU search", "note": "no CUDA device: skipped"}]
    torch.backends.cuda.matmul.allow_tf32 = False
    dev = "cuda"
    g = torch.Generator(device=dev).manual_seed(0)

    def unit(x):
        return x / x.norm(dim=1, keepdim=True)

    centers = torch.randn(300, d, device=dev, generator=g)
    xb = unit(centers[torch.randint(0, 300, (n_base,), device=dev, generator=g)]
              + 0.5 * torch.randn(n_base, d, device=dev, generator=g))
    xq = unit(centers[torch.randint(0, 300, (n_query,), device=dev, generator=g)]
              + 0.5 * torch.randn(n_query, d, device=dev, generator=g))

    def timed(fn, reps=3):
        fn()
        torch.cuda.synchronize()
        ts = []
        for _ in range(reps):
            t = time.perf_counter()
            fn()
            torch.cuda.synchronize()
            ts.append(time.perf_counter() - t)
        return float(np.median(ts))

    def knn(block=16384):
        out = []
        for lo in range(0, n_query, block):
            out.append(torch.topk(xq[lo:lo + block] @ xb.T, k, dim=1))
        return out

    faiss_gpu = None
    try:
        import faiss
        if faiss.get_num_gpus() > 0:
            faiss_gpu = faiss
    except ImportError:
        pass
    shape = f"{n_base:,} x {n_query:,} queries, {d}-d, k={k}"
    floor = timed(lambda: xq @ xb.T)
    rows.append({"what": "bare float32 matrix product (floor)", "shape": shape,
                 "seconds": floor})
    t = timed(knn)
    rows.append({"what": "exact k-NN, torch matmul + top-k (float32)", "shape": shape,
                 "seconds": t, "vs_floor": t / floor, "queries_per_s": n_query / t})
    if faiss_gpu is not None:
        res = faiss.StandardGpuResources()
        a, b = xb.cpu().numpy(), xq.cpu().numpy()
        t = timed(lambda: faiss.knn_gpu(res, b, a, k, metric=faiss.METRIC_INNER_PRODUCT))
        rows.append({"what": "exact k-NN, faiss.knn_gpu (host arrays)", "shape": shape,
                     "seconds": t, "vs_floor": t / floor, "queries_per_s": n_query / t})
    xb = xq = None  # free the device memory (the closures above are done with them)
    # k-means: Lloyd iterations as Faiss runs them (GEMM for distances, argmin, means).
    x = unit(torch.randn(km_n, km_d, device=dev, generator=g))
    iters = 10

    def kmeans():
        c = x[torch.randperm(km_n, device=dev, generator=g)[:km_k]].clone()
        x2 = (x * x).sum(1, keepdim=True)
        for _ in range(iters):
            assign = torch.cat([(x2[lo:lo + 65536] - 2 * x[lo:lo + 65536] @ c.T
                                 + (c * c).sum(1)).argmin(1)
                                for lo in range(0, km_n, 65536)])
            sums = torch.zeros_like(c).index_add_(0, assign, x)
            counts = torch.bincount(assign, minlength=km_k).clamp_min(1)
            c = sums / counts[:, None]
        return c
    t = timed(kmeans, reps=1)
    rows.append({"what": f"k-means, torch Lloyd ({iters} iterations)",
                 "shape": f"{km_n:,} x {km_d}-d, {km_k:,} centroids", "seconds": t})
    if faiss_gpu is not None:
        xs = x.cpu().numpy()
        km = faiss.Kmeans(km_d, km_k, niter=iters, gpu=True, seed=1,
                          max_points_per_centroid=km_n)
        t0 = time.perf_counter()
        km.train(xs)
        rows.append({"what": f"k-means, faiss.Kmeans(gpu=True) ({iters} iterations)",
                     "shape": f"{km_n:,} x {km_d}-d, {km_k:,} centroids",
                     "seconds": time.perf_counter() - t0})
    return rows


def gpu_name() -> str:
    try:
        return subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version",
                               "--format=csv,noheader"], capture_output=True, text=True,
                              timeout=30).stdout.strip() or "no GPU"
    except (OSError, subprocess.SubprocessError):
        return "no GPU"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("--n", type=int, default=40_000, help="photos in the corpus")
    ap.add_argument("--shard-size", type=int, default=10_000,
                    help="images per shard (the preprocess stage's default)")
    ap.add_argument("--models", default="efficientnet-b0,efficientnet-b4")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                    help="decoding threads (and preprocess processes)")
    ap.add_argument("--model-images", type=int, default=4096,
                    help="images per model-only round (decoded beforehand)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--executors", default="thread,process",
                    help="decoding executors of the pipeline runs, compared side by side")
    ap.add_argument("--images", type=Path, default=ASSETS / "flowers12",
                    help="real photos to make the corpus from")
    ap.add_argument("--kmeans-n", type=int, default=1_048_576)
    ap.add_argument("--kmeans-k", type=int, default=8_192)
    ap.add_argument("--no-search", action="store_true", help="skip exact search and k-means")
    ap.add_argument("--quick", action="store_true",
                    help="a smoke run: 600 photos, B0 only, small search shapes")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "out" / "gpu")
    a = ap.parse_args()
    if a.quick:
        a.n, a.shard_size, a.models, a.model_images, a.rounds = 600, 300, "efficientnet-b0", \
            256, 1
        a.batch_size = min(a.batch_size, 64)
        a.kmeans_n, a.kmeans_k = 65_536, 256
    a.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    t = time.perf_counter()
    corpus = make_corpus(a.images, a.out, a.n, a.workers)
    corpus_s = time.perf_counter() - t
    store = Store(a.out / "store")
    t = time.perf_counter()
    if "report" not in store.markers("preprocess"):
        preprocess(PreprocessConfig(store=store.url, sources=(str(corpus),),
                                    shard_size=a.shard_size, workers=a.workers,
                                    progress=False))
        pre_rate = a.n / (time.perf_counter() - t)
    else:
        pre_rate = float("nan")
    from workflow.models.keras import gpu_available, select_backend
    backend = select_backend()
    report = {"date": dt.date.today().isoformat(), "cpu": f"{cpu_name()}, {os.cpu_count()} "
              f"cores", "gpu": gpu_name(), "backend": backend, "gpu_visible": gpu_available(),
              "python": platform.python_version(),
              "command": "python bench/bench_gpu.py " + " ".join(sys.argv[1:]),
              "images": a.n, "batch_size": a.batch_size, "workers": a.workers,
              "corpus_s": corpus_s, "preprocess_images_per_s": pre_rate, "models": []}
    import keras
    report["keras"] = keras.__version__
    jpegs = stored_jpegs(store, a.model_images)
    for model in a.models.split(","):
        size = KERAS_APPS[model][1]
        row = {"model": model, "input_size": size,
               "decode_1_thread": decode_rate(jpegs[:1024], size, a.batch_size, 1),
               f"decode_{a.workers}_threads": decode_rate(jpegs, size, a.batch_size,
                                                          a.workers)}
        fn = DecodeChunk(size)
        batches = [fn(jpegs[i:i + a.batch_size]) for i in range(0, len(jpegs), a.batch_size)]
        embedders = {"mixed_float16": make_embedder(ModelSpec(model, "none"), "on")}
        embedders["float32"] = make_embedder(ModelSpec(model, "none"), "off")
        row["model_only"] = model_rates(embedders, batches, a.rounds)
        row["model_only_ratio_fp16_fp32"] = (row["model_only"]["mixed_float16"] /
                                             row["model_only"]["float32"])
        del embedders, batches
        keras.backend.clear_session()
        # The stage's default: one core fewer than the machine has, for the inference loop.
        row["pipeline"] = {ex: pipeline(store, model, a.batch_size, max(1, a.workers - 1),
                                        ex) for ex in a.executors.split(",")}
        report["models"].append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    if not a.no_search:
        nb, nq = (90_000, 10_000) if not a.quick else (9_000, 1_000)
        report["search"] = gpu_search(nb, nq, 2048, 3, a.kmeans_n, a.kmeans_k, 1280)
    report["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    report["total_s"] = time.perf_counter() - started
    (a.out / "gpu.json").write_text(json.dumps(report, indent=1))
    print_report(report)


def print_report(r: dict) -> None:
    print(f"Date: {r['date']}  \nMachine: {r['cpu']}; GPU: {r['gpu']}  \n"
          f"Software: Python {r['python']}, Keras {r['keras']} on {r['backend']} "
          f"(GPU visible: {r['gpu_visible']})  \nCommand: `{r['command']}`  \n"
          f"Corpus: {r['images']:,} photos made in {r['corpus_s']:.0f} s; preprocess stage "
          f"{r['preprocess_images_per_s']:.0f} images/s with {r['workers']} processes; "
          f"batch {r['batch_size']}, {r['workers']} decoding threads ({r['workers'] - 1} "
          f"threads or processes in the pipeline: the stage's default); peak RSS "
          f"{r['peak_rss_mb']} MB; total {r['total_s']:.0f} s\n")
    execs = list(r["models"][0]["pipeline"]) if r["models"] else []
    print("| model | decode, 1 thread | decode, all threads | model only, mixed fp16 | "
          "model only, fp32 | fp16/fp32 | " +
          " | ".join(f"pipeline ({e}): steady | after 1st shard | wall | "
                     "after 1st / model-only fp16" for e in execs) + " |")
    print("|---|---:|---:|---:|---:|---:|" + "---:|---:|---:|---:|" * len(execs))
    for m in r["models"]:
        dec = next(v for k, v in m.items() if k.startswith("decode_") and k != "decode_1_thread")
        mo = m["model_only"]
        cells = []
        for p in m["pipeline"].values():
            later = p.get("after_first_shard_images_per_s", float("nan"))
            cells.append(f"{p['steady_images_per_s']:.0f} | {later:.0f} | "
                         f"{p['wall_images_per_s']:.0f} | {later / mo['mixed_float16']:.2f}")
        print(f"| {m['model']} ({m['input_size']} px) | {m['decode_1_thread']:.0f} | "
              f"{dec:.0f} | {mo['mixed_float16']:.0f} | {mo['float32']:.0f} | "
              f"{m['model_only_ratio_fp16_fp32']:.2f}x | " + " | ".join(cells) + " |")
    for m in r["models"]:
        for e, p in m["pipeline"].items():
            print(f"\n{m['model']} pipeline ({e}), {p['images']:,} images, time split: " +
                  ", ".join(f"{k} {v} s" for k, v in p["timings_s"].items()))
    if r.get("search"):
        print("\n| GPU search | shape | seconds | vs floor | queries/s |\n|---|---|---:|---:|---:|")
        for s in r["search"]:
            if "seconds" not in s:
                print(f"| {s['what']} | {s['note']} | | | |")
                continue
            vf = f"{s['vs_floor']:.2f}x" if "vs_floor" in s else ""
            qps = f"{s['queries_per_s']:,.0f}" if "queries_per_s" in s else ""
            print(f"| {s['what']} | {s['shape']} | {s['seconds']:.3f} | {vf} | {qps} |")
    print("\nimages/s throughout; steady = images / the sum of per-shard times (read, decode "
          "wait, infer, write+commit where it was not overlapped); after 1st shard = the "
          "same over the shards after the first (whose read is not overlapped: the rate a "
          "long run sustains); wall includes loading the model and compiling.")


if __name__ == "__main__":
    main()
