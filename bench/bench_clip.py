#!/usr/bin/env python
"""Image-text models (CLIP, SigLIP) on a CPU: the image tower on Keras against the CPU
runtime, and a query in words against a query image, end to end.

The presets cannot be downloaded here, so each model is its preset's architecture at
full size with random weights (the compute of the real weights), built here from the
preset's hyperparameters and saved as a local preset folder with a small test
vocabulary (the towers' sizes are the preset's; only the tokenizer's vocabulary is
small), then loaded as users load a downloaded preset (`--weights FOLDER`).

(a) The image tower's rate, model only, on batches of real photos (flowers12 from
    ../shared/assets) decoded beforehand: Keras and the CPU runtimes (the tower converted
    to TFLite once, run by OpenVINO, and by TFLite/XNNPACK with --tflite) in interleaved
    rounds whose order rotates; the median rate of each, the median of the per-round
    ratios to Keras, the smallest cosine of each runtime's features to Keras's, what
    `--runtime auto` resolves to, and the hours the better one needs for 2M images
    (model only: decoding runs beside it on the other cores in the extract stage).
(b) With --store (a 512-d store of bench/bench_index.py, e.g. `python bench/bench_index.py
    --n 2000000 --d 512 --out DIR`, then --store DIR/store), single queries of
    clip-vit-b32 one after another, text and image interleaved: a text (tokenize, text
    tower, normalise) and an image (decode, preprocess as a store does, crop, image
    tower on the runtime `auto` picks, normalise), each then searched (k=10, the store's
    default mode) as a vector: the product's code for each part (`QueryEmbedder`,
    `Searcher.search`), without the store's check that its model has a text tower (the
    synthetic store has no model). p50 and p95 of each part and of the sums.

    python bench/bench_clip.py [--models clip-vit-b32 siglip-base-224] [--n 128]
        [--rounds 3] [--tflite] [--store DIR/store] [--queries 50] [--out DIR]
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))  # the tests' tiny vocabulary
sys.path.insert(0, str(REPO / "tests" / "models"))
ASSETS = REPO.parent / "shared" / "assets" / "images"

# the presets' architectures (their config.json on Kaggle)
CLIP_TEXT = dict(vocabulary_size=49408, embedding_dim=512, hidden_dim=512, num_layers=12,
                 num_heads=8, intermediate_dim=2048, intermediate_activation="quick_gelu",
                 max_sequence_length=77)
ARCHITECTURES = {
    "clip-vit-b32": dict(patch_size=32, hidden_dim=768, num_layers=12, num_heads=12,
                         intermediate_dim=3072, intermediate_activation="quick_gelu"),
    "clip-vit-b16": dict(patch_size=16, hidden_dim=768, num_layers=12, num_heads=12,
                         intermediate_dim=3072, intermediate_activation="quick_gelu"),
    "siglip-base-224": dict(patch_size=16, hidden_dim=768, num_layers=12, num_heads=12,
                            intermediate_dim=3072),
}
SIGLIP_TEXT = dict(vocabulary_size=32000, embedding_dim=768, hidden_dim=768, num_layers=12,
                   num_heads=12, intermediate_dim=3072, max_sequence_length=64)


def save_full_size(model: str, folder: Path) -> Path:
    """The preset's architecture with random weights (seed 0) as a preset folder."""
    if (folder / "config.json").exists():
        return folder
    import io

    import keras
    import keras_hub
    keras.utils.set_random_seed(0)
    vision = dict(ARCHITECTURES[model], image_shape=(224, 224, 3))
    if model.startswith("clip"):
        from test_clip import tiny_vocabulary
        vocabulary, merges = tiny_vocabulary()
        backbone = keras_hub.models.CLIPBackbone(
            vision_encoder=keras_hub.models.CLIPVisionEncoder(**vision),
            text_encoder=keras_hub.models.CLIPTextEncoder(**CLIP_TEXT), projection_dim=512)
        preprocessor = keras_hub.models.CLIPPreprocessor(
            keras_hub.models.CLIPTokenizer(vocabulary=vocabulary, merges=merges),
            keras_hub.layers.CLIPImageConverter(
                image_size=(224, 224), scale=[1 / (255 * s) for s in (0.2686, 0.2613, 0.2758)],
                offset=[-m / s for m, s in ((0.4815, 0.2686), (0.4578, 0.2613),
                                            (0.4082, 0.2758))]), sequence_length=77)
    else:
        import sentencepiece
        proto = io.BytesIO()
        sentencepiece.SentencePieceTrainer.train(
            sentence_iterator=iter(["a red bicycle", "a blue car", "a dog and a cat"]),
            model_writer=proto, vocab_size=12, model_type="WORD", pad_id=0, bos_id=1,
            eos_id=2, unk_id=3, unk_piece="<unk>", minloglevel=2)
        backbone = keras_hub.models.SigLIPBackbone(
            keras_hub.models.SigLIPVisionEncoder(**vision),
            keras_hub.models.SigLIPTextEncoder(**SIGLIP_TEXT))
        preprocessor = keras_hub.models.SigLIPPreprocessor(
            keras_hub.models.SigLIPTokenizer(proto=proto.getvalue()),
            keras_hub.layers.SigLIPImageConverter(image_size=(224, 224), scale=1 / 127.5,
                                                  offset=-1.0), sequence_length=64)
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    backbone.save_to_preset(str(tmp))
    preprocessor.save_to_preset(str(tmp))
    os.replace(tmp, folder)
    return folder


