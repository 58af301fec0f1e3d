"""Deterministic demo corpus of real photographs, built offline.

The photographs bundled in scikit-image's wheel are the subjects (classes); each is turned
into many variants (crops, flips, scales, rotations, colour shifts, grayscale, JPEG
recompression) written in the formats a real corpus holds: mostly JPEG, plus PNG (RGB, RGBA,
16-bit, palette), BMP, WebP, EXIF-rotated JPEG and CMYK JPEG.  About half are loose files,
the rest sit in uncompressed tar archives and one small .tar.gz; a `broken/` folder holds one
file of each failure kind (see `make_bad_inputs`).  Same (n, seed) gives byte-identical files.
"""
from __future__ import annotations

import gzip
import io
import json
import logging
import tarfile
from pathlib import Path

import numpy as np

from .bad_inputs import make_bad_inputs
from .images import (
    ARCHIVE_SIZE,
    ENCODERS,
    GZ_COUNT,
    LARGE_SIDE,
    N_LARGE,
    NON_ASCII_FILE_TAG,
    NON_ASCII_SUBJECTS,
    SPECIAL_FORMATS,
    Item,
    _augment,
    _enlarge,
    image_info,
    load_sources,
)

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- corpus

def _variant(img: np.ndarray, subject: str, index: int, fmt: str, large: bool,
             rng: np.random.Generator) -> Item:
    img, ops = (_enlarge(img, rng), ["large"]) if large else _augment(img, rng)
    ext, encode = ENCODERS[fmt]
    quality = int(rng.integers(30, 96))
    parts = [f"{index:03d}", *ops, *([fmt] if fmt != "jpeg" else [f"q{quality}"])]
    if subject in NON_ASCII_SUBJECTS.values():
        parts.insert(1, NON_ASCII_FILE_TAG)
    return Item(subject, "-".join(parts) + ext, encode(img, quality))


def _make_items(sources: dict[str, np.ndarray], count: int,
                rng: np.random.Generator) -> list[Item]:
    """`count` variants spread evenly over the subjects; a few in special formats."""
    subjects = list(sources)
    plan = [(s, i) for k, s in enumerate(subjects)
            for i in range(count // len(subjects) + (k < count % len(subjects)))]
    by_size = sorted(subjects, key=lambda s: -min(sources[s].shape[:2]))
    large = {(s, 0) for s in by_size[:N_LARGE]}
    pool = [j for j, slot in enumerate(plan) if slot not in large]
    kinds = [fmt for fmt in SPECIAL_FORMATS for _ in range(max(1, count // 80))][:len(pool)]
    chosen = rng.choice(pool, size=len(kinds), replace=False).tolist()
    fmt_at = dict(zip(chosen, kinds))
    return [_variant(sources[s], s, i, fmt_at.get(j, "jpeg"), (s, i) in large, rng)
            for j, (s, i) in enumerate(plan)]


def _tar_bytes(items: list[Item]) -> bytes:
    """Uncompressed PAX tar with fixed metadata and sorted members."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for item in sorted(items, key=lambda it: it.member):
            info = tarfile.TarInfo(item.member)
            info.size, info.mtime, info.mode = len(item.data), 0, 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(item.data))
    return buf.getvalue()


def _write_archives(directory: Path, items: list[Item],
                    rng: np.random.Generator) -> dict[str, list[Item]]:
    """part-00000.tar, ... of ~ARCHIVE_SIZE images each, then one small part-XXXXX.tar.gz."""
    items = sorted(items, key=lambda it: it.member)
    in_gz = set(rng.choice(len(items), size=min(GZ_COUNT, len(items) // 2),
                           replace=False).tolist())
    plain = [it for i, it in enumerate(items) if i not in in_gz]
    n_tar = max(1, round(len(plain) / ARCHIVE_SIZE))
    bounds = [round(k * len(plain) / n_tar) for k in range(n_tar + 1)]
    groups = {f"part-{k:05d}.tar": plain[bounds[k]:bounds[k + 1]] for k in range(n_tar)}
    if in_gz:
        groups[f"part-{n_tar:05d}.tar.gz"] = [items[i] for i in sorted(in_gz)]
    directory.mkdir(parents=True, exist_ok=True)
    for name, group in groups.items():
        data = _tar_bytes(group)
        if name.endswith(".gz"):
            data = gzip.compress(data, compresslevel=9, mtime=0)
        (directory / name).write_bytes(data)
    return groups


def make_demo_corpus(out: str | Path, n: int = 400, seed: int = 0) -> dict:
    """Write the demo corpus of `n` images into `out` (must be absent or empty).

    Returns the manifest, also written to `out/manifest.json`.
    """
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out} exists and is not an empty folder")
    sources = load_sources()
    if n <= len(sources):
        raise ValueError(f"n={n} is too small: need more than one image per subject "
                         f"({len(sources)} subjects)")
    rng = np.random.default_rng(seed)
    items = _make_items(sources, n - 1, rng)
    loose, archived = items[0::2], items[1::2]
    original = next(it for it in loose if it.name.endswith(".jpg"))
    copy = Item(original.subject, f"{Path(original.name).stem} (copy).jpg", original.data)
    loose.append(copy)

    files: dict[str, Item] = {}
    for item in loose:
        path = out / "photos" / item.subject / item.name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(item.data)
        files[f"photos/{item.member}"] = item
    groups = _write_archives(out / "archives", archived, rng)
    files.update({f"archives/{name}/{item.member}": item
                  for name, group in groups.items() for item in group})
    bad = make_bad_inputs(out / "photos" / "broken")

    infos = {rel: image_info(item.data) for rel, item in files.items()}
    infos.update({f"photos/broken/{name}": image_info((out / "photos/broken" / name).read_bytes())
                  for name, kind in bad.items() if kind == "ok"})
    manifest = {
        "n_images": len(files),
        "subjects": sorted(sources),
        "loose": len(loose),
        "archived": len(archived),
        "archives": list(groups),
        "bad_inputs": {f"photos/broken/{name}": kind for name, kind in sorted(bad.items())},
        "duplicates": [[f"photos/{original.member}", f"photos/{copy.member}"]],
        "seed": seed,
        "large_images": sorted(rel for rel in files if min(infos[rel][1]) >= LARGE_SIDE),
        "exif_rotated": {rel: {"orientation": o, "stored_size": list(s), "display_size": list(d)}
                         for rel, (s, d, o) in sorted(infos.items()) if o != 1},
        "images": {rel: files[rel].subject for rel in sorted(files)},
    }
    (out / "manifest.json").write_text(
        json.dumps(manifest, sort_keys=True, indent=2, ensure_ascii=False) + "\n", "utf-8")
    log.info("demo corpus: %d images of %d subjects in %s (%d loose, %d in %d archives)",
             len(files), len(sources), out, len(loose), len(archived), len(groups))
    return manifest
