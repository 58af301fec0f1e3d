#!/usr/bin/env python
"""Near-duplicate quality on real photos: pair precision and recall per kind of edit, the
stage's groups against a perceptual-hash baseline.

The labelled set (`workflow.demo.near_copies`): every flowers12 photo (960, 12 species)
and the seven larger photos of `../shared/assets/images/photos`, each with one seeded
variant per edit (downscale 30-70%, JPEG quality 30-95, crop up to 15%, brightness and
contrast, a text overlay, a 2-6 degree rotation, and a horizontal flip as its own case).
The other photos of the same species are the hard negatives; copies among the photos
themselves (flowers12 holds about 120 pairs: one photo cropped, zoomed or mirrored) are
found by keypoint matching (`same_picture`) and labelled one picture. The whole workflow runs on
it (preprocess, extract with the pretrained MobileNet TFLite embedding of
`../shared/assets/models`, train, add, duplicates with its measured threshold), then
regroups at other thresholds (no new search). Baseline: 64-bit pHash (imagehash, as
imagededup uses it) at Hamming distance 10 (imagededup's default) and at every distance.

Goal at the default threshold: pair precision >= 0.98 and recall >= 0.90 over all edits
but the flip; more recall than pHash at equal precision.

    python bench/bench_duplicates_quality.py [--out bench/out/dupq] [--per-class 80]
        [--set flowers12|cifar10]
        [--model ../shared/assets/models/mobilenet_v2_1.0_224_quant.tflite]
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from workflow.demo.near_copies import (
    hash_quality,
    make_near_copy_set,
    pair_quality,
    phashes,  # noqa: E402
)
from workflow.inputs.edits import KINDS  # noqa: E402
from workflow.utils import cpu_name  # noqa: E402

ASSETS = REPO.parent / "shared" / "assets"
MODEL = ASSETS / "models" / "mobilenet_v1_1.0_224_quant_embedding_extractor.tflite"
V2_TENSOR = "MobilenetV2/Logits/AvgPool"  # mobilenet_v2_1.0_224_quant.tflite's embedding


def originals(per_class: int) -> list[tuple[str, Path]]:
    """flowers12's photos (`per_class` of each species) and the seven larger photos."""
    out = []
    flowers = ASSETS / "images" / "flowers12"
    for cls in sorted({p.name for p in flowers.glob("*/*") if p.is_dir()}):
        photos = sorted(flowers.glob(f"*/{cls}/*.jpg"))[:per_class]
        out += [(cls, p) for p in photos]
    out += [("photos", p) for p in sorted((ASSETS / "images" / "photos").iterdir())
            if p.suffix.lower() in (".jpg", ".bmp")]
    return out


def cifar_originals(per_class: int, out: Path, scale: int = 4) -> list[tuple[str, Path]]:
    """CIFAR-10's test images (`per_class` of each class), 32 px scaled up `scale` times
    (bicubic) and saved as JPEG (quality 95): a second real set, of small low-detail
    pictures whose classes hold many look-alikes (the hard negatives)."""
    import cv2
    pairs = []
    for folder in sorted((ASSETS / "images" / "cifar10-test").iterdir()):
        for p in sorted(folder.glob("*.jpg"))[:per_class]:
            img = cv2.imread(str(p), cv2.IMREAD_COLOR)
            big = cv2.resize(img, None, fx=scale, fy=scale, interpolation=cv2.INTER_CUBIC)
            dst = out / folder.name / p.name
            dst.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(dst), big, [cv2.IMWRITE_JPEG_QUALITY, 95])
            pairs.append((folder.name, dst))
    return pairs


def workflow(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "workflow", *args, "--no-progress"], cwd=REPO,
                   check=True, capture_output=True)


def groups_of(store: Path) -> tuple[list[list[str]], dict]:
    g = json.loads((store / "duplicates" / "groups.json").read_text())
    return [x["keys"] for x in g["groups"]], g


