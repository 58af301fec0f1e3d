#!/usr/bin/env python
"""Reduced precision on the CPU runtime: float32, bfloat16 and INT8 (NNCF, calibrated on
the store's images) through OpenVINO, side by side in one run.

A store of real photos (flowers12 from ../shared/assets), its seeded sample split as the
extract stage splits it (`models.precision.store_sample`): INT8 is calibrated on one half,
and everything is measured on the other (the held-out photos, at 224 px):
- images/s of the model alone on batches decoded beforehand, in interleaved rounds whose
  order rotates (best of each precision's rounds; the ratio to float32 taken within each
  round, then the median);
- the mean cosine of each photo's feature to its float32 feature, and the top-10
  neighbour overlap with float32 (each photo's 10 nearest among the held-out photos);
  also for float32 features stored as float16 (what a feature shard holds), the floor;
- with --stage: the whole extract stage, --precision f32 against auto, interleaved, at
  its steady rate (images / the sum of the per-shard times).
Random weights by default (--weights none: ImageNet weights cannot be downloaded here).
Random-weight features are far less spread than trained ones (photos' features nearly
parallel), so their neighbour overlaps are pessimistic, not what trained weights give.

    python bench/bench_precision.py [--models efficientnet-b0 resnet50] [--n 600]
        [--weights none|imagenet] [--rounds 3] [--stage] [--out bench/out]
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from bench_extract import image_store, machine, pipeline_rates  # noqa: E402, I001

from workflow.models import precision as prec  # noqa: E402
from workflow.models.converted import ConvertedEmbedder  # noqa: E402
from workflow.models.loading import make_embedder  # noqa: E402
from workflow.models.registry import ModelSpec  # noqa: E402
from workflow.stages.extract import ExtractConfig  # noqa: E402


def rate(embedder, batches) -> float:
    t = time.perf_counter()
    for b in batches:
        embedder(b)
    return sum(map(len, batches)) / (time.perf_counter() - t)


def measure(model: str, sample, a) -> dict:
    keras = make_embedder(ModelSpec(model, a.weights), "off", runtime="keras")
    t = time.perf_counter()
    f32 = ConvertedEmbedder(keras, "openvino")
    embs, load = {"f32": f32}, {"f32": time.perf_counter() - t}
    for p in ("bf16", "int8"):
        t = time.perf_counter()
        try:
            embs[p] = ConvertedEmbedder(keras, "openvino", p, sample, reference=f32)
        except Exception as e:  # noqa: BLE001 - a failed check still has its figures
            print(f"  {model} {p}: {e}", file=sys.stderr)
            embs[p] = ConvertedEmbedder(keras, "openvino", p, None, reference=f32,
                                        calibration=sample.key)
        load[p] = time.perf_counter() - t
    held = sample.held_out
    ref = prec.batched(f32, held)
    fidelity = {p: prec.check_fidelity(ref, prec.batched(e, held)) for p, e in embs.items()}
    stored = ref / np.linalg.norm(ref, axis=1, keepdims=True)  # as a feature shard holds it
    fidelity["f32 stored as float16"] = prec.check_fidelity(ref, stored.astype(np.float16))
    batches = [held[i:i + a.batch_size] for i in range(0, len(held), a.batch_size)]
    for e in embs.values():
        e(batches[0])  # warm up at this batch size
    rates = {p: [] for p in embs}
    names = list(embs)
    for r in range(a.rounds):
        for p in names[r % len(names):] + names[:r % len(names)]:
            rates[p].append(rate(embs[p], batches))
        print(f"  {model} round {r + 1}/{a.rounds}: " + ", ".join(
            f"{p} {rates[p][-1]:.1f}/s" for p in names), file=sys.stderr)
    return {"load_s": load, "fidelity": fidelity, "rates": rates,
            "vs_f32": {p: [x / f for x, f in zip(rates[p], rates["f32"])] for p in names},
            "calibration_s": embs["int8"].info["calibration"].get("seconds")}


def stage(store, a) -> dict:
    """The extract stage, --precision f32 against auto, interleaved (auto measures and,
    where NNCF is installed, calibrates INT8 at load; the steady rate leaves load out)."""
    out: dict = {"f32": [], "auto": [], "chosen": []}
    for r in range(a.rounds):
        for p in (["f32", "auto"] if r % 2 == 0 else ["auto", "f32"]):
            cfg = ExtractConfig(store=store.url, model="efficientnet-b0", weights=a.weights,
                                progress=False, batch_size=a.batch_size, executor="thread",
                                mixed_precision="off", runtime="openvino", precision=p)
            steady, _, _ = pipeline_rates(store, cfg)
            out[p].append(steady)
            if p == "auto":
                out["chosen"].append(store.run_info()["stages"]["extract"]["precision"])
        print(f"  stage round {r + 1}/{a.rounds}: f32 {out['f32'][-1]:.1f}/s, auto "
              f"({out['chosen'][-1]}) {out['auto'][-1]:.1f}/s", file=sys.stderr)
    out["vs_f32"] = [x / f for x, f in zip(out["auto"], out["f32"])]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="*", default=["efficientnet-b0", "resnet50"])
    ap.add_argument("--weights", default="none", help="none (random) or imagenet")
    ap.add_argument("--n", type=int, default=600, help="photos in the store (half held out)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--stage", action="store_true", help="also the whole extract stage")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "out")
    a = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    a.out.mkdir(parents=True, exist_ok=True)
    store = image_store(a.out, a.n)
    sample = prec.store_sample(store, 224, calibration=a.n // 2, held_out=a.n - a.n // 2)
    report = {"date": dt.date.today().isoformat(), "machine": machine(),
              "command": "python bench/bench_precision.py " + " ".join(sys.argv[1:]),
              "calibration": len(sample.calibration), "held_out": len(sample.held_out),
              "models": {m: measure(m, sample, a) for m in a.models}}
    if a.stage:
        report["stage"] = stage(store, a)
    (a.out / "precision.json").write_text(json.dumps(report, indent=1))
    print(f"{report['date']} | {report['machine']} | {report['command']}")
    print(f"{len(sample.held_out)} held-out real photos at 224 px (INT8 calibrated on "
          f"{len(sample.calibration)} others), batch {a.batch_size}, {a.rounds} interleaved "
          f"rounds; weights {a.weights}\n")
    print("| model | precision | images/s (best) | vs float32 (median of rounds) | mean cosine "
          "to float32 | top-10 overlap with float32 | passes |")
    print("|---|---|---:|---:|---:|---:|---|")
    for model, r in report["models"].items():
        for p, f in r["fidelity"].items():
            x = r["rates"].get(p)
            speed = (f"{max(x):.1f} | {np.median(r['vs_f32'][p]):.2f} ("
                     f"{', '.join(f'{v:.2f}' for v in r['vs_f32'][p])})") if x else " | "
            print(f"| {model} | {p} | {speed} | {f['cosine']:.5f} | {f['overlap']:.3f} | "
                  f"{'yes' if f['passed'] else 'no'} |")
    if a.stage:
        s = report["stage"]
        print(f"\nextract stage, efficientnet-b0: f32 {np.median(s['f32']):.1f} images/s, "
              f"auto ({', '.join(sorted(set(s['chosen'])))}) {np.median(s['auto']):.1f} "
              f"images/s, {np.median(s['vs_f32']):.2f}x "
              f"({', '.join(f'{v:.2f}' for v in s['vs_f32'])})")


if __name__ == "__main__":
    main()
