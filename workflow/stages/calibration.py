"""The duplicates stage's default threshold, measured on the store itself: where
near-copies of its own images land for its own model.

A seeded sample of the corpus's stored images is edited the ways near-copies arise
(`inputs.edits`: downscaled, recompressed, cropped, re-exposed, captioned, straightened;
not mirrored), each edit is embedded exactly as a query would be, and its similarity to
its original's feature is measured, as is the pHash distance between the two; so are
the similarities between the sampled originals themselves (unrelated pictures, mostly).
The threshold is the highest (in steps of 0.01) at which 85% of the edits are linked
to their original, as the stage links: at the threshold or above, or confirmed by pHash
(`inputs.hashing`) down to 0.20 below it; and at which a quarter of the edits that pHash
does not link (crops, rotations) still reach it. The pHash catches the near-exact copies
whose similarity a small original made drop, so the threshold can stay high enough to
keep out different pictures of the same subject. The edits are made from the stored
images, already scaled down, so they are harsher than the same edits of an original:
85% of them linked stood for 92-94% of real copies found (BENCHMARKS.md, near-duplicate
quality), and a higher share pulled the threshold down among different photos of one
subject. 150 images keep the threshold within one step across samples. If the closest
5% of the unrelated pairs reach it too (a model that does not tell pictures apart, such
as random weights), it is raised just above those, with a warning. Models differ widely
here (a pretrained CNN puts a recompressed copy near 0.98 and another flower of the same
kind near 0.9; random weights put most pairs above 0.95), which is why no fixed number
serves them all.

The other side is measured too: the store's hardest negatives. For a seeded sample of
images, the stage's own neighbour lists are walked from the closest, and the first
neighbour that is not a copy (its pHash is far, and fewer than COPY_MATCHES ORB
keypoints match under one similarity transform, `inputs.keypoints`) is that image's
hardest negative: a different photo of the same subject, typically. Where the 99th
percentile of those lies below the threshold the edits allow, the threshold is placed in
the middle of the gap (rounded up to 0.01), so that the margin on both sides is stated
in `calibration.json`: edits allowed 0.96 on flowers12 with MobileNet v1, whose nearest
different photos reach 0.936 (0.95 chosen); a collection without look-alikes gets a lower
threshold and finds more crops. Where the non-copies reach as high as the edits, the
threshold goes just above them (precision first), with a warning. The copy test is
first checked on the store's own edits: where it misses more than a tenth of some kind
(pictures with too little detail for keypoints, such as CIFAR-10 scaled up, where it
found 74% of the crops), a neighbour it calls a non-copy may be a copy, and the edits
alone set the threshold.
Stores whose features were not made by a model this workflow loads fall back to 0.90.
"""
from __future__ import annotations

import json
import logging
import math

import numpy as np

from ..errors import BadQuery, WorkflowError
from ..formats.images import stored_jpegs
from ..inputs.edits import CALIBRATION_KINDS, edited_jpeg
from ..inputs.hashing import HASH_DISTANCE, HASH_MARGIN, hamming, phash
from ..inputs.keypoints import jpeg_keypoints, same_picture_matches
from ..search.measure import sample_query_ids

logger = logging.getLogger(__name__)

SAMPLE = 150
REACHED_BY = 0.85  # the share of the sample's edits the threshold lets through
FALLBACK = 0.90
UNRELATED_Q = 0.95
UNHASHED_REACHED_BY = 0.25  # of the edits pHash does not link, the share the model must
BATCH = 64
NEGATIVE_SAMPLE = 500  # images whose hardest negative is looked for
MIN_NEGATIVES = 50     # fewer measured (a store of copies): the edits alone set it
NEGATIVE_Q = 0.99      # the percentile of the hardest negatives the threshold must clear
COPY_MATCHES = 15      # ORB matches from which a neighbour counts as a copy (flowers12:
#                        different photos of one species stay under 30, but few copies of
#                        a small image reach 30; between 15 and 30 most pairs are copies)
COPY_TEST_SAMPLE = 50  # sampled images whose edits check the copy test on the store
MIN_RECOGNISED = 0.90  # of every kind of edit, the share the copy test must recognise


