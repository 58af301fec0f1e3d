import json
import subprocess
import sys

import numpy as np
import pytest

from campaign import check_clean, compare_stores, crash_campaign
from conftest import ROOT, write_corpus


def test_the_main_job_runs_every_available_stage_on_the_demo_corpus(tmp_path):
    """The README's main command, on a small demo corpus and a small model input."""
    store = tmp_path / "store"
    r = subprocess.run([sys.executable, "scripts/run_all.py", "--demo", "--demo-dir",
                        str(tmp_path / "demo"), "--demo-n", "60", "--store", str(store),
                        "--scratch", str(tmp_path / "s"), "--weights", "none",
                        "--input-size", "64", "--no-progress"],
                       cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    for line in ("preprocess  complete", "extract     complete", "train       complete",
                 "add         complete", "prefilter   complete", "evaluate    complete",
                 "| hierarchical |", "| exact | - |"):
        assert line in r.stdout, r.stdout
    tuned = json.loads((store / "evaluation" / "report.json").read_text())["tuned"]
    assert tuned["exact"]["tie_recall@10"] == 1.0
    assert tuned["hierarchical"]["recall@10"] >= 0.95
    page = store / "evaluation" / "results.html"
    assert f"result page: {page}" in r.stdout
    assert page.read_text().count("data:image/jpeg;base64,") == 6 * 9
    report = json.loads((store / "images" / "report.json").read_text())
    assert {f["status"] for f in report["failures"]} == {
        "empty", "corrupt", "not_image", "unsupported", "too_large"}
    rerank = np.load(store / "index" / "rerank.npy", mmap_mode="r").astype(np.float32)
    failed = [f["id"] for f in report["failures"]]
    norms = np.linalg.norm(rerank, axis=1)
    assert (norms[failed] == 0).all()
    assert np.allclose(np.delete(norms, failed), 1, atol=3e-3)
    again = subprocess.run([sys.executable, "scripts/run_all.py", "--demo", "--demo-dir",
                            str(tmp_path / "demo"), "--store", str(store), "--scratch",
                            str(tmp_path / "s"), "--weights", "none", "--input-size", "64",
                            "--no-progress"], cwd=ROOT, capture_output=True, text=True)
    assert again.returncode == 0 and "0 to do" in again.stderr, again.stderr[-2000:]
    # an image file as the query: preprocessed and embedded as the corpus was, so a
    # corpus image finds itself first
    manifest = json.loads((tmp_path / "demo" / "manifest.json").read_text())
    rel = next(k for k in sorted(manifest["images"]) if k.startswith("photos/")
               and k.endswith(".jpg") and "copy" not in k)
    q = subprocess.run([sys.executable, "scripts/06_search.py", "--store", str(store),
                        "--scratch", str(tmp_path / "s"), "--query", str(tmp_path / "demo" / rel),
                        "--k", "3", "--json"], cwd=ROOT, capture_output=True, text=True)
    assert q.returncode == 0, q.stderr[-2000:]
    hit = json.loads(q.stdout)
    assert hit["query"] == str(tmp_path / "demo" / rel)
    assert hit["results"][0]["key"] == rel.split("/", 1)[1] or \
        hit["results"][0]["score"] > 0.999, hit


def test_a_full_disk_is_a_clear_error_not_a_traceback(tmp_path, monkeypatch, caplog):
    import errno

    from workflow import cli
    from workflow.stages import preprocess

    def full(cfg):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "s" / "x.h5"))
    monkeypatch.setattr(preprocess, "run", full)
    code = cli.run_command("preprocess", ["--source", str(tmp_path), "--store",
                                          str(tmp_path / "store"), "--no-progress"])
    assert code == 2 and "no space left on the disk" in caplog.text
    assert "--scratch" in caplog.text


# ------------------------------------------------------------------ under SIGKILL
# A short crash campaign over the whole workflow on every run (the long one, 30 kills or
# more, is `python bench/crash_campaign.py`).

@pytest.mark.slow
def test_the_workflow_survives_kills_at_random_moments(tmp_path):
    corpus = tmp_path / "corpus"
    write_corpus(corpus, 30, size=(40, 32))
    camp, ref, store = crash_campaign(tmp_path, corpus, kills=12, seed=11)
    print("\n" + camp.summary())
    assert camp.kills >= 8, camp.summary()  # a stage may finish before its kill comes
    compare_stores(ref, store)
    check_clean(store)
    check_clean(ref)
