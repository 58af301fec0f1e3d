"""The labelled near-duplicate set and its scoring (used by the quality benchmark)."""
import cv2
import numpy as np

from workflow.demo.near_copies import hash_quality, make_near_copy_set, pair_quality, same_picture
from workflow.inputs.edits import KINDS

from conftest import jpeg_bytes


def test_the_set_holds_every_original_and_one_edit_of_each_kind(tmp_path):
    src = []
    for i in range(3):
        p = tmp_path / f"src{i}.jpg"
        p.write_bytes(jpeg_bytes(96, 64, seed=i))
        src.append(("a" if i < 2 else "b", p))
    (tmp_path / "copy.jpg").write_bytes((tmp_path / "src0.jpg").read_bytes())
    src.append(("b", tmp_path / "copy.jpg"))  # the same picture as src0
    labels = make_near_copy_set(src, tmp_path / "set")
    assert len(labels) == 4 * (1 + len(KINDS))
    assert labels["a/0000-src0.jpg"] == (0, 0, None) and labels["b/0003-copy.jpg"] == (0, 3, None)
    assert labels["a/0001-src1-crop.jpg"] == (1, 1, "crop")
    assert all((tmp_path / "set" / k).exists() for k in labels)
    assert cv2.imread(str(tmp_path / "set" / "b/0002-src2-flip.jpg")) is not None
    assert same_picture(src) == [0, 1, 2, 0]


def test_pairs_are_scored_per_kind_against_the_pictures():
    labels = {"o0": (0, 0, None), "o0-crop": (0, 0, "crop"), "o0-jpeg": (0, 0, "jpeg"),
              "o1": (1, 1, None), "o1-crop": (1, 1, "crop"), "o1-jpeg": (1, 1, "jpeg")}
    q = pair_quality([["o0", "o0-jpeg", "o1-crop"]], labels)
    assert q["pairs"] == 3 and abs(q["precision"] - 1 / 3) < 1e-9
    assert q["by_kind"]["jpeg"]["recall"] == 0.5 and q["by_kind"]["crop"]["recall"] == 0.0
    h = {"o0": 0, "o0-jpeg": 1, "o0-crop": 7 << 61, "o1": 2**64 - 1, "o1-jpeg": 2**64 - 2,
         "o1-crop": 2**64 - 4}
    q = hash_quality(h, labels, 2)
    assert q["precision"] == 1.0 and q["by_kind"]["jpeg"]["recall"] == 1.0
    assert q["by_kind"]["crop"]["recall"] == 0.5  # o1-crop is 2 bits from o1; o0-crop 3
    assert np.isclose(hash_quality(h, labels, 64)["precision"], 6 / 15)


def _shapes(seed: int) -> np.ndarray:
    """A picture with corners and edges for keypoints: seeded rectangles and circles."""
    rng = np.random.default_rng(seed)
    img = np.full((240, 240, 3), 128, np.uint8)
    for _ in range(40):
        x, y = (int(v) for v in rng.integers(0, 240, 2))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        if rng.random() < 0.5:
            cv2.rectangle(img, (x, y), (x + int(rng.integers(8, 40)), y + 20), colour, -1)
        else:
            cv2.circle(img, (x, y), int(rng.integers(5, 25)), colour, -1)
    return img


def test_a_cropped_zoomed_mirrored_copy_is_the_same_picture(tmp_path):
    a, b = _shapes(1), _shapes(2)
    copy = cv2.resize(a[20:220, 10:210][:, ::-1], (300, 300), interpolation=cv2.INTER_CUBIC)
    src = []
    for name, img, cls in (("a", a, "x"), ("b", b, "x"), ("copy", copy, "x"),
                           ("elsewhere", a[30:230, 30:230], "y")):
        cv2.imwrite(str(tmp_path / f"{name}.jpg"), img, [cv2.IMWRITE_JPEG_QUALITY, 90])
        src.append((cls, tmp_path / f"{name}.jpg"))
    # a crop in another class is not compared by keypoints (a class's copies stay in it)
    assert same_picture(src) == [0, 1, 0, 3]
    assert same_picture(src, min_inliers=10**6) == [0, 1, 2, 3]
