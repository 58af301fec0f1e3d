import json
import subprocess
import sys

import cv2
import numpy as np
import pytest

from workflow.errors import ConfigError, WorkflowError
from workflow.report.gallery import write_results_page
from workflow.search.modes import MODES
from workflow.search.searcher import Searcher

from conftest import ROOT, brute, indexed_store


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return indexed_store(tmp_path_factory.mktemp("search"))


@pytest.mark.parametrize("mode", MODES)
def test_every_mode_finds_the_query_itself_and_good_neighbours(store, mode):
    s = Searcher(store)
    xb = np.asarray(s.xb, np.float32)
    ids = [0, 55, 123, 399, 598]
    _, Ir = brute(xb[ids], xb, 10)
    res = s.search(ids, k=10, mode=mode)
    assert [r.query for r in res] == [f"id:{i}" for i in ids]
    overlap = np.mean([len(set(r.ids) & set(Ir[j])) / 10 for j, r in enumerate(res)])
    if mode == "ivfpq":  # PQ scores alone: neighbours, approximately
        assert overlap > 0.3
    else:
        assert [r.ids[0] for r in res] == ids and overlap > 0.9
        assert res[0].scores[0] == pytest.approx(1.0, abs=2e-3)
    assert all(len(r.ids) == 10 and r.scores == sorted(r.scores, reverse=True) for r in res)
    assert res[0].keys[0] == "class0/img0000.jpg" or mode == "ivfpq"


def test_exclude_self_and_vector_queries(store):
    s = Searcher(store)
    r = s.search([7], k=5, mode="exact", exclude_self=True)[0]
    assert 7 not in r.ids and len(r.ids) == 5
    v = np.asarray(s.xb[7], np.float32) * 3  # not normalised: the searcher normalises
    one, two = s.search(np.stack([v, v]), k=5, mode="exact")
    assert one.ids[0] == 7 and one.ids == two.ids and one.query == "vector:0"
    assert s.search(v, k=5, mode="exact")[0].ids == one.ids


def test_queries_are_projected_for_the_prefilter_as_faiss_does(store):
    s = Searcher(store)
    xq = np.random.default_rng(0).standard_normal((5, s.d)).astype(np.float32)
    assert s._projection is not None  # the PCA, as numpy (matrix, bias)
    np.testing.assert_allclose(s.project(xq), s.pca.apply(xq), rtol=1e-5, atol=1e-5)


def test_a_repeated_query_is_served_by_the_cache_without_the_index(store, monkeypatch):
    s = Searcher(store, cache_size=8)
    first = s.search([3, 4], k=5)
    monkeypatch.setattr(s, "search_vectors", lambda *a, **k: pytest.fail("index touched"))
    again = s.search([4, 3], k=5)
    assert [r.cached for r in again] == [True, True]
    assert again[1].ids == first[0].ids and again[0].ids == first[1].ids
    assert s.cache.stats()["hits"] == 2
    with pytest.raises(pytest.fail.Exception):
        s.search([3], k=5, nprobe=3)  # other parameters: not the cached result


def test_bad_queries_get_clear_errors(store, tmp_path):
    s = Searcher(store)
    with pytest.raises(ConfigError, match="not in the corpus"):
        s.search([10_000])
    with pytest.raises(ConfigError, match="32 dimensions"):
        s.search(np.ones(5, np.float32))
    with pytest.raises(ConfigError, match="unknown search mode"):
        s.search([1], mode="fast")
    with pytest.raises(WorkflowError, match="cannot read query image .*nope.jpg"):
        s.search([str(tmp_path / "nope.jpg")])
    with pytest.raises(WorkflowError, match="there is no store at .*missing"):
        Searcher(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(WorkflowError,
                       match="has no (re-rank store|filled index); run scripts/04_add.py"):
        Searcher(tmp_path / "empty").search([1])


def test_result_page_html_and_png_with_stored_thumbnails(store, tmp_path):
    s = Searcher(store)
    res = s.search([5, 6], k=4, exclude_self=True)
    thumbs = s.thumbnails([i for r in res for i in r.ids] + [5, 6])
    assert len(thumbs) == len({i for r in res for i in r.ids} | {5, 6})
    img = cv2.imdecode(np.frombuffer(thumbs[5], np.uint8), cv2.IMREAD_COLOR)
    assert img.shape == (16, 16, 3)  # the stored (preprocessed) image
    page = write_results_page(res, thumbs, tmp_path / "r.html").read_text()
    assert page.count("data:image/jpeg;base64,") == 2 + 8 and res[0].keys[0] in page
    sheet = cv2.imread(str(write_results_page(res, thumbs, tmp_path / "r.png")))
    assert sheet.shape[0] == 2 * 194 and sheet.shape[1] == 5 * 160
    with pytest.raises(ConfigError, match=".html or .png"):
        write_results_page(res, thumbs, tmp_path / "r.pdf")


def test_search_command_prints_json_lines(store, tmp_path):
    np.save(tmp_path / "q.npy", np.asarray(Searcher(store).xb[9], np.float32))
    r = subprocess.run([sys.executable, "scripts/06_search.py", "--store", str(store),
                        "--id", "9", "12", "--vectors", str(tmp_path / "q.npy"), "--k", "3",
                        "--mode", "ivfpq+rerank", "--rerank", "50", "--json", "--out",
                        str(tmp_path / "page.html")], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    lines = [json.loads(ln) for ln in r.stdout.splitlines()]
    assert [ln["query"] for ln in lines] == ["id:9", "id:12", "vector:2"]
    assert lines[0]["results"][0] == {"id": 9, "key": "class0/img0018.jpg",
                                      "score": pytest.approx(1.0, abs=2e-3)}
    assert lines[2]["results"][0]["id"] == 9 and len(lines[1]["results"]) == 3
    assert (tmp_path / "page.html").exists() and "result page" in r.stderr
    bad = subprocess.run([sys.executable, "scripts/06_search.py", "--store", str(store)],
                         cwd=ROOT, capture_output=True, text=True)
    assert bad.returncode == 2 and "nothing to search for" in bad.stderr


@pytest.mark.parametrize("mode", MODES)
def test_collapse_widens_until_k_groups_are_found(store, mode):
    s = Searcher(store)
    xb = np.asarray(s.xb, np.float32)
    near = np.argsort(-(xb @ xb[5]))
    rep = np.arange(len(xb))
    rep[near[:300]] = near[0]  # the query's 300 nearest: one group (a burst of shots)
    s.__dict__["duplicate_groups"] = rep
    r, = s.search([5], k=5, mode=mode, collapse_duplicates=True)
    assert len(r.ids) == 5, r.ids  # searched 20 deep, all 20 in the group: widened
    assert len({rep[i] for i in r.ids}) == 5
    if mode == "exact":
        assert r.ids == [5, *near[300:304].tolist()]
