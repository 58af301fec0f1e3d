import hashlib
import os
import subprocess
import sys
from pathlib import Path

import fsspec
import numpy as np
import pytest

from workflow.demo import make_bad_inputs
from workflow.errors import ConfigError, FingerprintMismatch
from workflow.formats.images import read_image_shard, skip_ids
from workflow.stages.preprocess import PreprocessConfig, run
from workflow.storage.store import Store

from conftest import ROOT, jpeg_bytes, kill_repeatedly, leftovers, write_corpus
from hostile import HostileImageWorker


def _cfg(store, sources, tmp_path, **kw):
    kw.setdefault("workers", 2)
    kw.setdefault("shard_size", 7)
    return PreprocessConfig(store=str(store), sources=tuple(str(s) for s in sources),
                            scratch=str(tmp_path / "scratch"), progress=False, **kw)


def _image_files(store_url: str) -> dict[str, bytes]:
    fs, root = fsspec.core.url_to_fs(store_url)
    return {p.rsplit("/", 1)[-1]: fs.cat_file(p) for p in fs.find(f"{root}/images")}


def _digest(files: dict[str, bytes]) -> dict[str, str]:
    return {k: hashlib.sha256(v).hexdigest() for k, v in files.items()}


def test_shards_hold_every_item_in_the_public_format(tmp_path):
    write_corpus(tmp_path / "src", 20, size=(300, 200))
    res = run(_cfg(tmp_path / "store", [tmp_path / "src"], tmp_path, image_size=64))
    assert res.complete and res.n_shards == 3 and res.ok == 20 and res.failed == {}
    ids, keys = [], []
    for i in range(3):
        s = read_image_shard(str(tmp_path / "store" / "images" / f"shard-{i:05d}.h5"))
        ids += s["ids"].tolist()
        keys += s["keys"]
        assert s["ids"].dtype == np.int64 and s["status"].dtype == np.uint8
        assert s["orig_size"].dtype == np.int32 and s["orig_size"].shape == (len(s["ids"]), 2)
        assert (s["orig_size"] == [300, 200]).all() and set(s["reason"]) == {""}
        assert s["attrs"]["image_size"] == 64 and len(s["attrs"]["fingerprint"]) == 16
        assert all(j[:2] == b"\xff\xd8" for j in s["jpeg"])
    assert ids == list(range(20))
    assert keys == sorted(keys) and keys[0] == "class0/img0000.jpg"


def test_local_and_memory_stores_and_both_executors_give_identical_files(tmp_path):
    write_corpus(tmp_path / "src", 16)
    runs = {}
    for name, store, executor in [("local", tmp_path / "a", "process"),
                                  ("memory", f"memory://pp-{os.getpid()}", "process"),
                                  ("inline", tmp_path / "b", "local")]:
        run(_cfg(store, [tmp_path / "src"], tmp_path / name, executor=executor))
        runs[name] = _digest(_image_files(str(store)))
    fsspec.filesystem("memory").rm(f"/pp-{os.getpid()}", recursive=True)
    assert runs["local"] == runs["memory"] == runs["inline"]
    assert set(runs["local"]) == {"plan.h5", "report.json", "shard-00000.h5", "shard-00001.h5",
                                  "shard-00002.h5"}


def test_bad_inputs_and_misbehaving_workers_never_stop_the_stage(tmp_path):
    src = tmp_path / "src"
    write_corpus(src, 6)
    expected = make_bad_inputs(src / "bad")
    (src / "bad" / "hang.jpg").write_bytes(b"HANG" + jpeg_bytes(8, 8))
    (src / "bad" / "crash.jpg").write_bytes(b"CRASH" + jpeg_bytes(8, 8))
    (src / "class0" / "dup.jpg").write_bytes((src / "class0" / "img0000.jpg").read_bytes())
    listing = tmp_path / "list.txt"
    listing.write_text(f"{src}/class1/img0001.jpg\n{src}/gone.jpg\n")
    cfg = _cfg(tmp_path / "store", [src, listing], tmp_path, image_timeout=3,
               drop_duplicates=True)
    res = run(cfg, image_fn=HostileImageWorker(cfg.image_options()))
    assert res.complete
    report = Store(cfg.store).read_json("images/report.json")
    got = {f["key"]: f["status"] for f in report["failures"]}
    want = {f"src/bad/{k}": v for k, v in expected.items() if v != "ok"}
    want.update({"src/bad/hang.jpg": "timeout", "src/bad/crash.jpg": "crashed",
                 "list.txt/" + str(src / "gone.jpg"): "unreadable"})
    assert got == want
    assert res.ok == 6 + 1 + 1 + sum(v == "ok" for v in expected.values())
    dups = report["duplicates"]
    assert dups["count"] == 2  # dup.jpg and the listed copy of img0001.jpg
    assert len(skip_ids(Store(cfg.store))) == 2


