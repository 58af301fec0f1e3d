"""A real S3-compatible server for the tests: moto's standalone server in its own process
on 127.0.0.1, and a TCP proxy of the test's own in front of it, which can cut the network
(stop) and bring it back (start) and counts the bytes it carries.

moto keeps its buckets in memory: stopping the proxy loses nothing, stopping the server
loses everything. Each request the server answers is one line of its log (`requests`).
"""
from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

REQUEST_LINE = re.compile(r'"(GET|PUT|POST|DELETE|HEAD) (\S+) HTTP/[\d.]+" (\d+)')


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout: float = 30.0, proc: subprocess.Popen | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the server on port {port} exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout:.0f} s")


class MotoServer:
    """`python -m moto.server` on 127.0.0.1, its log in `log`; `endpoint` is its URL."""

    def __init__(self, log: Path, port: int | None = None):
        self.port = port or free_port()
        self.log = Path(log)
        self.proc: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> MotoServer:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                stdout=out, stderr=subprocess.STDOUT)
        wait_for_port(self.port, proc=self.proc)
        for _ in range(100):  # listening before it answers: wait for a real response
            try:
                urllib.request.urlopen(f"{self.endpoint}/moto-api/", timeout=2).read()
                break
            except OSError:
                time.sleep(0.1)
        return self

    def __exit__(self, *exc) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def reset(self) -> None:
        """Delete every bucket (moto's own reset call)."""
        req = urllib.request.Request(f"{self.endpoint}/moto-api/reset", method="POST")
        urllib.request.urlopen(req, timeout=10).read()

    def requests(self) -> list[tuple[str, str, int]]:
        """(method, path, status) of every S3 request answered so far."""
        text = self.log.read_text(errors="replace")
        return [(m[1], m[2], int(m[3])) for m in REQUEST_LINE.finditer(text)
                if not m[2].startswith("/moto-api")]


def s3_env(endpoint: str) -> dict[str, str]:
    """The standard variables that point boto, s3fs and every stage at `endpoint`."""
    return {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


def make_bucket(endpoint: str, name: str) -> None:
    import s3fs
    s3fs.S3FileSystem(endpoint_url=endpoint, key="testing", secret="testing",
                      skip_instance_cache=True).mkdir(name)


def require_credentials(endpoint: str) -> tuple[str, str]:
    """Make moto check credentials from now on, as a real server does (by default it
    takes any): an IAM user allowed every S3 action is made first; its (access key id,
    secret key). moto's signature check refuses some requests that carry the right key
    (listings), so this server is for testing refusals only."""
    import boto3
    iam = boto3.client("iam", endpoint_url=endpoint, region_name="us-east-1",
                       aws_access_key_id="testing", aws_secret_access_key="testing")
    iam.create_user(UserName="stages")
    iam.put_user_policy(UserName="stages", PolicyName="s3", PolicyDocument=json.dumps(
        {"Version": "2012-10-17",
         "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}))
    key = iam.create_access_key(UserName="stages")["AccessKey"]
    req = urllib.request.Request(f"{endpoint}/moto-api/reset-auth", data=b"0", method="POST",
                                 headers={"Content-Type": "text/plain"})
    urllib.request.urlopen(req, timeout=10).read()  # authenticate after 0 more requests
    return key["AccessKeyId"], key["SecretAccessKey"]


class TcpProxy:
    """Forwards 127.0.0.1:`port` to 127.0.0.1:`target`. `stop()` cuts every connection
    and stops listening (clients see refused connections); `start()` listens again on
    the same port. `sent` / `received`: bytes carried to and from the target.

    `cut_when(pattern, seconds)` cuts the network the moment a client sends bytes that
    hold `pattern` (a request line: `b"PUT /bucket/store/features/shard-00002"`; those
    bytes never reach the server) and brings it back `seconds` later: a cut at an exact
    point of a stage, not at a moment that a fast stage may have passed already."""

    def __init__(self, target: int, port: int | None = None):
        self.target, self.port = target, port or free_port()
        self.sent = self.received = 0
        self.cuts: list[bytes] = []  # the patterns that cut the network, in order
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._conns: list[socket.socket] = []
        self._trigger: tuple[bytes, float] | None = None
        self._back = threading.Event()
        self._back.set()
        self._timer: threading.Timer | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> TcpProxy:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._timer is not None:
            self._timer.cancel()  # a cut in progress ends with the proxy
        self.stop()

    def start(self) -> None:
        ls = socket.socket()
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind(("127.0.0.1", self.port))
        ls.listen(64)
        self._listener = ls
        threading.Thread(target=self._accept, args=(ls,), daemon=True).start()

    def stop(self) -> None:
        ls, self._listener = self._listener, None
        if ls is not None:
            try:  # wakes the accepting thread: a closed socket would accept once more
                ls.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            ls.close()
        with self._lock:
            conns, self._conns = self._conns, []
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            c.close()

    def cut_when(self, pattern: bytes, seconds: float) -> None:
        """Arm a cut: the next client bytes holding `pattern` stop the proxy, which
        starts again `seconds` later (`wait_until_back`)."""
        with self._lock:
            self._trigger = (pattern, seconds)

    def wait_until_back(self, timeout: float | None = None) -> bool:
        """Wait for the end of a cut in progress; True if the network is back."""
        return self._back.wait(timeout)

    def _cut(self, pattern: bytes, seconds: float) -> None:
        self._back.clear()
        self.cuts.append(pattern)
        self.stop()

        def back():
            self.start()
            self._back.set()
        self._timer = threading.Timer(seconds, back)
        self._timer.daemon = True
        self._timer.start()

    def _accept(self, ls: socket.socket) -> None:
        while True:
            try:
                client, _ = ls.accept()
            except OSError:
                return  # stopped
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target), timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns += [client, upstream]
            for a, b, up in ((client, upstream, True), (upstream, client, False)):
                threading.Thread(target=self._pipe, args=(a, b, up), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, up: bool) -> None:
        try:
            while data := src.recv(1 << 16):
                if up and self._trigger is not None and self._trigger[0] in data:
                    with self._lock:
                        trigger, self._trigger = self._trigger, None
                    if trigger is not None:
                        self._cut(*trigger)
                        return
                dst.sendall(data)
                with self._lock:
                    if up:
                        self.sent += len(data)
                    else:
                        self.received += len(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()
            with self._lock:
                self._conns = [c for c in self._conns if c not in (src, dst)]


def env_with(extra: dict[str, str]) -> dict[str, str]:
    return {**os.environ, **extra}
