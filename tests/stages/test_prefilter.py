import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

from workflow.errors import WorkflowError
from workflow.formats.index import load_trained
from workflow.formats.prefilter import load_prefilter
from workflow.stages.prefilter import PrefilterConfig, run
from workflow.stages.train import TrainConfig
from workflow.stages.train import run as train
from workflow.storage.store import Store

from conftest import ROOT, feature_store, kill_during, leftovers, structured_vectors


def _trained(tmp_path, **kw):
    store = feature_store(tmp_path, **kw)
    train(TrainConfig(store=str(store), pca_dim=8, progress=False))
    return store


def test_prefilter_finds_neighbours_in_the_pca_space(tmp_path):
    store = _trained(tmp_path)
    res = run(PrefilterConfig(store=str(store), progress=False))
    assert res.complete and res.n == 300 and res.dim == 8 and res.trees == 16
    ann = load_prefilter(Store(store))
    _, pca = load_trained(Store(store))
    x = pca.apply(structured_vectors(300, 32).astype(np.float16).astype(np.float32))
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    hits = 0
    for i in range(0, 300, 10):
        exact = set(np.argsort(-xn @ xn[i])[:10].tolist())
        got = ann.get_nns_by_vector(x[i].tolist(), 10, search_k=2000)
        assert got[0] == i
        hits += len(exact & set(got))
    assert hits / (30 * 10) > 0.9
    first = (store / "prefilter" / "annoy.ann").read_bytes()
    again = run(PrefilterConfig(store=str(store), progress=False))
    assert again.seconds < res.seconds
    assert (store / "prefilter" / "annoy.ann").read_bytes() == first


def test_prefilter_needs_the_trained_pca(tmp_path):
    store = feature_store(tmp_path)
    with pytest.raises(WorkflowError, match="03_train"):
        run(PrefilterConfig(store=str(store), progress=False))


def test_sigkill_during_prefilter_then_rerun_gives_the_same_file(tmp_path):
    store = _trained(tmp_path, n=3000, d=32, shard_size=500)
    ref = tmp_path / "ref"
    shutil.copytree(store, ref)

    def cmd(s):
        return [sys.executable, "-m", "workflow", "prefilter", "--store", str(s),
                "--scratch", str(tmp_path / f"scratch-{s.name}"), "--no-progress"]

    t0 = time.monotonic()
    assert subprocess.run(cmd(ref), cwd=ROOT, capture_output=True).returncode == 0
    took = time.monotonic() - t0
    kill_during(cmd(store), took, seed=5)
    assert (store / "prefilter" / "annoy.ann").read_bytes() == \
        (ref / "prefilter" / "annoy.ann").read_bytes()
    assert leftovers(store) == []


def test_a_build_that_does_not_fit_in_max_minutes_is_not_started(tmp_path, caplog):
    store = _trained(tmp_path)
    r = subprocess.run([sys.executable, "-m", "workflow", "prefilter", "--store", str(store),
                        "--max-minutes", "1e-6", "--no-progress"], cwd=ROOT,
                       capture_output=True, text=True)
    assert r.returncode == 3, r.stderr[-2000:]
    assert "do not fit in --max-minutes" in r.stderr and "not started" in r.stdout
    assert Store(store).marker("prefilter", "annoy") is None
    assert run(PrefilterConfig(store=str(store), progress=False)).complete