def photos(n: int) -> list[bytes]:
    files = sorted((ASSETS / "flowers12").rglob("*.jpg"))
    if not files:
        sys.exit(f"no photos under {ASSETS / 'flowers12'}")
    step = max(1, len(files) // n)
    return [f.read_bytes() for f in files[::step][:n]]


def cosine_min(a: np.ndarray, b: np.ndarray) -> float:
    return float((np.sum(a * b, 1) / (np.linalg.norm(a, axis=1)
                                      * np.linalg.norm(b, axis=1))).min())


def tower_rates(model: str, folder: Path, jpegs: list[bytes], a) -> dict:
    from workflow.execution.decoding import DecodeChunk
    from workflow.models.converted import choose_runtime
    from workflow.models.keras import ConvertedHubEmbedder
    from workflow.models.loading import make_embedder
    from workflow.models.registry import ModelSpec
    t = time.perf_counter()
    keras_e = make_embedder(ModelSpec(model, str(folder)), "off", runtime="keras")
    load = {"keras": time.perf_counter() - t}
    embs = {"keras": keras_e}
    for rt in ("openvino", "tflite") if a.tflite else ("openvino",):
        t = time.perf_counter()  # conversion (first time only), load, the check
        embs[rt] = ConvertedHubEmbedder(keras_e, rt)
        load[rt] = time.perf_counter() - t
    decode = DecodeChunk(224)
    batches = [decode(jpegs[i:i + a.batch_size]) for i in range(0, len(jpegs), a.batch_size)]
    want = keras_e(batches[0])
    cos = {rt: cosine_min(e(batches[0]), want) for rt, e in embs.items() if rt != "keras"}
    names = list(embs)
    rates = {rt: [] for rt in names}
    for i in range(a.rounds):
        for rt in names[i % len(names):] + names[:i % len(names)]:
            embs[rt](batches[0][:2])  # warm (shapes) outside the timing
            t = time.perf_counter()
            for b in batches:
                embs[rt](b)
            rates[rt].append(len(jpegs) / (time.perf_counter() - t))
        print(f"  {model} round {i + 1}: " + ", ".join(
            f"{rt} {rates[rt][-1]:.2f}" for rt in names) + " images/s", flush=True)
    ratios = {rt: float(np.median(np.array(rates[rt]) / np.array(rates["keras"])))
              for rt in names if rt != "keras"}
    best = max(names, key=lambda rt: np.median(rates[rt]))
    return {"model": model, "images": len(jpegs), "batch_size": a.batch_size,
            "rounds": a.rounds, "rates": rates,
            "median": {rt: float(np.median(v)) for rt, v in rates.items()},
            "ratio_to_keras": ratios, "min_cosine": cos, "load_s": load,
            "auto": choose_runtime("auto", keras_e), "best": best,
            "hours_2m": 2e6 / float(np.median(rates[best])) / 3600}


def pct(v: list[float]) -> str:
    return f"p50 {np.percentile(v, 50) * 1e3:.1f} ms, p95 {np.percentile(v, 95) * 1e3:.1f} ms"


def query_latency(folder: Path, store: str, a) -> dict:
    from workflow.inputs.imaging import ImageOptions
    from workflow.models.loading import make_embedder
    from workflow.models.registry import ModelSpec
    from workflow.search.query import QueryEmbedder
    from workflow.search.searcher import Searcher
    emb = make_embedder(ModelSpec("clip-vit-b32", str(folder)))  # as a query side loads it
    qe = QueryEmbedder.__new__(QueryEmbedder)  # the store is synthetic: no settings to read
    qe.opts, qe.embedder = ImageOptions(), emb
    s = Searcher(store, cache_size=0)
    mode = s.default_mode
    words = ["red", "bicycle", "blue", "car", "dog", "cat", "a"]
    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(words, 4 + i % 8)) + f" {i}" for i in range(a.queries)]
    images = photos(a.queries + 5)[5:]  # not the warm-up ones
    for j in photos(5):  # warm up: the index, the re-rank store's pages, both towers
        s.search(qe.embed([j])[0], k=10)
        s.search(qe.embed_text(["a red car"])[0], k=10)
    parts = {k: [] for k in ("text embed", "text search", "image embed", "image search")}
    for t, j in zip(texts, images):
        t0 = time.perf_counter()
        v = qe.embed_text([t])[0]
        t1 = time.perf_counter()
        s.search(v, k=10)
        t2 = time.perf_counter()
        w = qe.embed([j])[0]
        t3 = time.perf_counter()
        s.search(w, k=10)
        t4 = time.perf_counter()
        for k, d in zip(parts, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
            parts[k].append(d)
    total = {"text query": [a_ + b for a_, b in zip(parts["text embed"], parts["text search"])],
             "image query": [a_ + b for a_, b in zip(parts["image embed"],
                                                      parts["image search"])]}
    out = {"store": store, "n": len(s.xb), "d": s.d, "mode": mode, "queries": a.queries,
           "image runtime": emb.info.get("runtime", "keras")}
    for k, v in {**parts, **total}.items():
        out[k] = {"p50_ms": float(np.percentile(v, 50) * 1e3),
                  "p95_ms": float(np.percentile(v, 95) * 1e3)}
        print(f"  {k}: {pct(v)}", flush=True)
    return out


def machine() -> str:
    from workflow.utils import cpu_name
    return f"{cpu_name()}, {os.cpu_count()} cores, Python {platform.python_version()}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="*", default=["clip-vit-b32", "siglip-base-224"],
                    choices=list(ARCHITECTURES))
    ap.add_argument("--n", type=int, default=128, help="photos per round")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--tflite", action="store_true", help="TFLite/XNNPACK too")
    ap.add_argument("--store", help="a 512-d store of bench_index.py: query latency")
    ap.add_argument("--queries", type=int, default=50)
    ap.add_argument("--out", type=Path, default=None,
                    help="where the preset folders and conversions go (default: a "
                         "temporary folder, removed at the end)")
    a = ap.parse_args()
    out = a.out or Path(tempfile.mkdtemp(prefix="bench-clip-"))
    out.mkdir(parents=True, exist_ok=True)
    os.environ["XDG_CACHE_HOME"] = str(out / "cache")  # conversions: not the user's cache
    from workflow.models.keras import select_backend
    select_backend()
    report = {"date": dt.date.today().isoformat(), "machine": machine(),
              "command": "python bench/bench_clip.py " + " ".join(sys.argv[1:]),
              "towers": []}
    try:
        jpegs = photos(a.n)
        models = list(a.models)
        if a.store and "clip-vit-b32" not in models:
            models.append("clip-vit-b32")
        folders = {m: save_full_size(m, out / f"{m}-random") for m in models}
        for m in a.models:
            report["towers"].append(tower_rates(m, folders[m], jpegs, a))
        if a.store:
            report["queries"] = query_latency(folders["clip-vit-b32"], a.store, a)
    finally:
        if a.out is None:
            shutil.rmtree(out, ignore_errors=True)
    print(f"\n{report['date']} | {report['machine']} | {report['command']}\n")
    print("| model | Keras | " + " | ".join(
        f"{rt} | {rt} / Keras" for rt in report["towers"][0]["ratio_to_keras"])
        + " | min cosine | auto | 2M images |" if report["towers"] else "")
    for r in report["towers"]:
        med = r["median"]
        print(f"| {r['model']} | {med['keras']:.2f} img/s | " + " | ".join(
            f"{med[rt]:.2f} img/s | {x:.2f}x" for rt, x in r["ratio_to_keras"].items())
            + f" | {min(r['min_cosine'].values()):.7f} | {r['auto']} | "
            f"{r['hours_2m']:.1f} h ({r['best']}) |")
    if "queries" in report:
        q = report["queries"]
        print(f"\nsingle queries, clip-vit-b32, {q['n']:,} x {q['d']} store, mode {q['mode']}, "
              f"k=10, {q['queries']} each, image tower on {q['image runtime']}:")
        for k in ("text embed", "text search", "text query", "image embed", "image search",
                  "image query"):
            print(f"- {k}: p50 {q[k]['p50_ms']:.1f} ms, p95 {q[k]['p95_ms']:.1f} ms")
    if a.out:
        (a.out / "clip.json").write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