def calibrate(searcher, sample: int = SAMPLE, seed: int = 0, neighbours=None) -> dict:
    """{"threshold", "calibrated", ...what it was measured on}. `neighbours()` gives the
    stage's (ids, neighbour ids, similarities), closest first, for the hard negatives."""
    try:
        embedder = searcher.embedder
    except (BadQuery, WorkflowError) as e:
        logger.warning("duplicates: no calibration (%s); threshold %.2f", e, FALLBACK)
        return {"threshold": FALLBACK, "calibrated": False, "why": str(e)}
    ids = sample_query_ids(searcher.xb, sample, seed, searcher.removals()[1])
    jpegs = stored_jpegs(searcher.store, searcher.plan_info[1], ids.tolist())
    edits, owners, kinds = [], [], []
    for i in ids.tolist():
        for j, kind in enumerate(CALIBRATION_KINDS):
            if jpegs.get(i):
                edits.append(edited_jpeg(jpegs[i], kind, np.random.default_rng([seed, i, j])))
                owners.append(i)
                kinds.append(kind)
    sims = _edit_similarities(embedder, searcher.xb, edits, owners)
    own = {i: phash(jpegs[i]) for i in set(owners)}
    hashed = np.array([_near(own[o], phash(e)) for o, e in zip(owners, edits)], bool)
    x = np.asarray(searcher.xb[ids], np.float32)
    unrelated = (x @ x.T)[np.triu_indices(len(ids), 1)]
    hard, extra = None, {}
    if neighbours is not None:
        extra["copy_test"] = copy_test_check(jpegs, owners, edits, kinds, hashed)
        if min(extra["copy_test"].values()) >= MIN_RECOGNISED:
            def read(wanted: list[int]) -> dict[int, bytes]:
                return stored_jpegs(searcher.store, searcher.plan_info[1], wanted)
            hard = hardest_negatives(read, *neighbours(), searcher.removals()[1],
                                     NEGATIVE_SAMPLE, seed)
        else:
            extra["edits_alone"] = (
                f"the copy test recognises fewer than {MIN_RECOGNISED:.0%} of some kind of "
                "this store's own edits (too little detail for keypoints), so the "
                "neighbours it calls non-copies may be copies: the edits alone set the "
                "threshold")
            logger.info("duplicates: %s", extra["edits_alone"])
    return {**_choose(sims, np.array(kinds), unrelated, len(ids), hashed, hard), **extra}


def _keypoints_match(a, b) -> bool:
    """The keypoint half of the copy test (the other: pHashes near): COPY_MATCHES
    matches or more."""
    return a is not None and b is not None and same_picture_matches(a, b) >= COPY_MATCHES


def copy_test_check(jpegs: dict, owners: list[int], edits: list[bytes], kinds: list[str],
                    hashed: np.ndarray, n: int = COPY_TEST_SAMPLE) -> dict[str, float]:
    """The share of the edits of the first `n` sampled images that the copy test
    recognises as copies, by kind: where it misses many, its verdict "not a copy" is not
    to be trusted on this store."""
    first = set(sorted(set(owners))[:n])
    points = {i: jpeg_keypoints(jpegs[i]) for i in first}
    seen: dict[str, list[bool]] = {}
    for o, e, k, h in zip(owners, edits, kinds, hashed.tolist()):
        if o in first:
            seen.setdefault(k, []).append(h or _keypoints_match(points[o], jpeg_keypoints(e)))
    return {k: round(float(np.mean(v)), 4) for k, v in seen.items()}


def hardest_negatives(read, ids: np.ndarray, nbrs: np.ndarray, sims: np.ndarray,
                      removed: np.ndarray, sample: int, seed: int) -> np.ndarray:
    """For a seeded sample of the rows of (ids, nbrs, sims) (each row's neighbours closest
    first; `read(ids)` gives the stored JPEGs by id), the similarity of the closest
    neighbour that is not a copy of it (pHash far and fewer than COPY_MATCHES keypoint
    matches); none for a row whose neighbours are all copies (its hardest negative lies
    further, unmeasured)."""
    gone = set(removed.tolist())
    rows = np.flatnonzero(~np.isin(ids, removed))
    rows = np.sort(np.random.default_rng(seed).choice(rows, min(sample, len(rows)),
                                                      replace=False))
    wanted = np.unique(np.concatenate([ids[rows], nbrs[rows].ravel()]))
    jpegs = read(wanted[wanted >= 0].tolist())
    hashes: dict = {}
    points: dict = {}

    def of(i: int, known: dict, f):
        if i not in known:
            known[i] = f(jpegs[i]) if jpegs.get(i) else None
        return known[i]

    def copies(i: int, j: int) -> bool:
        return _near(of(i, hashes, phash), of(j, hashes, phash)) or \
            _keypoints_match(of(i, points, jpeg_keypoints), of(j, points, jpeg_keypoints))

    out = []
    for r in rows.tolist():
        i = int(ids[r])
        for j, s in zip(nbrs[r].tolist(), sims[r].tolist()):
            if j >= 0 and j not in gone and not copies(i, j):
                out.append(s)
                break
    return np.array(out, np.float32)


def _near(a: int | None, b: int | None) -> bool:
    return a is not None and b is not None and \
        int(hamming(np.uint64(a), np.uint64(b))) <= HASH_DISTANCE


def _edit_similarities(embedder, xb, edits: list[bytes], owners: list[int]) -> np.ndarray:
    """Each edit's similarity to its original's feature (NaN for an edit that cannot be
    embedded: e.g. downscaled below the smallest size preprocess accepts)."""
    out = np.full(len(edits), np.nan, np.float32)
    for lo in range(0, len(edits), BATCH):
        part = range(lo, min(lo + BATCH, len(edits)))
        try:
            e = embedder.embed([edits[i] for i in part])
            rows = list(part)
        except BadQuery:  # one at a time, to know which
            e, rows = [], []
            for i in part:
                try:
                    e.append(embedder.embed([edits[i]])[0])
                    rows.append(i)
                except BadQuery:
                    continue
            e = np.array(e, np.float32).reshape(len(rows), -1)
        if rows:
            own = np.asarray(xb[np.array([owners[i] for i in rows])], np.float32)
            out[rows] = np.sum(e * own, axis=1)
    return out


