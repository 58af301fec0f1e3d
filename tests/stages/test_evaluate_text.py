"""The evaluate stage on a store of an image-text model: queries in words measured and
tuned beside the image queries (tiny CLIP with random weights from a preset folder)."""
import json
import shutil
import subprocess

import numpy as np
import pytest

from workflow.errors import BadQuery
from workflow.index.knn import exact_search
from workflow.models.loading import make_embedder
from workflow.models.registry import ModelSpec, l2_normalize
from workflow.search.modes import MODES
from workflow.search.query import TextQuery
from workflow.search.searcher import Searcher
from workflow.stages.evaluate import EvaluateConfig, run

from clip_store import clip_store
from conftest import ROOT, evaluate_command, evaluate_units, kill_repeatedly, leftovers

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate-text")
    store = clip_store(root, n=24)
    result = run(EvaluateConfig(store=str(store), queries=12, latency_queries=5,
                                progress=False))
    return root, store, result


def _stored(store):
    from workflow.formats.features import read_feature_shard
    rows = {}
    for p in sorted((store / "features").glob("shard-*.h5")):
        ids, feats, _ = read_feature_shard(str(p))
        rows.update(zip(ids.tolist(), feats.astype(np.float32)))
    return np.stack([rows[i] for i in range(len(rows))])


def test_prompts_from_the_class_folders_are_measured_and_tuned_beside_the_images(evaluated):
    root, store, result = evaluated
    rep = json.loads((store / "evaluation" / "report.json").read_text())
    text = rep["text"]
    assert text["queries"] == 2 and "one per class folder" in text["query_source"]
    assert list(text["tuned"]) == list(MODES) == list(text["at_image_settings"])
    assert text["tuned"]["exact"]["recall@10"] == 1.0
    for mode, t in text["tuned"].items():
        assert 0 <= t["recall@10"] <= 1 and t["p50_ms"] > 0, mode
    # the prompts' class is their folder: precision@k by class for words too
    assert text["precision"]["classes"] == ["class0", "class1"]
    with np.load(store / "evaluation" / "groundtruth-text.npz") as f:
        assert f["query_keys"].tolist() == ["a photo of a class0", "a photo of a class1"]
        xq, D, I = f["xq"], f["D"], f["I"]
    # the ground truth: the text tower's embeddings against every stored feature
    emb = make_embedder(ModelSpec("clip-vit-b32", str(root / "tiny-clip")))
    want = l2_normalize(emb.embed_text(["a photo of a class0", "a photo of a class1"]))
    assert np.allclose(xq, want, atol=1e-5)
    xb = l2_normalize(_stored(store))
    D2, I2 = exact_search(want.astype(np.float32), [(np.arange(len(xb)), xb)], 10)
    assert np.array_equal(I[:, :10], I2) and np.allclose(D[:, :10], D2, atol=2e-3)
    # the defaults of each kind, and the report side by side
    defaults = json.loads((store / "evaluation" / "search_defaults.json").read_text())
    assert defaults["text"]["default_mode"] in MODES
    s = Searcher(store)
    assert s.text_default_mode == defaults["text"]["default_mode"]
    for mode in MODES:
        assert s.text_defaults[mode].for_mode(mode) == text["tuned"][mode]["params"]
    md = (store / "evaluation" / "report.md").read_text()
    assert "## Queries in words (2: " in md and "| words at it |" in md
    assert "## Sweeps (queries in words)" in md
    assert "Queries in words (2)" in result.summary()