def test_resume_refuses_other_settings_and_reuses_frozen_sources(tmp_path):
    write_corpus(tmp_path / "src", 5)
    run(_cfg(tmp_path / "store", [tmp_path / "src"], tmp_path))
    with pytest.raises(FingerprintMismatch, match="image_size: frozen 256, now 128"):
        run(_cfg(tmp_path / "store", [tmp_path / "src"], tmp_path, image_size=128))
    res = run(_cfg(tmp_path / "store", [], tmp_path))  # sources from run.json
    assert res.complete and res.ok == 5
    with pytest.raises(ConfigError, match="--source"):
        run(_cfg(tmp_path / "fresh", [], tmp_path))


def test_flowers12_from_the_shared_assets(tmp_path, shared_assets):
    res = run(_cfg(tmp_path / "store", [shared_assets / "images" / "flowers12"], tmp_path,
                   shard_size=500))
    assert res.complete and res.ok == 960 and res.n_shards == 2


def _cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "workflow", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, **kw)


def test_cli_exit_codes_status_and_reset(tmp_path):
    write_corpus(tmp_path / "src", 12)
    store = tmp_path / "store"
    common = ["--store", store, "--scratch", tmp_path / "s", "--shard-size", 4, "--workers", 1,
              "--no-progress"]
    r = _cli("preprocess", "--source", tmp_path / "nowhere", *common)
    assert r.returncode == 2 and "does not exist" in r.stderr
    r = _cli("status", "--store", tmp_path / "no-store")
    assert r.returncode == 2 and "no store at" in r.stderr and not (tmp_path / "no-store").exists()
    r = _cli("preprocess", "--source", tmp_path / "src", *common, "--max-minutes", "1e-6")
    assert r.returncode == 3, r.stderr
    assert "stopped early" in r.stdout
    r = _cli("status", "--store", store)
    assert r.returncode == 0 and "preprocess  in progress: 0/3 shards" in r.stdout
    r = _cli("preprocess", *common)
    assert r.returncode == 0 and "ok 12" in r.stdout, r.stderr
    assert "preprocess  complete: 3/3 shards" in _cli("status", "--store", store).stdout
    assert _cli("reset", "preprocess", "--store", store, "--yes").returncode == 0
    assert "preprocess  not started" in _cli("status", "--store", store).stdout
    for script in sorted((ROOT / "scripts").glob("*.py")):
        r = subprocess.run([sys.executable, script, "--help"], capture_output=True, text=True)
        assert r.returncode == 0 and "usage" in r.stdout, script


def _shards_done(store: Path) -> int:
    d = store / "_done" / "preprocess"
    return len(list(d.glob("shard-*.json"))) if d.is_dir() else 0


@pytest.mark.slow
def test_sigkill_at_random_moments_then_resume_gives_identical_files(tmp_path):
    """A real process killed with SIGKILL again and again, then resumed to the end.

    Each kill comes at a seeded random moment: after a random number of further shards
    has been committed, plus a random delay, so kills land while listing, decoding,
    writing, uploading and marking.
    """
    write_corpus(tmp_path / "src", 200, size=(900, 700))
    (tmp_path / "src" / "broken.jpg").write_bytes(b"not a jpeg")

    def cmd(store):
        return [sys.executable, "-m", "workflow", "preprocess", "--source", str(tmp_path / "src"),
                "--store", str(store), "--scratch", str(tmp_path / f"scratch-{store.name}"),
                "--shard-size", "10", "--workers", "2", "--no-progress"]

    ref = tmp_path / "reference"
    assert subprocess.run(cmd(ref), cwd=ROOT, capture_output=True).returncode == 0
    victim = tmp_path / "victim"
    kills = kill_repeatedly(cmd(victim), lambda: _shards_done(victim), seed=2024)
    assert kills >= 3
    assert _digest(_image_files(str(victim))) == _digest(_image_files(str(ref)))
    assert leftovers(Path(victim)) == []
    assert Store(victim).read_json("_leases/preprocess.json") is None


def test_workers_dying_on_everything_stop_the_stage_and_save_nothing(tmp_path):
    from workflow.execution.pool import PoolBroken

    from hostile import BrokenEnvironmentWorker
    write_corpus(tmp_path / "src", 30)
    cfg = _cfg(tmp_path / "store", [tmp_path / "src"], tmp_path, shard_size=30)
    with pytest.raises(PoolBroken, match="__main__"):
        run(cfg, image_fn=BrokenEnvironmentWorker(cfg.image_options()))
    assert not (tmp_path / "store" / "images" / "shard-00000.h5").exists()
    assert run(cfg).ok == 30  # fixed environment: the same command resumes


