"""The search service through real HTTP on a real server process: the API, its answers
in the form `06_search.py --json` prints, and safe by default (loopback, limits, clear
4xx for bad input, bounded concurrency, no traceback, Ctrl-C)."""
import concurrent.futures
import json
import socket
import subprocess
import sys
import time

import psutil
import pytest

from conftest import ROOT
from served import Server, build_store


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    return build_store(tmp_path_factory.mktemp("served"))


@pytest.fixture(scope="module")
def srv(built):
    store, scratch, _ = built
    with Server(store, scratch, "--max-upload-mb", "1") as s:
        yield s


def test_search_answers_as_the_command_line_does(srv, built):
    store, scratch, corpus = built
    status, got = srv.post_json("/search", {"ids": [3, 7], "k": 5, "exclude_self": True})
    assert status == 200 and got["took_ms"] > 0
    cli = subprocess.run([sys.executable, "-m", "workflow", "search", "--store", str(store),
                          "--scratch", str(scratch), "--id", "3", "7", "--k", "5",
                          "--exclude-self", "--json"], cwd=ROOT, capture_output=True,
                         text=True)
    assert cli.returncode == 0, cli.stderr[-2000:]
    assert got["results"] == [json.loads(line) for line in cli.stdout.splitlines()]
    # an uploaded corpus image finds itself first; options as query parameters
    path = sorted(corpus.rglob("*.jpg"))[4]
    status, got = srv.upload(path.read_bytes(), "?k=3&mode=exact")
    assert status == 200, got
    first = got["results"][0]["results"][0]
    assert first["key"] == str(path.relative_to(corpus)) and first["score"] > 0.99
    assert len(got["results"][0]["results"]) == 3
    status, got = srv.post_json("/search", {"vectors": [[0.1] * 1280], "k": 2})
    assert status == 200 and len(got["results"][0]["results"]) == 2


def test_images_items_status_metrics_docs_and_the_page(srv):
    status, _, body = srv.request("GET", "/image/4")
    assert status == 200 and body[:2] == b"\xff\xd8"
    status, body = srv.get("/items/4")
    item = json.loads(body)
    assert status == 200 and item["status"] == "ok" and item["orig_size"] == [40, 32]
    status, body = srv.get("/status")
    st = json.loads(body)
    assert st["corpus"] == {"version": 1, "images": 30} and "hierarchical" in st["modes"]
    assert st["stages"]["add"].startswith("complete")
    assert st["text_queries"] is False  # EfficientNet: no text tower, the page hides words
    for path in ("/docs", "/openapi.json", "/"):
        assert srv.get(path)[0] == 200, path
    status, body = srv.get("/metrics")
    text = body.decode()
    assert 'workflow_requests_total{route="/image/{image_id}",status="200"}' in text
    assert "workflow_request_seconds_bucket" in text
    assert "workflow_query_cache_hit_rate" in text


@pytest.mark.parametrize("name,kind", [
    ("notes.jpg", "not_image"), ("truncated.jpg", "corrupt"), ("bomb.png", "too_large"),
    ("empty.jpg", "empty"), ("photo.heic", "unsupported")])
def test_a_bad_upload_is_a_400_with_the_reason_preprocess_records(srv, tmp_path, name,
                                                                   kind):
    from workflow.demo import make_bad_inputs
    make_bad_inputs(tmp_path)
    status, got = srv.upload((tmp_path / name).read_bytes(), name="../../etc/passwd")
    assert status == 400 and f": {kind}: " in got["detail"], got


