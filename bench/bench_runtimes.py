#!/usr/bin/env python
"""CPU runtimes for the Keras models: Keras as is, TFLite/XNNPACK and OpenVINO (the model
converted once, `workflow.models.converted`), side by side in one run.

For each model, on the same stored real photos (flowers12 from ../shared/assets, else the
demo corpus), in interleaved rounds whose order rotates:
- model only: the embedder alone on batches decoded beforehand;
- pipeline: the whole extract stage (`--executor thread`, the default without a GPU)
  into a fresh feature folder, at its steady rate (images / the sum of the per-shard
  times); the ratio to Keras's pipeline is taken within each round;
- features: the smallest cosine between a runtime's features and Keras's, image by image.
Random weights (--weights none): the same compute as ImageNet weights, which cannot be
downloaded here. The 2M projection divides 2,000,000 by the pipeline rate.

Goal: the extract stage at least 2x Keras's on 2 cores, features within cosine 0.9999.

    python bench/bench_runtimes.py [--models efficientnet-b0 resnet50] [--n 320]
        [--rounds 3] [--out bench/out]
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from bench_extract import image_store, machine, model_rate, pipeline_rates, stored_jpegs  # noqa: E402, I001

from workflow.execution.decoding import DecodeChunk  # noqa: E402
from workflow.models.converted import ConvertedEmbedder, openvino_installed  # noqa: E402
from workflow.models.loading import make_embedder  # noqa: E402
from workflow.models.registry import ModelSpec  # noqa: E402
from workflow.stages.extract import ExtractConfig  # noqa: E402


def embedders(model: str) -> dict:
    """{runtime: embedder, "load_s": {runtime: seconds}} (conversion cached beforehand)."""
    t = time.perf_counter()
    keras = make_embedder(ModelSpec(model, "none"), "off", runtime="keras")
    out, load = {"keras": keras}, {"keras": time.perf_counter() - t}
    for rt in ("tflite", "openvino") if openvino_installed() else ("tflite",):
        ConvertedEmbedder(keras, rt)  # the conversion, once (cached)
        t = time.perf_counter()
        out[rt] = make_embedder(ModelSpec(model, "none"), "off", runtime=rt)
        load[rt] = time.perf_counter() - t
    return {**out, "load_s": load}


def cosines(embs: dict, jpegs: list[bytes], bs: int) -> dict:
    x = DecodeChunk(embs["keras"].input_size)(jpegs[:bs])
    want = embs["keras"](x)
    out = {}
    for rt, e in embs.items():
        if rt in ("keras", "load_s"):
            continue
        got = e(x)
        c = np.sum(got * want, 1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1))
        out[rt] = float(c.min())
    return out


def rounds(model: str, embs: dict, store, jpegs: list[bytes], a) -> dict:
    runtimes = [r for r in embs if r != "load_s"]
    m = {r: [] for r in runtimes}
    p = {r: [] for r in runtimes}
    for i in range(a.rounds):
        order = runtimes[i % len(runtimes):] + runtimes[:i % len(runtimes)]
        for rt in order:
            m[rt].append(model_rate(embs[rt], jpegs, a.batch_size))
            cfg = ExtractConfig(store=store.url, model=model, weights="none", progress=False,
                                batch_size=a.batch_size, executor="thread",
                                mixed_precision="off", runtime=rt)
            p[rt].append(pipeline_rates(store, cfg)[0])
        print(f"  {model} round {i + 1}/{a.rounds}: " + ", ".join(
            f"{rt} model {m[rt][-1]:.1f}/s pipeline {p[rt][-1]:.1f}/s" for rt in runtimes),
            file=sys.stderr)
    return {rt: {"model_only": m[rt], "pipeline": p[rt],
                 "vs_keras": [x / k for x, k in zip(p[rt], p["keras"])]} for rt in runtimes}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["efficientnet-b0", "resnet50"])
    ap.add_argument("--n", type=int, default=320, help="images")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "out")
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    store = image_store(a.out, a.n)
    jpegs = stored_jpegs(store)
    report = {"date": dt.date.today().isoformat(), "machine": machine(),
              "command": "python bench/bench_runtimes.py " + " ".join(sys.argv[1:]),
              "images": len(jpegs), "models": {}}
    for model in a.models:
        embs = embedders(model)
        report["models"][model] = {"load_s": embs["load_s"],
                                   "min_cosine": cosines(embs, jpegs, a.batch_size),
                                   "rates": rounds(model, embs, store, jpegs, a)}
        del embs
    (a.out / "runtimes.json").write_text(json.dumps(report, indent=1))
    print(f"{report['date']} | {report['machine']} | {report['command']}")
    print(f"{len(jpegs)} stored real photos, batch {a.batch_size}, {os.cpu_count()} cores, "
          f"{a.rounds} interleaved rounds (medians; ratios taken within a round)\n")
    print("| model | runtime | model only, images/s | extract stage, images/s | "
          "stage vs Keras's (rounds) | min cosine to Keras | load s | 2M extract, hours |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for model, r in report["models"].items():
        for rt, x in r["rates"].items():
            pipe = float(np.median(x["pipeline"]))
            ratio = float(np.median(x["vs_keras"]))
            cos = r["min_cosine"].get(rt)
            print(f"| {model} | {rt} | {np.median(x['model_only']):.1f} | {pipe:.1f} | "
                  f"{ratio:.2f} ({', '.join(f'{v:.2f}' for v in x['vs_keras'])}) | "
                  f"{'' if cos is None else f'{cos:.7f}'} | {r['load_s'][rt]:.1f} | "
                  f"{2e6 / pipe / 3600:.1f} |")


if __name__ == "__main__":
    main()
