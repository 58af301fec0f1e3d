"""A labelled near-duplicate set from real photos, and how well groups recover it.

`make_near_copy_set` writes each original and one seeded variant per kind of edit
(`inputs.edits`: downscale, jpeg, crop, light, text, rotate, and flip as its own case)
under `out/<class>/`, and returns the labels: for every key, (its picture: the same
number for originals that are the same picture, see `same_picture`; the number of the
original it was made from; the edit, `None` for an original). The other originals of
the same class are the hard negatives. `pair_quality` scores near-duplicate groups
against those labels, and `hash_quality` a perceptual-hash baseline (what imagededup
and many users rely on).
"""
from __future__ import annotations

from itertools import combinations
from pathlib import Path

import cv2
import numpy as np

from ..index.grouping import components
from ..inputs.edits import KINDS, edited_jpeg
from ..inputs.hashing import hamming
from ..inputs.keypoints import keypoints, same_picture_matches


def make_near_copy_set(originals: list[tuple[str, Path]], out: Path, seed: int = 0,
                       kinds: tuple[str, ...] = KINDS) -> dict[str, tuple]:
    """originals: (class, path) pairs. Returns {key: (picture, original, kind or None)},
    keys as preprocess names them (paths under `out`)."""
    labels: dict[str, tuple] = {}
    same = same_picture(originals)
    for n, (cls, path) in enumerate(originals):
        data = Path(path).read_bytes()
        folder = out / cls
        folder.mkdir(parents=True, exist_ok=True)
        stem = f"{n:04d}-{Path(path).stem}"
        (folder / f"{stem}{Path(path).suffix.lower()}").write_bytes(data)
        labels[f"{cls}/{stem}{Path(path).suffix.lower()}"] = (same[n], n, None)
        for j, kind in enumerate(kinds):
            name = f"{stem}-{kind}.jpg"
            (folder / name).write_bytes(edited_jpeg(data, kind,
                                                    np.random.default_rng([seed, n, j])))
            labels[f"{cls}/{name}"] = (same[n], n, kind)
    return labels


def same_picture(originals: list[tuple[str, Path]], max_difference: float = 2.0,
                 min_inliers: int = 35) -> list[int]:
    """For each original, the lowest-numbered original that is the same picture (itself
    if none): photo collections hold copies (flowers12 holds about 120 pairs: the same
    photo cropped, zoomed or mirrored), and a copy of an original is a near-duplicate,
    not a hard negative. Same picture, by tests that neither the model nor the pHash
    decides: a mean absolute difference of at most `max_difference` grey levels between
    32x32 greyscale versions (any two originals), or, for two originals of one class, at
    least `min_inliers` ORB keypoint matches that one similarity transform (rotation,
    scale, shift; RANSAC) maps onto the other photo or its mirror image. On flowers12
    the matches of different photos stay under 30 and those of copies start at 43."""
    grey = [cv2.imdecode(np.frombuffer(Path(p).read_bytes(), np.uint8), cv2.IMREAD_GRAYSCALE)
            for _, p in originals]
    small = np.array([cv2.resize(g, (32, 32), interpolation=cv2.INTER_AREA) for g in grey],
                     np.float32)
    pairs = [(int(j), i) for i in range(len(originals))
             for j in np.flatnonzero(np.abs(small[:i] - small[i]).mean(axis=(1, 2))
                                     <= max_difference)]
    points = [keypoints(g) for g in grey]
    pairs += [(j, i) for i in range(len(originals)) for j in range(i)
              if originals[j][0] == originals[i][0] and
              same_picture_matches(points[i], points[j]) >= min_inliers]
    first = list(range(len(originals)))
    a, b = (np.array(x, np.int64) for x in zip(*pairs)) if pairs else (np.zeros(0, int),) * 2
    for ids, _, _ in components(a, b):
        for i in ids.tolist():
            first[i] = int(ids[0])
    return first


def _true(labels, a: str, b: str) -> bool:
    return labels[a][0] == labels[b][0]


def pair_quality(groups: list[list[str]], labels: dict) -> dict:
    """Pair precision over every pair the groups make (overall and for pairs that hold
    each kind of edit) and, per kind, the recall of (original, its edit) pairs."""
    group_of = {key: g for g, keys in enumerate(groups) for key in keys}
    pairs = [(a, b) for keys in groups for a, b in combinations(keys, 2)]
    out: dict = {"pairs": len(pairs), "precision": _share(pairs, labels), "by_kind": {}}
    for kind, edits in _edit_pairs(labels).items():
        found = sum(1 for o, e in edits if o in group_of and group_of.get(e) == group_of[o])
        with_kind = [p for p in pairs if kind in (labels[p[0]][2], labels[p[1]][2])]
        out["by_kind"][kind] = {"recall": found / len(edits),
                                "precision": _share(with_kind, labels), "pairs": len(edits)}
    return out


def _share(pairs: list, labels: dict) -> float:
    return sum(_true(labels, a, b) for a, b in pairs) / len(pairs) if pairs else 1.0


def phashes(paths: dict[str, Path]) -> dict[str, int]:
    """The 64-bit pHash of each image (imagehash's, as imagededup computes it)."""
    import imagehash
    from PIL import Image
    out = {}
    for key, path in paths.items():
        with Image.open(path) as im:
            out[key] = int(str(imagehash.phash(im.convert("RGB"))), 16)
    return out


def hash_quality(hashes: dict[str, int], labels: dict, max_distance: int) -> dict:
    """Pairs at a Hamming distance of `max_distance` or less, scored as `pair_quality`
    scores groups (recall of (original, edit) pairs per kind; precision of all pairs)."""
    keys = sorted(hashes)
    h = np.array([hashes[k] for k in keys], np.uint64)
    close = set()
    for lo in range(0, len(h), 256):  # Hamming distances, a block of rows at a time
        dist = hamming(h[lo:lo + 256, None], h[None, :])
        for i, j in zip(*np.nonzero(dist <= max_distance)):
            if lo + i < j:
                close.add((keys[lo + i], keys[j]))
    out: dict = {"pairs": len(close), "precision": _share(sorted(close), labels),
                 "by_kind": {}}
    for kind, edits in _edit_pairs(labels).items():
        found = sum(1 for o, e in edits if (min(o, e), max(o, e)) in close)
        with_kind = [p for p in close if kind in (labels[p[0]][2], labels[p[1]][2])]
        out["by_kind"][kind] = {"recall": found / len(edits),
                                "precision": _share(with_kind, labels), "pairs": len(edits)}
    return out


def _edit_pairs(labels: dict) -> dict[str, list[tuple[str, str]]]:
    """(original key, edit key) of every edit, by kind."""
    originals = {n: key for key, (_, n, kind) in labels.items() if kind is None}
    out: dict[str, list] = {}
    for key, (_, n, kind) in labels.items():
        if kind is not None:
            out.setdefault(kind, []).append((originals[n], key))
    return {k: out[k] for k in KINDS if k in out}