def _choose(sims: np.ndarray, kinds: np.ndarray, unrelated: np.ndarray, n: int,
            hashed: np.ndarray | None = None, hard: np.ndarray | None = None) -> dict:
    """The highest threshold (in steps of 0.01) at which REACHED_BY of the edits are
    linked to their original (by similarity, or by pHash within HASH_MARGIN below it)
    and UNHASHED_REACHED_BY of those pHash does not link reach it; then, given the
    hardest negatives `hard`, moved to the middle of the gap between them and it."""
    ok = ~np.isnan(sims)
    if not ok.any():
        return {"threshold": FALLBACK, "calibrated": False, "why": "no edit could be embedded"}
    hashed = np.zeros(len(sims), bool) if hashed is None else hashed
    s, h = sims[ok], hashed[ok]
    reached = 0.0
    for t in np.round(np.arange(1.0, 0.0, -0.01), 2):
        linked = (s >= t) | (h & (s >= t - HASH_MARGIN))
        unhashed = s[~h] >= t  # the copies only the model can find: crops, rotations...
        if linked.mean() >= REACHED_BY and (not len(unhashed) or
                                            unhashed.mean() >= UNHASHED_REACHED_BY):
            reached = float(t)
            break
    # the closest 5% of the sample's pairs: unrelated pictures, but for the true copies
    # a sample of a collection full of copies holds (1-2% of its pairs in a test set)
    # copies a random sample of a real collection may hold
    top = float(np.quantile(unrelated, UNRELATED_Q)) if len(unrelated) else -1.0
    threshold = reached
    separable = threshold > top
    if not separable:
        threshold = min(1.0, math.ceil(top * 1000) / 1000)
        logger.warning(
            "duplicates: in this store the model puts 5%% of pairs of unrelated images at "
            "%.3f or closer, as close as edited copies (85%% are linked at %.3f): it cannot tell "
            "near-copies apart (random weights?); threshold %.3f keeps unrelated pairs out "
            "and will miss many copies", top, reached, threshold)
    gap = _gap(reached, hard) if separable and hard is not None and \
        len(hard) >= MIN_NEGATIVES else {}
    threshold = gap.pop("threshold", threshold)
    by_kind = {k: {"median": round(float(np.median(sims[ok & (kinds == k)])), 4),
                   "reached_by_90%": round(float(np.quantile(sims[ok & (kinds == k)], 0.1)), 4)}
               for k in CALIBRATION_KINDS if (ok & (kinds == k)).any()}
    return {"threshold": threshold, "calibrated": True, "separable": bool(separable),
            "sample": n, "edits": int(ok.sum()), "linked_by_phash": round(float(h.mean()), 4),
            "edits_reached_by_85%": round(float(np.quantile(s, 1 - REACHED_BY)), 4),
            "unrelated_p95": round(top, 4), **gap, "by_kind": by_kind}


def _gap(reached: float, hard: np.ndarray) -> dict:
    """The threshold in the middle of the gap between the hardest negatives' NEGATIVE_Q
    percentile and what the edits allow (`reached`), rounded up to 0.01; just above the
    negatives where there is no gap. With what it was placed between."""
    neg = float(np.quantile(hard, NEGATIVE_Q))
    if reached > neg:
        threshold = min(reached, math.ceil(round((neg + reached) / 2, 6) * 100) / 100)
    else:
        threshold = min(1.0, math.floor(neg * 100) / 100 + 0.01)
        logger.warning(
            "duplicates: 1%% of the images sampled have a neighbour that is not a copy at "
            "%.3f or closer, as close as the edited copies (85%% are linked at %.2f): the "
            "threshold %.2f keeps those out and will miss some copies", neg, reached,
            threshold)
    return {"threshold": threshold, "edits_allow": reached,
            "hard_negatives": {"images": len(hard), "median": round(float(np.median(hard)), 4),
                               "p99": round(neg, 4), "max": round(float(hard.max()), 4)},
            "margin": {"to_negatives_p99": round(threshold - neg, 4),
                       "to_edits": round(reached - threshold, 4)}}


def review_only_reason(calibration: dict | None) -> str | None:
    """Why groups measured with this calibration are for review only (the model cannot
    tell near-copies from unrelated images in the store), or None when they can be
    trusted (or the threshold was not measured)."""
    if not calibration or calibration.get("separable", True):
        return None
    return (f"the model cannot tell near-copies from unrelated images in this store: 5% of "
            f"pairs of unrelated images are at {calibration['unrelated_p95']:.3f} or closer, "
            f"where 85% of edited copies are linked at "
            f"{calibration['edits_reached_by_85%']:.3f} (random weights?). These groups are "
            "for review only and no remove-list.txt is written: use real weights "
            "(--weights imagenet or a weights file) or another model, or look at the groups "
            "and give --threshold yourself")


def calibration_json(result: dict) -> bytes:
    return (json.dumps(result, indent=1) + "\n").encode()