@pytest.mark.parametrize("method,path,body,code,words", [
    ("GET", "/image/999", None, 404, "no stored image"),
    ("GET", "/items/999", None, 404, "not in the corpus"),
    ("GET", "/image/abc", None, 422, "image_id"),
    ("POST", "/search", {"ids": [999]}, 404, "not in the corpus"),
    ("POST", "/search", {"ids": [1], "k": 0}, 422, "k must be between"),
    ("POST", "/search", {"ids": [1], "mode": "fast"}, 422, "mode must be one of"),
    ("POST", "/search", {"ids": "1"}, 422, "non-empty list of integers"),
    ("POST", "/search", {"ids": [1], "vectors": [[1]]}, 422, "exactly one of"),
    ("POST", "/search", {"vectors": [[1, 2]]}, 422, "[n, 1280]"),
    ("POST", "/search", {"vectors": [[False] + [0.1] * 1279]}, 422, "lists of numbers"),
    ("POST", "/search", {"vectors": [["0.5"] * 1280]}, 422, "lists of numbers"),
    ("POST", "/search", {"ids": [1], "color": "red"}, 422, "unknown option"),
    ("POST", "/search", [1, 2], 422, "must be an object"),
    # words for a model without a text tower: the models that have one are named
    ("POST", "/search", {"texts": ["a red bicycle"]}, 400,
     "no text tower, so they cannot be searched by words: extract the corpus with an "
     "image-text model (clip-vit-b32, clip-vit-b16, siglip-base-224)"),
    ("POST", "/search", {"texts": ["a red bicycle", ""]}, 422, '"texts"[1] is empty'),
    # out of range or of the wrong type: refused before anything reaches Faiss or Annoy
    ("GET", "/image/9223372036854775808", None, 422, "image_id"),
    ("GET", "/items/-1", None, 422, "image_id"),
    ("POST", "/search", {"ids": [9223372036854775808]}, 404, "not in the corpus"),
    ("POST", "/search?nprobe=99999999999999999999&mode=ivfpq", {"ids": [1]}, 422,
     "out of range"),
    ("POST", "/search?nprobe=100&mode=ivfpq", {"ids": [1]}, 422, "nprobe must be between 1 and"),
    ("POST", "/search?rerank=4611686018427387904&mode=ivfpq%2Brerank", {"ids": [1]}, 422,
     "rerank must be between 1 and 100000, not 4611686018427387904"),
    ("POST", "/search?rerank=1000000000&mode=ivfpq%2Brerank", {"ids": [1]}, 422,
     "rerank must be between 1 and 100000"),
    ("POST", "/search?search_k=99999999999999999999999&mode=annoy%2Brerank", {"ids": [1]},
     422, "out of range"),
    ("POST", "/search?annoy=-1&mode=annoy%2Brerank", {"ids": [1]}, 422,
     "annoy must be between 0 and 100000, not -1"),
    ("POST", "/search?annoy=0&mode=annoy%2Brerank", {"ids": [1]}, 422,
     "annoy must be at least 1 in annoy+rerank mode"),
    ("POST", "/search", {"ids": [1], "k": 2.7}, 422, "k must be an integer, not 2.7"),
    ("POST", "/search?k=2.7", {"ids": [1]}, 422, "k must be an integer, not '2.7'"),
    ("POST", "/search", {"ids": [1], "k": True}, 422, "k must be an integer"),
    ("POST", "/search", {"ids": [1], "exclude_self": [1]}, 422,
     "exclude_self must be true or false, not [1]"),
    ("POST", "/search", {"ids": [1], "collapse_duplicates": 2}, 422, "true or false"),
    # an option out of range is refused where it is given, even if the body overrides it
    ("POST", "/search?search_k=100000001", {"ids": [1], "search_k": 0}, 422,
     "search_k must be between -1 and 100000000"),
])
def test_bad_requests_get_a_4xx_with_the_reason(srv, method, path, body, code, words):
    data = None if body is None else json.dumps(body).encode()
    status, _, out = srv.request(method, path, data, {"Content-Type": "application/json"})
    assert status == code and words in json.loads(out)["detail"], out
    assert b"Traceback" not in out


def test_an_upload_over_the_limit_is_refused_before_it_is_read(srv):
    # the declared size alone: 413 at once, with the 50 MB never sent
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as s:
        s.sendall(b"POST /search HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; "
                  b"boundary=b\r\nContent-Length: 52428800\r\n\r\n--b\r\n")
        t = time.monotonic()
        reply = s.recv(4096)
        assert reply.startswith(b"HTTP/1.1 413") and time.monotonic() - t < 5
    # no declared size (chunked): refused once 1 MB has streamed in. Only a little more
    # is sent: a server that closes with much of a request unread makes its kernel send
    # a reset, which can reach the client before the 413 is read
    head = b"--b\r\nContent-Disposition: form-data; name=\"image\"; filename=\"x\"\r\n\r\n"
    status, _, out = srv.request("POST", "/search", _chunks(head + b"\0" * ((1 << 20) + (1 << 16))),
                                 {"Content-Type": "multipart/form-data; boundary=b",
                                  "Transfer-Encoding": "chunked"})
    assert status == 413 and b"--max-upload-mb" in out
    assert srv.get("/health")[0] == 200  # the server is alive


def _send_then_read(port: int, head: bytes, body: bytes) -> bytes:
    """A client that sends the whole request before it reads (as most do), then reads one
    answer (to its Content-Length): the answer, or b"reset" where the connection was
    reset under it. It keeps its side open, as HTTP clients do: a client that half-closes
    after sending is taken by uvicorn for one that went away, and an answer not written
    by then is dropped (36 of 150 chunked uploads answered nothing that way)."""
    with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
        try:
            s.sendall(head + body)
            out = b""
            while not _complete(out) and (chunk := s.recv(65536)):
                out += chunk
            return out
        except OSError as e:  # reset, broken pipe, not connected
            return b"reset: " + str(e).encode()


def _complete(reply: bytes) -> bool:
    """Whether `reply` holds a whole HTTP response (headers and Content-Length bytes)."""
    head, sep, body = reply.partition(b"\r\n\r\n")
    if not sep:
        return False
    length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                   if line.lower().startswith(b"content-length:")), 0)
    return len(body) >= length


