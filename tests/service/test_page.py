"""The search page in a real browser (headless Chromium driven by Selenium) against the
real service (`python -m workflow serve`) over a small store built by the CLI with a real
(untrained) model: upload an image, find it first, click a card, go back and forward,
type an id, see an error's reason."""
from __future__ import annotations

import json
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import ROOT, write_corpus

QUERY = "class0/img0004.jpg"  # a corpus image, by its key (path under the corpus folder)


def _browser_binaries() -> tuple[str, str]:
    pytest.importorskip("selenium", reason="the page test needs selenium (requirements-dev)")
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not browser or not driver:
        pytest.skip("the page test needs Chromium and its driver (`chromium`/`chromium-browser`"
                    " and `chromedriver` on PATH; Debian: apt-get install chromium "
                    "chromium-driver)")
    return browser, driver


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> tuple[Path, Path, Path]:
    """(corpus, store, scratch): 30 small images through preprocess, extract (a real
    model, no weights), train, add and prefilter, each stage a command as a user runs it."""
    _browser_binaries()  # skip before spending half a minute on the store
    base = tmp_path_factory.mktemp("page")
    corpus, store, scratch = base / "corpus", base / "store", base / "scratch"
    write_corpus(corpus, 30, size=(40, 32))
    common = ["--store", str(store), "--no-progress", "--scratch", str(scratch)]
    for args in (["preprocess", "--source", str(corpus), "--workers", "2", "--shard-size", "10"],
                 ["extract", "--weights", "none", "--input-size", "32", "--batch-size", "4"],
                 ["train"], ["add"], ["prefilter"]):
        r = subprocess.run([sys.executable, "-m", "workflow", *args, *common], cwd=ROOT,
                           capture_output=True, text=True)
        assert r.returncode == 0, f"{args[0]} failed:\n{r.stderr[-3000:]}"
    return corpus, store, scratch


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, timeout: float = 5) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


@pytest.fixture(scope="module")
def server(store):
    """The real service on a free port; its base URL. Stopped with SIGINT (killed 10 s
    later if it is still there)."""
    _, store_path, scratch = store
    port = _free_port()
    log = open(store_path.parent / "serve.log", "w+b")  # noqa: SIM115 - closed in finally
    p = subprocess.Popen([sys.executable, "-m", "workflow", "serve", "--store", str(store_path),
                          "--scratch", str(scratch), "--port", str(port)],
                         cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert p.poll() is None, f"the server exited:\n{_tail(log)}"
            try:
                if _get(f"{url}/health", timeout=2)[0] == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, f"no /health in 60 s:\n{_tail(log)}"
            time.sleep(0.25)
        yield url
    finally:
        p.send_signal(signal.SIGINT)
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
        log.close()


def _tail(log) -> str:
    log.flush()
    log.seek(0)
    return log.read().decode(errors="replace")[-3000:]


@pytest.fixture
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    binary, driver_path = _browser_binaries()
    opts = webdriver.ChromeOptions()
    opts.binary_location = binary
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
              "--window-size=1280,900"):
        opts.add_argument(a)
    driver = webdriver.Chrome(options=opts, service=Service(executable_path=driver_path))
    try:
        yield driver
    finally:
        driver.quit()


# ------------------------------------------------------------------ page helpers

def _wait(driver, condition, what: str, timeout: float = 30):
    from selenium.webdriver.support.ui import WebDriverWait
    return WebDriverWait(driver, timeout).until(lambda d: condition(d),
                                                message=f"waiting for {what}; status line: "
                                                        f"{_text(driver, '#status')!r}")


def _text(driver, css: str) -> str:
    from selenium.webdriver.common.by import By
    els = driver.find_elements(By.CSS_SELECTOR, css)
    return els[0].text if els else ""


def _cards(driver) -> list[dict]:
    """The grid's cards: id, key, score text and image URL, read in one script."""
    return driver.execute_script("""
        return [...document.querySelectorAll('#results figure.result')].map((f) => ({
          id: f.dataset.id, key: f.querySelector('.key').textContent,
          score: f.querySelector('.score').textContent, src: f.querySelector('img').src}));
    """)


def _query_of(url: str) -> dict:
    from urllib.parse import parse_qs, urlparse
    return {k: v[0] for k, v in parse_qs(urlparse(url).query).items()}


