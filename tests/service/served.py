"""A real search service for tests: a small store whose extract stage used a real model
(random weights), built with the command line, and `python -m workflow serve` started on
a free port of 127.0.0.1 and stopped with SIGINT."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from conftest import ROOT, write_corpus


def build_store(root: Path, n: int = 30) -> tuple[Path, Path, Path]:
    """(store, scratch, corpus folder): n images through preprocess ... prefilter."""
    corpus, store, scratch = root / "corpus", root / "store", root / "scratch"
    write_corpus(corpus, n, size=(40, 32))
    common = ["--store", str(store), "--scratch", str(scratch), "--no-progress"]
    for stage, extra in (("preprocess", ["--source", str(corpus), "--shard-size", "10",
                                         "--workers", "2"]),
                         ("extract", ["--weights", "none", "--input-size", "32",
                                      "--batch-size", "8"]),
                         ("train", []), ("add", []), ("prefilter", [])):
        r = subprocess.run([sys.executable, "-m", "workflow", stage, *extra, *common],
                           cwd=ROOT, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr[-2000:]
    return store, scratch, corpus


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`with Server(store, scratch, "--max-concurrent", "1") as srv:` srv.url, srv.get()"""

    def __init__(self, store: Path, scratch: Path, *args: str, host: str = "127.0.0.1"):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.cmd = [sys.executable, "-m", "workflow", "serve", "--store", str(store),
                    "--scratch", str(scratch), "--port", str(self.port), *args]
        if host != "127.0.0.1":
            self.cmd += ["--host", host]
        self.log = scratch.parent / f"serve-{self.port}.log"

    def __enter__(self) -> Server:
        self.proc = subprocess.Popen(self.cmd, cwd=ROOT, stdout=subprocess.DEVNULL,
                                     stderr=open(self.log, "w"), start_new_session=True)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()[-3000:]
            try:
                if self.get("/health")[0] == 200:
                    return self
            except OSError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"the service did not start: {self.log.read_text()[-3000:]}")

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self, timeout: float = 15) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        return self.proc.returncode

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict | None = None, timeout: float = 60):
        """(status, headers, body bytes), for any status."""
        req = urllib.request.Request(self.url + path, data=body, method=method,
                                     headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, dict(r.headers), r.read()
        except urllib.error.HTTPError as e:
            return e.code, dict(e.headers), e.read()

    def get(self, path: str):
        status, _, body = self.request("GET", path, timeout=5)
        return status, body

    def post_json(self, path: str, obj) -> tuple[int, dict]:
        status, _, body = self.request("POST", path, json.dumps(obj).encode(),
                                       {"Content-Type": "application/json"})
        return status, json.loads(body)

    def upload(self, data: bytes, query: str = "", name: str = "q.jpg") -> tuple[int, dict]:
        boundary = "workflowtestboundary"
        body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; "
                f"filename=\"{name}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
                ).encode() + data + f"\r\n--{boundary}--\r\n".encode()
        status, _, out = self.request(
            "POST", "/search" + query, body,
            {"Content-Type": f"multipart/form-data; boundary={boundary}"})
        return status, json.loads(out)