@pytest.mark.timeout(120)
def test_a_client_that_sends_an_oversized_upload_whole_reads_the_413(srv):
    """Up to 4 times the limit the body is read and dropped before the 413, so that the
    client still writing it is not reset; a declared size beyond that, or a client that
    waits for "100 Continue", gets the 413 at once."""
    body = (b"--b\r\nContent-Disposition: form-data; name=\"image\"; filename=\"x\"\r\n\r\n"
            + b"\0" * (3 << 20))  # 3 MB against the limit of 1 MB
    head = (b"POST /search HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; "
            b"boundary=b\r\nContent-Length: %d\r\n\r\n" % len(body))
    replies = [_send_then_read(srv.port, head, body) for _ in range(20)]
    assert all(r.startswith(b"HTTP/1.1 413") for r in replies), \
        sorted({r[:80] for r in replies})
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in _chunks(body)) + b"0\r\n\r\n"
    head = (b"POST /search HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; "
            b"boundary=b\r\nTransfer-Encoding: chunked\r\n\r\n")
    replies = [_send_then_read(srv.port, head, chunked) for _ in range(10)]
    assert all(r.startswith(b"HTTP/1.1 413") for r in replies), \
        sorted({r[:80] for r in replies})
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as s:
        s.sendall(b"POST /search HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
                  b"Expect: 100-continue\r\nContent-Length: 3145728\r\n\r\n")
        assert s.recv(4096).startswith(b"HTTP/1.1 413")  # no "100 Continue" first


def _chunks(data: bytes):
    for i in range(0, len(data), 1 << 16):
        yield data[i:i + (1 << 16)]


def test_bounded_concurrency_answers_503_when_the_wait_is_too_long(built):
    store, scratch, corpus = built
    image = sorted(corpus.rglob("*.jpg"))[0].read_bytes()
    with Server(store, scratch, "--max-concurrent", "1", "--queue-timeout", "0.3") as s:
        # the first image query loads the model (seconds) while holding the only slot
        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            futures = [pool.submit(s.upload, image, "?k=2") for _ in range(6)]
            codes = sorted(f.result()[0] for f in futures)
        assert 200 in codes and 503 in codes and set(codes) <= {200, 503}, codes
        busy = next(f.result()[1] for f in futures if f.result()[0] == 503)
        assert "busy" in busy["detail"]
        assert s.get("/health")[0] == 200


def test_it_binds_loopback_by_default_warns_otherwise_and_stops_on_ctrl_c(built):
    store, scratch, _ = built
    with Server(store, scratch) as s:
        addrs = {c.laddr.ip for c in psutil.Process(s.proc.pid).net_connections("inet")
                 if c.status == psutil.CONN_LISTEN}
        assert addrs == {"127.0.0.1"}
        assert s.stop() == 0
    with Server(store, scratch, host="0.0.0.0") as s:
        assert s.stop() == 0
        assert "no authentication" in s.log.read_text()


def test_concurrent_queries_batched_together_get_their_own_answers(srv):
    alone = {i: srv.post_json("/search", {"ids": [i], "k": 4})[1]["results"]
             for i in range(12)}
    with concurrent.futures.ThreadPoolExecutor(13) as pool:
        futures = {i: pool.submit(srv.post_json, "/search", {"ids": [i], "k": 4})
                   for i in [*range(12), 999]}
    for i, f in futures.items():
        status, got = f.result()
        if i == 999:  # an unknown id in a batch fails alone
            assert status == 404 and "999" in got["detail"]
        else:
            assert status == 200 and got["results"] == alone[i], i
    text = srv.get("/metrics")[1].decode()
    one = float(text.split('workflow_search_batch_queries_bucket{le="1.0"} ')[1].split()[0])
    count = float(text.split("workflow_search_batch_queries_count ")[1].split()[0])
    assert count > one  # some batches held several queries


def test_search_without_repeats_once_the_groups_exist(srv, built):
    store, scratch, _ = built
    status, got = srv.post_json("/search", {"ids": [3], "collapse_duplicates": True})
    assert status == 409 and "08_duplicates.py" in got["detail"]  # not built yet
    assert json.loads(srv.get("/status")[1])["duplicate_groups"] is None
    done = subprocess.run([sys.executable, "-m", "workflow", "duplicates", "--store",
                           str(store), "--scratch", str(scratch), "--threshold", "0.9",
                           "--slack", "0", "--no-progress"], cwd=ROOT, capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    groups = json.loads((store / "duplicates" / "groups.json").read_text())["groups"]
    assert groups  # random weights: most pictures look alike
    rep = {i: g["representative"] for g in groups for i in g["ids"]}
    query = groups[0]["ids"][0]
    status, plain = srv.post_json("/search", {"ids": [query], "k": 8, "mode": "exact"})
    status, one = srv.post_json("/search?collapse_duplicates=true",
                                {"ids": [query], "k": 8, "mode": "exact"})
    assert status == 200
    ids = [r["id"] for r in one["results"][0]["results"]]
    assert len({rep.get(i, i) for i in ids}) == len(ids) == 8
    assert len({rep.get(r["id"], r["id"]) for r in plain["results"][0]["results"]}) < 8
    assert json.loads(srv.get("/status")[1])["duplicate_groups"]["groups"] == len(groups)
