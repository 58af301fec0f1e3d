"""Search by words through the service: a real server process over a store extracted with
a tiny CLIP (random weights, a local preset folder). Words answer as `06_search.py --text
--json` prints, the bounds of a text query are 422s with the reason, and `/status` says
that the store takes words (a store without a text tower: tests/service/test_api.py)."""
import json
import subprocess
import sys

import numpy as np
import pytest

from clip_store import clip_store
from conftest import ROOT
from served import Server

pytestmark = pytest.mark.timeout(300)
TEXTS = ["a red bicycle", "a dog"]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("clip-served")
    return clip_store(root), root / "scratch"


@pytest.fixture(scope="module")
def srv(built):
    with Server(*built) as s:
        yield s


def test_words_answer_as_the_command_line_does(srv, built):
    store, scratch = built
    assert json.loads(srv.get("/status")[1])["text_queries"] is True
    status, got = srv.post_json("/search", {"texts": TEXTS, "k": 5})
    assert status == 200, got
    cli = subprocess.run([sys.executable, "scripts/06_search.py", "--store", str(store),
                          "--scratch", str(scratch), "--text", TEXTS[0], "--text", TEXTS[1],
                          "--k", "5", "--json"], cwd=ROOT, capture_output=True, text=True,
                         timeout=240)
    assert cli.returncode == 0, cli.stderr[-2000:]
    want = [json.loads(line) for line in cli.stdout.splitlines()]
    assert [r["query"] for r in got["results"]] == [f"text:{t}" for t in TEXTS]
    # the same ids and keys; the scores computed by another process's text tower agree
    # to float32 rounding
    strip = [[{**h, "score": None} for h in r["results"]] for r in got["results"]]
    assert strip == [[{**h, "score": None} for h in r["results"]] for r in want]
    np.testing.assert_allclose([h["score"] for r in got["results"] for h in r["results"]],
                               [h["score"] for r in want for h in r["results"]], atol=1e-5)
    # options as query parameters; the second time from the cache, the same answer
    status, again = srv.post_json("/search?k=5", {"texts": TEXTS})
    assert status == 200 and again["results"] == got["results"]
    status, one = srv.post_json("/search", {"texts": ["a " * 500], "mode": "exact", "k": 3})
    assert status == 200 and len(one["results"][0]["results"]) == 3  # 1,000 characters


@pytest.mark.parametrize("body,words", [
    ({"texts": [""]}, '"texts"[0] is empty'),
    ({"texts": ["a dog", " \t\n"]}, '"texts"[1] is empty'),
    ({"texts": ["x" * 1001]}, "has 1001 characters: at most 1000"),
    ({"texts": ["a dog"] * 257}, "at most 256 queries per request"),
    ({"texts": [1]}, '"texts" must be a non-empty list of strings'),
    ({"texts": ["a dog", None]}, '"texts" must be a non-empty list of strings'),
    ({"texts": "a dog"}, '"texts" must be a non-empty list of strings'),
    ({"texts": []}, '"texts" must be a non-empty list of strings'),
    ({"texts": ["a dog"], "ids": [1]}, 'exactly one of "ids", "texts", "vectors"'),
    ({"texts": ["a dog"], "k": "5"}, "k must be a JSON integer"),
])
def test_a_bad_text_query_is_a_422_with_the_reason(srv, body, words):
    status, got = srv.post_json("/search", body)
    assert status == 422 and words in got["detail"], got


def test_a_lone_surrogate_is_not_text(srv):
    status, _, out = srv.request("POST", "/search", b'{"texts": ["a \\ud800 dog"]}',
                                 {"Content-Type": "application/json"})
    assert status == 422 and "lone surrogate" in json.loads(out)["detail"], out