def test_a_text_query_takes_its_kinds_defaults_and_a_mixed_batch_keeps_its_order(evaluated):
    _, store, _ = evaluated
    s = Searcher(store, cache_size=0)
    s.default_mode, s.text_default_mode = "ivfpq", "exact"
    used = []
    search_vectors = s.search_vectors

    def spy(xq, k=10, mode=None, params=None, exclude=None):
        used.append((len(xq), mode))
        return search_vectors(xq, k, mode, params, exclude)
    s.search_vectors = spy
    words = TextQuery("a photo of a class1")
    mixed = s.search([3, words, 5], k=4)
    assert sorted(used) == [(1, "exact"), (2, "ivfpq")]
    assert [r.query for r in mixed] == ["id:3", "text:a photo of a class1", "id:5"]
    alone = s.search([words], k=4)[0]
    assert (alone.ids, alone.scores) == (mixed[1].ids, mixed[1].scores)
    assert s.search([words], k=4, mode="ivfpq")[0].query == "text:a photo of a class1"
    assert used[-1] == (1, "ivfpq")  # a mode given is a mode used


def test_a_file_of_queries_gets_its_own_ground_truth_and_the_images_keep_theirs(evaluated,
                                                                                tmp_path):
    _, store, _ = evaluated
    image_gt = (store / "evaluation" / "groundtruth.npz").read_bytes()
    f = tmp_path / "queries.txt"
    f.write_text("a red bicycle\n\n  a photo of a class0  \nthe blue car\n")
    run(EvaluateConfig(store=str(store), queries=12, latency_queries=5, text_queries=str(f),
                       progress=False))
    rep = json.loads((store / "evaluation" / "report.json").read_text())
    assert (rep["text"]["queries"], rep["text"]["query_source"]) == (3, str(f))
    assert rep["text"]["precision"] is None  # no classes for free-form queries
    with np.load(store / "evaluation" / "groundtruth-text.npz") as g:
        assert g["query_keys"].tolist() == ["a red bicycle", "a photo of a class0",
                                            "the blue car"]
    assert (store / "evaluation" / "groundtruth.npz").read_bytes() == image_gt
    f.write_text("\n \n")
    with pytest.raises(Exception, match="--text-queries .*no queries in it"):
        run(EvaluateConfig(store=str(store), queries=12, text_queries=str(f),
                           progress=False))


def test_queries_in_words_on_a_store_without_a_text_tower_are_refused(tmp_path):
    from conftest import indexed_store
    store = indexed_store(tmp_path, n=200, d=16, shard_size=100)
    f = tmp_path / "q.txt"
    f.write_text("a red bicycle\n")
    with pytest.raises(BadQuery, match="no text tower.*clip-vit-b32"):
        run(EvaluateConfig(store=str(store), queries=10, text_queries=str(f),
                           progress=False))
    # without the option the stage measures the image queries alone
    res = run(EvaluateConfig(store=str(store), queries=10, latency_queries=3,
                             modes=("exact",), progress=False))
    assert res.complete and "text" not in res.report


def test_sigkill_during_the_text_evaluation_then_resume_gives_the_same_results(tmp_path):
    store = clip_store(tmp_path, n=24)
    ref = tmp_path / "ref"
    shutil.copytree(store, ref)

    def cmd(s):
        return evaluate_command(s, tmp_path / f"scratch-{s.name}", 12, 3,
                                ("exact", "ivfpq+rerank"))

    done = subprocess.run(cmd(ref), cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    # first runs are killed while the image queries are measured, later ones in the text part
    kills = kill_repeatedly(cmd(store), lambda: evaluate_units(store), seed=5, delay=1.0)
    assert kills >= 2
    for name in ("groundtruth.npz", "groundtruth-text.npz"):
        with np.load(store / "evaluation" / name) as a, np.load(ref / "evaluation" / name) as b:
            for k in ("query_keys", "xq", "D", "I"):
                assert np.array_equal(a[k], b[k]), (name, k)
    reps = [json.loads((s / "evaluation" / "report.json").read_text()) for s in (store, ref)]
    for kind in (lambda r: r, lambda r: r["text"]):
        assert [[p["recall@10"] for p in kind(r)["sweeps"]["ivfpq+rerank"]] for r in reps] \
            == [[p["recall@10"] for p in kind(reps[1])["sweeps"]["ivfpq+rerank"]]] * 2
    assert not [p for p in (store / "evaluation").iterdir() if "partial" in p.name]
    assert leftovers(store) == []