def test_hostile_files_and_names_never_stop_the_stage(tmp_path):
    """The hostile zoo plus file system oddities: a name with a newline, a name that is
    not UTF-8, a folder named like an image, a symlink loop, a dangling symlink, a file
    without read permission."""
    import json

    from hostile import make_hostile_inputs
    src = tmp_path / "src"
    kinds = make_hostile_inputs(src / "zoo")
    (src / "odd").mkdir()
    (src / "odd" / "new\nline.jpg").write_bytes(jpeg_bytes(64, 48, seed=1))
    with open(os.path.join(os.fsencode(src / "odd"), b"latin-\xe9t\xe9.jpg"), "wb") as f:
        f.write(jpeg_bytes(64, 48, seed=2))
    (src / "odd" / "folder.jpg").mkdir()
    (src / "odd" / "folder.jpg" / "inside.jpg").write_bytes(jpeg_bytes(64, 48, seed=3))
    os.symlink("..", src / "odd" / "loop")
    os.symlink("missing.jpg", src / "odd" / "dangling.jpg")
    (src / "odd" / "locked.jpg").write_bytes(jpeg_bytes(64, 48, seed=4))
    os.chmod(src / "odd" / "locked.jpg", 0)
    store = tmp_path / "store"
    res = run(PreprocessConfig(store=str(store), sources=(str(src),), workers=2,
                               image_timeout=20, progress=False))
    assert res.complete
    report = json.loads((store / "images" / "report.json").read_text())
    got = {f["key"]: f["status"] for f in report["failures"]}
    assert all(f["reason"] for f in report["failures"])
    for name, kind in kinds.items():
        assert got.get(f"zoo/{name}", "ok") == kind, name
    assert got["odd/dangling.jpg"] == "unreadable"
    locked = "unreadable" if os.geteuid() != 0 else "ok"  # root reads it anyway
    assert got.get("odd/locked.jpg", "ok") == locked
    keys = read_image_shard(str(store / "images" / "shard-00000.h5"), with_jpeg=False)["keys"]
    for key in ("odd/new\nline.jpg", "odd/latin-\ufffdt\ufffd.jpg", "odd/folder.jpg/inside.jpg"):
        assert key in keys and key not in got, key


@pytest.mark.slow
def test_fuzzed_images_never_crash_or_hang_the_stage(tmp_path):
    """300 seeded mutations of real JPEG and PNG files (flipped bits, cut or inserted
    bytes, damaged headers): every one ends with a status, and a reason when it failed."""
    import json

    import cv2
    rng = np.random.default_rng(42)
    seeds = [jpeg_bytes(96, 72, seed=s) for s in range(5)]
    seeds.append(cv2.imencode(".png", cv2.imdecode(np.frombuffer(seeds[0], np.uint8), 1))[1]
                 .tobytes())
    src = tmp_path / "fuzz"
    src.mkdir()
    for i in range(300):
        data = bytearray(seeds[i % len(seeds)])
        for _ in range(int(rng.integers(1, 6))):
            pos = int(rng.integers(0, len(data)))
            op = rng.integers(0, 4)
            if op == 0:
                data[pos] ^= 1 << int(rng.integers(0, 8))
            elif op == 1:
                del data[pos:pos + int(rng.integers(1, 64))]
            elif op == 2:
                data[pos:pos] = rng.bytes(int(rng.integers(1, 64)))
            else:
                data[min(pos, 40):min(pos, 40) + 4] = b"\xff\xff\xff\xff"  # header fields
        (src / f"f{i:03d}{'.png' if i % len(seeds) == 5 else '.jpg'}").write_bytes(bytes(data))
    store = tmp_path / "store"
    res = run(PreprocessConfig(store=str(store), sources=(str(src),), workers=2,
                               shard_size=100, image_timeout=10, progress=False))
    assert res.complete and res.n_images == 300
    report = json.loads((store / "images" / "report.json").read_text())
    assert res.ok + sum(res.failed.values()) == 300 and all(f["reason"] for f in
                                                            report["failures"])
    print(f"\nfuzz: {res.ok} ok, failed {res.failed}")
    assert res.ok > 0 and sum(res.failed.values()) > 0, res.failed


def test_a_source_gone_since_the_plan_stops_the_stage_and_loses_nothing(tmp_path):
    """An unmounted drive on resume: a clear error, not every image marked unreadable."""
    from workflow.errors import SourceError
    src = tmp_path / "src"
    write_corpus(src, 12, size=(32, 24))
    store = tmp_path / "store"
    cfg = PreprocessConfig(store=str(store), sources=(str(src),), shard_size=4, workers=1,
                           progress=False)
    run(PreprocessConfig(**{**cfg.__dict__, "max_minutes": 1e-6}))  # plan only
    src.rename(tmp_path / "elsewhere")
    resume = PreprocessConfig(store=str(store), shard_size=4, workers=1, progress=False)
    with pytest.raises(SourceError, match=f"the source {src} is gone .* drive mounted"):
        run(resume)
    assert Store(store).markers("preprocess").keys() == {"plan"}
    (tmp_path / "elsewhere").rename(src)
    res = run(resume)
    assert res.complete and res.ok == 12
