import os
import shutil
import subprocess
import sys

import faiss
import numpy as np
import pytest

from workflow.errors import FingerprintMismatch, WorkflowError
from workflow.formats.index import load_index, load_rerank
from workflow.stages.add import AddConfig, run
from workflow.stages.train import TrainConfig
from workflow.stages.train import run as train
from workflow.storage.store import Store

from conftest import ROOT, feature_store, kill_repeatedly, leftovers, structured_vectors


def _trained(tmp_path, **kw):
    store = feature_store(tmp_path, **kw)
    train(TrainConfig(store=str(store), progress=False))
    return store


def _search(index, q, k=10, nprobe=8):
    faiss.extract_index_ivf(index).nprobe = nprobe
    return index.search(q, k)


@pytest.mark.parametrize("on_disk", ["off", "on"])
def test_parts_merge_into_the_index_built_in_one_go(tmp_path, on_disk):
    store = _trained(tmp_path)
    res = run(AddConfig(store=str(store), on_disk=on_disk, progress=False))
    assert res.complete and res.n_parts == 3 and res.ntotal == 300
    assert res.on_disk == (on_disk == "on")
    index = load_index(Store(store))
    x = structured_vectors(300, 32).astype(np.float16).astype(np.float32)
    direct = faiss.read_index(str(store / "trained" / "index.faiss"))
    direct.add_with_ids(x, np.arange(300))
    D1, I1 = _search(index, x[:20])
    D2, I2 = _search(direct, x[:20])
    assert np.array_equal(I1, I2) and np.allclose(D1, D2)
    rerank = load_rerank(Store(store))
    assert rerank.dtype == np.float16 and rerank.shape == (300, 32)
    assert np.array_equal(rerank, x.astype(np.float16))


def test_add_needs_a_trained_index_and_refuses_other_settings(tmp_path):
    store = feature_store(tmp_path)
    with pytest.raises(WorkflowError, match="03_train"):
        run(AddConfig(store=str(store), progress=False))
    train(TrainConfig(store=str(store), progress=False))
    run(AddConfig(store=str(store), progress=False))
    with pytest.raises(FingerprintMismatch, match="on_disk"):
        run(AddConfig(store=str(store), on_disk="on", progress=False))


def test_sigkill_during_add_then_resume_gives_the_same_index(tmp_path):
    store = _trained(tmp_path, n=2000, d=64, shard_size=100)
    ref = tmp_path / "ref"
    shutil.copytree(store, ref)

    def cmd(s):
        return [sys.executable, "-m", "workflow", "add", "--store", str(s), "--scratch",
                str(tmp_path / f"scratch-{s.name}"), "--no-progress"]

    assert subprocess.run(cmd(ref), cwd=ROOT, capture_output=True).returncode == 0
    done = store / "_done" / "add"
    kills = kill_repeatedly(cmd(store), lambda: len(list(done.glob("shard-*.json")))
                            if done.is_dir() else 0, seed=11, delay=0.3)
    assert kills >= 2
    for name in ("index.faiss", "rerank.npy"):
        assert (store / "index" / name).read_bytes() == (ref / "index" / name).read_bytes()
    assert leftovers(store) == []
    assert os.path.exists(store / "index" / "parts" / "shard-00019.faiss")


