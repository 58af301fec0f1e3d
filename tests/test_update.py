"""A collection that grows: `--update` and every later stage, end to end, in real
processes, uninterrupted and under SIGKILL; and the new images found by their files."""
import json

import faiss
import h5py
import numpy as np
import pytest

from campaign import check_clean, compare_stores, unchanged_by_update, update_campaign
from conftest import jpeg_bytes, write_corpus


def _grow(tmp_path, corpus):
    """Six new files in the first source, a new source of ten."""
    def grow():
        for i in range(30, 36):
            (corpus / f"class{i % 2}" / f"img{i:04d}.jpg").write_bytes(
                jpeg_bytes(40, 32, seed=5000 + i))
        write_corpus(tmp_path / "more", 10, seed=9, size=(40, 32))
        return [corpus, tmp_path / "more"]
    return grow


@pytest.mark.slow
def test_an_update_survives_kills_and_equals_an_uninterrupted_one(tmp_path):
    corpus = tmp_path / "corpus"
    write_corpus(corpus, 30, size=(40, 32))
    camp, before, ref, store = update_campaign(tmp_path, corpus, _grow(tmp_path, corpus),
                                               kills=10, seed=5)
    print("\n" + camp.summary())
    assert camp.kills >= 6, camp.summary()
    compare_stores(ref, store)
    check_clean(store)
    unchanged_by_update(before, store)
    # every image once in the index: the new ones continue the ids
    with h5py.File(store / "images" / "plan-000002.h5") as f:
        assert f.attrs["first_id"] == 30 and len(f["keys"]) == 16
        keys = list(f["keys"].asstr()[:])
    assert keys[:6] == sorted(f"class{i % 2}/img{i:04d}.jpg" for i in range(30, 36))
    assert all(k.startswith("more/") for k in keys[6:])  # a new source gets a prefix
    index = faiss.read_index(str(store / "index" / "index.faiss"))
    inv = faiss.extract_index_ivf(index).invlists
    ids = np.concatenate([faiss.rev_swig_ptr(inv.get_ids(i), inv.list_size(i)).copy()
                          for i in range(inv.nlist)])
    assert sorted(ids.tolist()) == list(range(46))
    report = json.loads((store / "evaluation" / "report.json").read_text())
    assert report["corpus"]["version"] == 2 and report["n"] == 46
    assert report["tuned"]["hierarchical"]["target_met"], report["tuned"]["hierarchical"]
    assert json.loads((store / "images" / "report.json").read_text())["images"] == 46
    assert (store / "prefilter" / "annoy-00006.ann").exists()  # a segment for the new shards
    _new_images_find_themselves(store, corpus, tmp_path / "more")


def _new_images_find_themselves(store, corpus, more):
    from workflow.search import Searcher
    s = Searcher(str(store), scratch=str(store) + "-scratch", cache_size=0)
    files = [corpus / f"class{i % 2}" / f"img{i:04d}.jpg" for i in range(30, 36)] + \
        sorted(more.rglob("*.jpg"))
    for mode in ("hierarchical", "annoy+rerank", "ivfpq+rerank", "exact"):
        for r in s.search([str(p) for p in files], k=10, mode=mode):
            key = r.query[len(str(corpus)) + 1:] if r.query.startswith(str(corpus)) else \
                "more/" + r.query[len(str(more)) + 1:]
            assert r.keys[0] == key or r.scores[0] > 0.999, (mode, r.query, r.keys[:3])