def _download(driver) -> dict:
    """The JSON behind the "Download JSON" link (a blob URL), fetched by the page."""
    return json.loads(driver.execute_async_script("""
        const done = arguments[arguments.length - 1];
        fetch(document.getElementById('download').href).then((r) => r.text()).then(done);
    """))


# ------------------------------------------------------------------ the test

def _upload_and_find_itself(browser, server, corpus: Path, tmp_path: Path) -> list[dict]:
    from selenium.webdriver.common.by import By
    browser.get(f"{server}/")
    status = json.loads(_get(f"{server}/status")[1])
    _wait(browser, lambda d: d.execute_script("return document.getElementById('mode')"
                                              ".options.length") > 0, "the modes")
    mode = browser.find_element(By.ID, "mode")
    assert mode.get_attribute("value") == status["default_mode"]
    assert [o.get_attribute("value") for o in mode.find_elements(By.TAG_NAME, "option")] == \
        status["modes"]
    assert not status["text_queries"]  # no text tower: no box for words
    assert not browser.find_element(By.ID, "text-form").is_displayed()
    browser.find_element(By.ID, "file").send_keys(str(corpus / QUERY))
    # the first image query loads the model in the server (TensorFlow): more time
    _wait(browser, lambda d: _cards(d), "the results of the upload", timeout=120)
    cards = _cards(browser)
    assert len(cards) == 10, cards  # k = 10 by default; the corpus has 30 images
    assert cards[0]["key"] == QUERY and float(cards[0]["score"]) >= 0.99, cards[0]
    assert re.fullmatch(r"\d\.\d{3}", cards[0]["score"])
    assert cards[0]["src"].endswith(f"/image/{cards[0]['id']}")
    assert re.fullmatch(r"10 results in [\d.]+ ms", _text(browser, "#status"))
    assert "id" not in _query_of(browser.current_url)
    assert browser.find_element(By.ID, "query-img").get_attribute("src").startswith("blob:")
    got = _download(browser)
    assert [r["id"] for r in got["results"][0]["results"]] == [int(c["id"]) for c in cards]
    # every thumbnail was loaded (a broken image has naturalWidth 0)
    _wait(browser, lambda d: d.execute_script(
        "return [...document.images].every((i) => i.complete && i.naturalWidth > 0)"),
        "the thumbnails")
    browser.save_screenshot(str(tmp_path / "page.png"))
    return cards


def _click_card_then_back_and_forward(browser, before: list[dict]) -> None:
    from selenium.webdriver.common.by import By
    clicked = before[1]["id"]
    browser.find_elements(By.CSS_SELECTOR, "#results figure.result")[1].click()
    ids_before = {c["id"] for c in before}
    _wait(browser, lambda d: _query_of(d.current_url).get("id") == clicked
          and _cards(d) and {c["id"] for c in _cards(d)} != ids_before, "the clicked card's query")
    after = _cards(browser)
    assert clicked not in {c["id"] for c in after}  # exclude_self
    query = _query_of(browser.current_url)
    assert set(query) == {"id", "k", "mode"} and query["k"] == "10", query
    assert f"Image id {clicked}" in _text(browser, "#query-label")
    assert browser.find_element(By.ID, "query-img").get_attribute("src").endswith(
        f"/image/{clicked}")
    browser.back()  # the upload again: no id in the URL, the same grid
    _wait(browser, lambda d: "id" not in _query_of(d.current_url)
          and [c["id"] for c in _cards(d)] == [c["id"] for c in before], "the upload's grid")
    assert _cards(browser)[0]["key"] == QUERY
    browser.forward()
    _wait(browser, lambda d: _query_of(d.current_url).get("id") == clicked
          and [c["id"] for c in _cards(d)] == [c["id"] for c in after], "the clicked query")


