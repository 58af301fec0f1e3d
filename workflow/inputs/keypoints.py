"""Whether two images show the same picture, by a test that neither the model nor the
pHash decides: ORB keypoints that one similarity transform (rotation, scale, shift;
RANSAC) maps from one image onto the other or onto its mirror image. Crops, zooms,
turns, captions and mirroring keep most of a picture's keypoints in place; two photos of
one subject share few (on flowers12, different photos of one species stay under 30
matches and copies start at 43). The duplicates stage's calibration uses it to tell the
store's nearest non-copies (its hardest negatives) from its copies."""
from __future__ import annotations

import cv2
import numpy as np

SIDE = 256  # keypoints are found on images scaled to at most this many px


def keypoints(grey: np.ndarray | None) -> tuple[tuple, tuple] | None:
    """ORB keypoints of a greyscale image (at most SIDE px) and of its mirror image."""
    if grey is None:
        return None
    return _orb(grey), _orb(np.ascontiguousarray(grey[:, ::-1]))


def jpeg_keypoints(data: bytes) -> tuple[tuple, tuple] | None:
    """`keypoints` of an encoded image; None where it cannot be decoded."""
    return keypoints(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE))


def same_picture_matches(a: tuple[tuple, tuple], b: tuple[tuple, tuple]) -> int:
    """Keypoint matches of b onto a, or onto a's mirror image, that one similarity
    transform explains (the larger of the two)."""
    return max(matches(a[0], b[0]), matches(a[1], b[0]))


def _orb(grey: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    scale = SIDE / max(grey.shape)
    if scale < 1:
        grey = cv2.resize(grey, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    points, desc = cv2.ORB_create(nfeatures=500).detectAndCompute(grey, None)
    return np.float32([p.pt for p in points]).reshape(-1, 2), desc


def matches(a: tuple, b: tuple) -> int:
    """Keypoint matches of a and b (Lowe's ratio test) that one similarity transform
    explains (RANSAC, 3 px)."""
    (pa, da), (pb, db) = a, b
    if da is None or db is None or len(da) < 8 or len(db) < 8:
        return 0
    pairs = cv2.BFMatcher(cv2.NORM_HAMMING).knnMatch(da, db, k=2)
    good = [m[0] for m in pairs if len(m) == 2 and m[0].distance < 0.8 * m[1].distance]
    if len(good) < 6:
        return 0
    _, inliers = cv2.estimateAffinePartial2D(pa[[m.queryIdx for m in good]],
                                             pb[[m.trainIdx for m in good]],
                                             method=cv2.RANSAC, ransacReprojThreshold=3.0)
    return 0 if inliers is None else int(inliers.sum())
