#!/usr/bin/env python
"""Extract throughput benchmark: decode-only, model-only and pipeline images/s.

For each model (EfficientNet-B0 at 224 px and the quantized TFLite MobileNet v1 from the
shared test assets, when present), on the same image shards in one run:

- decode: the stage's own decoding (`DecodeChunk`: stored JPEG -> short side to the model
  input -> centre crop) in one process, and in the stage's pool of --workers processes;
- model: the embedder alone on batches decoded beforehand (the ceiling for the stage);
- pipeline: the whole extract stage (stage-in, decode pool feeding a bounded queue,
  inference, L2-normalise, write, commit) into a fresh feature folder, with the decoding
  in worker processes (`--executor process`), in threads (`--executor thread`) and in
  the inference loop itself (`--executor local`, no overlap). The
  steady rate is images / the sum of the per-shard times; the wall rate also counts the
  one-time costs of a run (loading the model, starting the pool).

The goal is a pipeline rate of at least 90% of the model-only rate: decoding hidden
behind inference. Image shards are made once from flowers12 (../shared/assets) or, where
that is absent, from the demo corpus. EfficientNet uses random weights (--weights none:
same compute as ImageNet weights, which cannot be downloaded here).

    python bench/bench_extract.py [--n 320] [--rounds 3] [--batch-size 32] [--out bench/out]
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
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
from workflow.models.registry import (
    ModelSpec,  # noqa: E402
)
from workflow.stages.extract import ExtractConfig, run  # noqa: E402
from workflow.stages.preprocess import PreprocessConfig  # noqa: E402
from workflow.stages.preprocess import run as preprocess
from workflow.stages.status import reset_stage  # noqa: E402
from workflow.storage.store import Store  # noqa: E402
from workflow.utils import cpu_name  # noqa: E402

ASSETS = REPO.parent / "shared" / "assets"
TFLITE = ASSETS / "models" / "mobilenet_v1_1.0_224_quant_embedding_extractor.tflite"


def image_store(out: Path, n: int, shards: int = 2) -> Store:
    """An image store of n real photos (flowers12, else the demo corpus) in `shards`
    image shards, made once."""
    store = Store(out / (f"extract-store-{n}" + (f"-{shards}" if shards != 2 else "")))
    if "report" in store.markers("preprocess"):
        return store
    flowers = ASSETS / "images" / "flowers12"
    if flowers.is_dir():
        files = sorted(flowers.rglob("*.jpg"))[:n]
    else:
        from workflow.demo import make_demo_corpus
        make_demo_corpus(out / "demo", n=max(n, 100))
        files = sorted(p for p in (out / "demo" / "photos").rglob("*.jpg")
                       if "broken" not in p.parts)[:n]
    listing = out / f"extract-list-{n}.txt"
    listing.write_text("".join(f"{p}\n" for p in files))
    preprocess(PreprocessConfig(store=store.url, sources=(str(listing),),
                                shard_size=-(-len(files) // shards), progress=False))
    return store


def stored_jpegs(store: Store) -> list[bytes]:
    out = []
    for unit, m in sorted(store.markers("preprocess").items()):
        if unit.startswith("shard-"):
            s = read_image_shard(str(store.fetch(m, store.scratch / "bench" / f"{unit}.h5")))
            out += [j for j, st in zip(s["jpeg"], s["status"]) if st == 0]
    return out


def rate(n: int, seconds: float) -> float:
    return n / seconds if seconds > 0 else float("nan")


def decode_rates(jpegs: list[bytes], size: int, bs: int, workers: int) -> dict:
    chunks = [jpegs[i:i + bs] for i in range(0, len(jpegs), bs)]
    fn = DecodeChunk(size)
    t = time.perf_counter()
    for c in chunks:
        fn(c)
    out = {"decode, in process": rate(len(jpegs), time.perf_counter() - t)}
    for kind in ("process", "thread"):
        with make_executor(kind, fn, workers, 600, lambda *a: None) as pool:
            list(pool.imap_unordered(enumerate(chunks[:workers])))  # warm up
            t = time.perf_counter()
            list(pool.imap_unordered(enumerate(chunks)))
            out[f"decode, {workers} {kind}(es)"] = rate(len(jpegs), time.perf_counter() - t)
    return out


def model_rate(embedder, jpegs: list[bytes], bs: int) -> float:
    fn = DecodeChunk(embedder.input_size)
    batches = [fn(jpegs[i:i + bs]) for i in range(0, len(jpegs), bs)]
    embedder(batches[0])  # warm up (graph tracing, allocation)
    t = time.perf_counter()
    for b in batches:
        embedder(b)
    return rate(len(jpegs), time.perf_counter() - t)


def pipeline_rates(store: Store, cfg: ExtractConfig) -> tuple[float, float, dict]:
    """(steady images/s, wall images/s, time split) of one whole run of the stage."""
    reset_stage(store, "extract")
    t = time.perf_counter()
    res = run(cfg)
    seconds = time.perf_counter() - t
    assert res.complete
    return rate(res.n_features, sum(res.timings.values())), rate(res.n_features, seconds), \
        res.timings


def side_by_side(label, model, weights, embedder, store, jpegs, a) -> list[dict]:
    """Model-only and the stage with each executor, interleaved over rounds (the order of
    the executors rotates); ratios are taken within a round, then the median is shown."""
    kinds = ["thread", "process", "local"]
    rates: dict[str, list] = {k: [] for k in ["model only", *kinds]}
    ratios: dict[str, list] = {k: [] for k in kinds}
    timings: dict[str, dict] = {}
    for r in range(a.rounds):
        m = model_rate(embedder, jpegs, a.batch_size)
        rates["model only"].append((m, m))
        for kind in kinds[r % 3:] + kinds[:r % 3]:
            cfg = ExtractConfig(store=store.url, model=model, weights=weights, progress=False,
                                batch_size=a.batch_size, workers=a.workers, executor=kind,
                                mixed_precision="off")
            steady, wall, timings[kind] = pipeline_rates(store, cfg)
            rates[kind].append((steady, wall))
            ratios[kind].append(steady / m)
        print(f"  {label} round {r + 1}/{a.rounds}: model {m:.1f}/s, " + ", ".join(
            f"{k} {rates[k][-1][0]:.1f}/s" for k in kinds), file=sys.stderr)
    rows = [{"model": label, "measure": "model only",
             "images_per_s": median(x[0] for x in rates["model only"])}]
    for kind in kinds:
        rows.append({"model": label, "measure": f"pipeline, --executor {kind}",
                     "images_per_s": median(x[0] for x in rates[kind]),
                     "wall_images_per_s": median(x[1] for x in rates[kind]),
                     "vs_model_only": median(ratios[kind]), "ratios": ratios[kind],
                     "timings_s": timings[kind]})
    return rows


def median(xs) -> float:
    return float(np.median(list(xs)))


def machine() -> str:
    cpu = cpu_name()
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=320, help="images")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 1),
                    help="decoding processes of the stage")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "out")
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    store = image_store(a.out, a.n)
    jpegs = stored_jpegs(store)
    models = [("efficientnet-b0", "efficientnet-b0", "none")]
    if TFLITE.is_file():
        models.append(("tflite mobilenet v1 (uint8)", str(TFLITE), "imagenet"))
    rows = []
    for label, model, weights in models:
        embedder = make_embedder(ModelSpec(model, weights), "off")
        for what, r in decode_rates(jpegs, embedder.input_size, a.batch_size,
                                    a.workers).items():
            rows.append({"model": label, "measure": what, "images_per_s": r})
        rows += side_by_side(label, model, weights, embedder, store, jpegs, a)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    report = {"date": dt.date.today().isoformat(), "machine": machine(),
              "command": "python bench/bench_extract.py " + " ".join(sys.argv[1:]),
              "images": len(jpegs), "batch_size": a.batch_size, "workers": a.workers,
              "peak_rss_mb": round(peak), "rows": rows}
    (a.out / "extract.json").write_text(json.dumps(report, indent=1))
    print(f"{report['date']} | {report['machine']} | {report['command']}")
    print(f"{len(jpegs)} images, batch {a.batch_size}, {a.workers} decoding worker(s), "
          f"{a.rounds} interleaved rounds (medians; ratios taken within a round), "
          f"peak RSS of the benchmark process {peak:.0f} MB\n")
    print("| model | measure | images/s (steady) | pipeline / model-only (rounds) | "
          "images/s (wall, incl. model load) |")
    print("|---|---|---:|---:|---:|")
    for r in rows:
        ratio = (f"{r['vs_model_only']:.2f} ({', '.join(f'{x:.2f}' for x in r['ratios'])})"
                 if "vs_model_only" in r else "")
        wall = f"{r['wall_images_per_s']:.1f}" if "wall_images_per_s" in r else ""
        print(f"| {r['model']} | {r['measure']} | {r['images_per_s']:.1f} | {ratio} | {wall} |")
    for r in rows:
        if "timings_s" in r:
            t = ", ".join(f"{k} {v:.1f} s" for k, v in r["timings_s"].items())
            print(f"\n{r['model']}, {r['measure']}: {t}")


if __name__ == "__main__":
    main()