def _typed_ids(browser, server, first_id: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select
    box = browser.find_element(By.ID, "query-id")
    box.clear()
    box.send_keys("999999")
    browser.find_element(By.ID, "search-id").click()
    _wait(browser, lambda d: "error" in d.find_element(By.ID, "status").get_attribute("class")
          and not _cards(d), "the error of an unknown id")
    assert "999999" in _text(browser, "#status"), _text(browser, "#status")
    browser.get_log("browser")  # the expected 404s of /search, /image and /items
    # a bookmark: the URL alone runs the query, with its k
    browser.get(f"{server}/?id={first_id}&k=20")
    _wait(browser, lambda d: len(_cards(d)) == 20, "20 results of a bookmarked id")
    assert browser.find_element(By.ID, "k").get_attribute("value") == "20"
    assert first_id not in {c["id"] for c in _cards(browser)}
    length = browser.execute_script("return history.length")
    Select(browser.find_element(By.ID, "mode")).select_by_value("exact")  # re-runs the query
    _wait(browser, lambda d: _query_of(d.current_url) == {"id": first_id, "k": "20",
                                                          "mode": "exact"}, "mode=exact")
    _wait(browser, lambda d: len(_cards(d)) == 20 and "results in" in _text(d, "#status"),
          "the exact results")
    assert browser.execute_script("return history.length") == length  # replaced, not pushed


# a file dropped on the page or pasted: the stored image of the query's id, as a File
DISPATCH = """
    const [id, kind, done] = arguments;
    fetch(`/image/${id}`).then((r) => r.blob()).then((blob) => {
      const dt = new DataTransfer();
      dt.items.add(new File([blob], `${kind}.jpg`, { type: "image/jpeg" }));
      const e = kind === "drop" ? new DragEvent("drop", { dataTransfer: dt, bubbles: true })
        : new ClipboardEvent("paste", { clipboardData: dt, bubbles: true });
      document.getElementById("drop").dispatchEvent(e);
      done();
    });
"""


def _drop_and_paste(browser, query_id: str) -> None:
    for kind in ("drop", "paste"):
        browser.execute_async_script(DISPATCH, query_id, kind)
        _wait(browser, lambda d, kind=kind: _text(d, "#query-label") ==
              f"Uploaded image: {kind}.jpg" and _cards(d)
              and "results in" in _text(d, "#status"), f"the results of a {kind}")
        assert _cards(browser)[0]["key"] == QUERY, (kind, _cards(browser)[0])
        assert "id" not in _query_of(browser.current_url)


# a file of `size` bytes dropped on the page
DROP_BIG = """
    const [size, done] = arguments;
    const dt = new DataTransfer();
    dt.items.add(new File([new Uint8Array(size)], "huge.jpg", { type: "image/jpeg" }));
    document.getElementById("drop").dispatchEvent(
      new DragEvent("drop", { dataTransfer: dt, bubbles: true }));
    done();
"""


def _too_large(browser, server) -> None:
    """An image over the server's limit is refused by the page, in words, unsent."""
    from selenium.webdriver.common.by import By
    limit = json.loads(_get(f"{server}/status")[1])["max_upload_bytes"]
    before = _get(f"{server}/metrics")[1]
    browser.execute_async_script(DROP_BIG, limit + 1)
    _wait(browser, lambda d: "Too large" in _text(d, "#status"), "the too-large message")
    assert "error" in browser.find_element(By.ID, "status").get_attribute("class")
    assert f"up to {limit / 2**20:.1f} MB" in _text(browser, "#status"), _text(browser, "#status")
    assert _searches(_get(f"{server}/metrics")[1]) == _searches(before)  # nothing was sent


def _searches(metrics: bytes) -> float:
    """POST /search requests counted by the service's metrics."""
    return sum(float(line.rsplit(" ", 1)[1]) for line in metrics.decode().splitlines()
               if line.startswith("workflow_requests_total") and 'route="/search"' in line)


def _on_a_phone(browser, tmp_path: Path) -> None:
    """At a phone's width the page fits: no sideways scrolling, cards in columns."""
    browser.set_window_size(390, 844)
    _wait(browser, lambda d: d.execute_script("return window.innerWidth") <= 420, "a narrow window")
    assert browser.execute_script(
        "return document.documentElement.scrollWidth <= window.innerWidth")
    columns = browser.execute_script("return getComputedStyle(document.getElementById("
                                     "'results')).gridTemplateColumns.split(' ').length")
    assert 2 <= columns <= 3, columns
    browser.save_screenshot(str(tmp_path / "page-phone.png"))


def test_the_page_searches_by_upload_card_click_history_and_id(store, server, browser,
                                                               tmp_path):
    corpus = store[0]
    cards = _upload_and_find_itself(browser, server, corpus, tmp_path)
    _click_card_then_back_and_forward(browser, cards)
    assert not (errors := _severe(browser)), errors
    _typed_ids(browser, server, cards[0]["id"])
    _drop_and_paste(browser, cards[0]["id"])
    _too_large(browser, server)
    _on_a_phone(browser, tmp_path)
    assert not (errors := _severe(browser)), errors


def _severe(browser) -> list[dict]:
    """The browser's errors since the last call (failed loads, script errors)."""
    return [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
