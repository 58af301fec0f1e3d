"""Tests of the demo corpus generator (workflow/demo.py and scripts/make_demo_corpus.py)."""
from __future__ import annotations

import hashlib
import io
import json
import struct
import subprocess
import sys
import tarfile
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image, ImageOps

from workflow.demo import SOURCE_FILES, make_bad_inputs, make_demo_corpus

REPO = Path(__file__).resolve().parents[1]
N = 40
BAD_KINDS = {"empty", "corrupt", "not_image", "unsupported", "too_large", "ok"}


def _digests(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _decode(data: bytes) -> np.ndarray | None:
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)


def _png_pixel_bytes(png: bytes) -> int:
    """Check every chunk's CRC and return the length of the inflated IDAT stream."""
    pos, inflater, total = 8, zlib.decompressobj(), 0
    while pos < len(png):
        length, tag = struct.unpack(">I4s", png[pos:pos + 8])
        body = png[pos + 8:pos + 8 + length]
        assert struct.unpack(">I", png[pos + 8 + length:pos + 12 + length])[0] \
            == zlib.crc32(tag + body), tag
        if tag == b"IDAT":
            chunk = inflater.decompress(body, 1 << 20)
            while chunk:
                total += len(chunk)
                chunk = inflater.decompress(inflater.unconsumed_tail, 1 << 20)
        pos += 12 + length
    assert inflater.eof and tag == b"IEND"
    return total


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("corpus") / "demo"
    return out, make_demo_corpus(out, n=N, seed=1)


def test_same_seed_gives_identical_bytes(tmp_path: Path, corpus: tuple[Path, dict]) -> None:
    out, _ = corpus
    again = make_demo_corpus(tmp_path / "again", n=N, seed=1)
    first, second = _digests(out), _digests(tmp_path / "again")
    assert any(name.endswith(".tar") for name in first)
    assert any(name.endswith(".tar.gz") for name in first)
    assert first == second
    assert again == json.loads((out / "manifest.json").read_text("utf-8"))


def test_other_seed_differs(tmp_path: Path, corpus: tuple[Path, dict]) -> None:
    make_demo_corpus(tmp_path / "other", n=N, seed=2)
    assert _digests(tmp_path / "other") != _digests(corpus[0])


def test_counts_and_manifest_match_disk(corpus: tuple[Path, dict]) -> None:
    out, manifest = corpus
    assert json.loads((out / "manifest.json").read_text("utf-8")) == manifest
    subjects = manifest["subjects"]
    assert len(subjects) >= 5 and any(not s.isascii() for s in subjects)

    loose = sorted(p.relative_to(out).as_posix() for p in (out / "photos").rglob("*")
                   if p.is_file() and p.parent.name != "broken")
    archived = []
    assert sorted(p.name for p in (out / "archives").iterdir()) == manifest["archives"]
    for name in manifest["archives"]:
        with tarfile.open(out / "archives" / name) as tar:
            members = tar.getmembers()
            assert [m.name for m in members] == sorted(m.name for m in members)
            for member in members:
                assert (member.mtime, member.uid, member.gid, member.uname) == (0, 0, 0, "")
                data = tar.extractfile(member).read()
                assert _decode(data) is not None, member.name
                archived.append(f"archives/{name}/{member.name}")

    assert len(loose) == manifest["loose"] and len(archived) == manifest["archived"]
    assert manifest["n_images"] == len(loose) + len(archived)
    assert abs(manifest["n_images"] - N) <= len(subjects)
    assert sorted(manifest["images"]) == sorted(loose + archived)
    assert set(manifest["images"].values()) == set(subjects)
    assert all(rel.split("/")[-2] == subject for rel, subject in manifest["images"].items())
    assert any(rel.endswith(".tar.gz") for rel in manifest["archives"])
    assert any(not rel.isascii() for rel in loose)

    for rel in loose:
        assert _decode((out / rel).read_bytes()) is not None, rel
    (a, b), = manifest["duplicates"]
    assert a != b and (out / a).read_bytes() == (out / b).read_bytes()
    assert set(manifest["bad_inputs"]) == {p.relative_to(out).as_posix()
                                           for p in (out / "photos" / "broken").iterdir()}