def summary(q: dict) -> dict:
    kinds = [k for k in KINDS if k != "flip" and k in q["by_kind"]]
    recall = sum(q["by_kind"][k]["recall"] for k in kinds) / len(kinds)
    return {"precision": round(q["precision"], 4), "recall_no_flip": round(recall, 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "out" / "dupq")
    ap.add_argument("--set", choices=("flowers12", "cifar10"), default="flowers12",
                    help="the originals: flowers12's photos and the seven larger photos, "
                    "or CIFAR-10's test images scaled up 4x")
    ap.add_argument("--per-class", type=int, default=80,
                    help="originals per flowers12 species or CIFAR-10 class")
    ap.add_argument("--thresholds", type=float, nargs="*",
                    default=[0.85, 0.88, 0.90, 0.92, 0.94, 0.96])
    ap.add_argument("--model", type=Path, default=MODEL,
                    help="a .tflite model (MobileNet v2: its AvgPool tensor is read)")
    a = ap.parse_args()
    if not a.model.exists():
        raise SystemExit(f"the assets are not at {ASSETS}")
    shutil.rmtree(a.out, ignore_errors=True)
    corpus, store = a.out / "corpus", a.out / "store"
    t = time.perf_counter()
    found = originals(a.per_class) if a.set == "flowers12" else \
        cifar_originals(a.per_class, a.out / "originals")
    labels = make_near_copy_set(found, corpus)
    made = time.perf_counter() - t
    t = time.perf_counter()
    workflow("preprocess", "--store", str(store), "--source", str(corpus))
    tensor = ["--embedding-tensor", V2_TENSOR] if "v2" in a.model.name else []
    workflow("extract", "--store", str(store), "--model", str(a.model), *tensor)
    workflow("train", "--store", str(store))
    workflow("add", "--store", str(store))
    workflow("duplicates", "--store", str(store))
    took = time.perf_counter() - t
    groups, g = groups_of(store)
    ours = pair_quality(groups, labels)
    report = {"date": dt.date.today().isoformat(),
              "machine": f"{cpu_name()}, {os.cpu_count()} cores, Python "
                         f"{platform.python_version()}",
              "command": "python bench/bench_duplicates_quality.py " + " ".join(sys.argv[1:]),
              "model": a.model.name, "set": a.set, "images": len(labels),
              "originals": sum(v[2] is None for v in labels.values()),
              "pictures": len({v[0] for v in labels.values()}),
              "seconds": {"make set": round(made, 1), "workflow": round(took, 1)},
              "threshold": g["threshold"], "threshold_from": g["threshold_from"],
              "calibration": json.loads((store / "duplicates" / "calibration.json").read_text()),
              "ours": ours, "ours_summary": summary(ours), "sweep": {}}
    for th in a.thresholds:
        workflow("duplicates", "--store", str(store), "--threshold", str(th))
        report["sweep"][th] = summary(pair_quality(groups_of(store)[0], labels))
    paths = {k: corpus / k for k in labels}
    hashes = phashes(paths)
    report["phash"] = {d: hash_quality(hashes, labels, d) for d in range(0, 25, 2)}
    report["phash_summary"] = {d: summary(q) for d, q in report["phash"].items()}
    (a.out / "quality.json").write_text(json.dumps(report, indent=1))
    print_report(report)


def print_report(r: dict) -> None:
    print(f"\n{r['date']} | {r['machine']} | {r['command']}\n")
    print(f"{r.get('set', 'flowers12')}: {r['images']:,} images ({r['originals']:,} "
          f"originals of {r['pictures']:,} "
          f"pictures), {r['model']}; workflow "
          f"{r['seconds']['workflow']:.0f} s; threshold {r['threshold']:g} "
          f"({r['threshold_from']})\n")
    c = r["calibration"]
    if "hard_negatives" in c:
        h, m = c["hard_negatives"], c["margin"]
        print(f"Calibration: the edits allow {c['edits_allow']:g}; the hardest negatives of "
              f"{h['images']} images: median {h['median']:.3f}, 99th percentile "
              f"{h['p99']:.3f}, max {h['max']:.3f}; threshold {c['threshold']:g} (margin "
              f"{m['to_negatives_p99']:+.3f} to the negatives, {m['to_edits']:+.3f} to the "
              "edits)\n")
    ph = r["phash"][10]
    print("| edit | ours recall | ours precision | pHash<=10 recall | pHash<=10 precision |")
    print("|---|---:|---:|---:|---:|")
    for k in KINDS:
        o, p = r["ours"]["by_kind"][k], ph["by_kind"][k]
        print(f"| {k} | {o['recall']:.3f} | {o['precision']:.3f} | {p['recall']:.3f} | "
              f"{p['precision']:.3f} |")
    s, hs = r["ours_summary"], r["phash_summary"][10]
    print(f"| all but flip | {s['recall_no_flip']:.3f} | {s['precision']:.3f} (all pairs) | "
          f"{hs['recall_no_flip']:.3f} | {hs['precision']:.3f} (all pairs) |\n")
    print("| threshold | precision | recall (no flip) |\n|---|---:|---:|")
    for th, q in r["sweep"].items():
        print(f"| {th} | {q['precision']:.3f} | {q['recall_no_flip']:.3f} |")
    print("\n| pHash distance | precision | recall (no flip) |\n|---|---:|---:|")
    for d, q in r["phash_summary"].items():
        print(f"| {d} | {q['precision']:.3f} | {q['recall_no_flip']:.3f} |")


if __name__ == "__main__":
    main()
