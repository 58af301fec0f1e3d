"""The search page's box for words, in a real browser (headless Chromium) against the real
service over a store extracted with a tiny CLIP: shown because `/status` says the store
takes words, a query in the URL (bookmarks), typed, back and forward, a card's click. The
browser, the server and the page helpers are those of test_page.py; only the store
differs (a store without a text tower hides the box: test_page.py)."""
from __future__ import annotations

import json
import urllib.request

import pytest
from test_page import _browser_binaries, _cards, _query_of, _severe, _text, _wait, browser, server

from clip_store import clip_store

__all__ = ["browser", "server"]  # the fixtures, used by name
pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """(corpus, store, scratch) as test_page.py's `server` fixture takes them."""
    _browser_binaries()
    root = tmp_path_factory.mktemp("page-words")
    return root / "src", clip_store(root), root / "scratch"


def _api(server: str, text: str, k: int) -> list[int]:
    req = urllib.request.Request(f"{server}/search", json.dumps(
        {"texts": [text], "k": k}).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return [h["id"] for h in json.load(r)["results"][0]["results"]]


def _ids(driver) -> list[int]:
    return [int(c["id"]) for c in _cards(driver)]


def test_words_from_the_url_the_box_history_and_a_click(store, server, browser):
    from selenium.webdriver.common.by import By
    red, blue = _api(server, "a red bicycle", 10), _api(server, "blue car", 10)
    assert red != blue
    browser.get(f"{server}/?text=a+red+bicycle&k=10")  # a bookmark
    _wait(browser, lambda d: _ids(d) == red, "the results of the words in the URL", 60)
    box = browser.find_element(By.ID, "query-text")
    assert box.is_displayed() and box.get_attribute("value") == "a red bicycle"
    assert _text(browser, "#query-label") == "Words: a red bicycle"
    assert not browser.find_element(By.ID, "query-img").is_displayed()
    box.clear()
    box.send_keys("  blue car ")
    browser.find_element(By.ID, "search-text").click()
    _wait(browser, lambda d: _query_of(d.current_url).get("text") == "blue car"
          and _ids(d) == blue, "the typed words' results")
    assert set(_query_of(browser.current_url)) == {"text", "k", "mode"}
    browser.back()
    _wait(browser, lambda d: _query_of(d.current_url).get("text") == "a red bicycle"
          and _ids(d) == red, "the first words again")
    assert browser.find_element(By.ID, "query-text").get_attribute("value") == "a red bicycle"
    browser.forward()
    _wait(browser, lambda d: _ids(d) == blue, "the typed words again")
    clicked = str(blue[1])
    browser.find_elements(By.CSS_SELECTOR, "#results figure.result")[1].click()
    _wait(browser, lambda d: _query_of(d.current_url).get("id") == clicked and _cards(d)
          and clicked not in {c["id"] for c in _cards(d)}, "the clicked card's query")
    assert "text" not in _query_of(browser.current_url)
    assert browser.find_element(By.ID, "query-img").is_displayed()
    box = browser.find_element(By.ID, "query-text")
    box.clear()
    box.send_keys("   ")
    browser.find_element(By.ID, "search-text").click()
    _wait(browser, lambda d: "Type some words" in _text(d, "#status"), "the empty-box message")
    assert not (errors := _severe(browser)), errors