def test_large_and_exif_images(corpus: tuple[Path, dict]) -> None:
    out, manifest = corpus
    assert len(manifest["large_images"]) >= 2
    loose_large = [rel for rel in manifest["large_images"] if rel.startswith("photos/")]
    for rel in loose_large:
        assert min(Image.open(out / rel).size) >= 1500
    assert manifest["exif_rotated"]
    for info in manifest["exif_rotated"].values():
        assert info["orientation"] in (6, 8)
        assert info["stored_size"] == info["display_size"][::-1] != info["display_size"]


def test_bad_inputs(tmp_path: Path) -> None:
    kinds = make_bad_inputs(tmp_path)
    assert set(kinds.values()) == BAD_KINDS
    assert sorted(kinds) == sorted(p.name for p in tmp_path.iterdir())
    expected = {"empty.jpg": "empty", "truncated.jpg": "corrupt",
                "garbage-after-header.png": "corrupt", "notes.jpg": "not_image",
                "page.png": "not_image", "photo.heic": "unsupported", "bomb.png": "too_large",
                "animated.gif": "ok", "gray16.png": "ok", "palette.png": "ok",
                "alpha.png": "ok", "cmyk.jpg": "ok", "exif-rotated.jpg": "ok"}
    assert kinds == expected
    read = {name: (tmp_path / name).read_bytes() for name in kinds}

    assert read["empty.jpg"] == b""
    truncated = read["truncated.jpg"]
    assert truncated.startswith(b"\xff\xd8") and b"\xff\xd9" not in truncated
    assert read["garbage-after-header.png"][12:16] == b"IHDR"
    assert _decode(read["notes.jpg"]) is None and b"<html>" in read["page.png"]
    assert read["photo.heic"][4:12] == b"ftypheic"

    bomb = read["bomb.png"]
    assert bomb.startswith(b"\x89PNG\r\n\x1a\n") and len(bomb) < 1_000_000
    assert struct.unpack(">IIBB", bomb[16:26]) == (20000, 20000, 1, 0)  # 1-bit grayscale
    assert _png_pixel_bytes(bomb) == 20000 * (1 + 20000 // 8)
    with pytest.raises(Image.DecompressionBombError):
        Image.open(io.BytesIO(bomb))

    for name, kind in kinds.items():
        if kind == "ok" and not name.endswith(".gif"):
            assert _decode(read[name]) is not None, name
    with Image.open(tmp_path / "animated.gif") as gif:
        assert gif.n_frames == 3
    assert _decode(read["gray16.png"]).dtype == np.uint16
    assert _decode(read["alpha.png"]).shape[2] == 4
    with Image.open(tmp_path / "palette.png") as img:
        assert img.mode == "P"
    with Image.open(tmp_path / "cmyk.jpg") as img:
        assert img.mode == "CMYK"
    with Image.open(tmp_path / "exif-rotated.jpg") as img:
        assert img.getexif()[0x0112] == 6
        stored, display = img.size, ImageOps.exif_transpose(img).size
    assert display == stored[::-1] != stored
    upright = cv2.imdecode(np.frombuffer(read["exif-rotated.jpg"], np.uint8), cv2.IMREAD_COLOR)
    assert upright.shape[1::-1] == display  # OpenCV applies the orientation by default


def test_script_writes_corpus_and_refuses_non_empty_out(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    cmd = [sys.executable, "scripts/make_demo_corpus.py", str(out), "--n", "30"]
    first = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    assert json.loads((out / "manifest.json").read_text("utf-8"))["n_images"] == 30
    again = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    assert again.returncode == 2 and "--force" in again.stderr
    forced = subprocess.run(cmd + ["--force"], cwd=REPO, capture_output=True, text=True)
    assert forced.returncode == 0, forced.stderr


def test_script_rejects_too_small_n(tmp_path: Path) -> None:
    cmd = [sys.executable, "scripts/make_demo_corpus.py", str(tmp_path / "x"),
           "--n", str(len(SOURCE_FILES))]
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 2 and "--n" in result.stderr
    assert not (tmp_path / "x").exists()
