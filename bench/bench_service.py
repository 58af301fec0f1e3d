#!/usr/bin/env python
"""Search service benchmark: real HTTP on loopback against a real `workflow serve`.

1. Start-up to `GET /health` 200 on the 2M store (`--store`, default the store
   `bench_index.py` leaves), twice: cold (an empty scratch folder and, when run as root
   on Linux, the page cache dropped first) and warm (a restart).
2. Id queries, one client: HTTP p50 against the in-process `Searcher` p50, measured in
   alternating blocks in one run (the difference is the HTTP overhead).
3. 16 concurrent clients for 60 s (id queries, keep-alive connections): errors, p50 and
   p99, queries/s, against the in-process batch throughput of the same mode.
4. A soak of 20,000 requests on a small store made from real images (demo corpus, a real
   model with random weights, so that uploads are embedded): id queries, thumbnails,
   image uploads, 5% hostile uploads (garbage, truncated, bombs, oversized); every
   status counted, the server's RSS at the 1,000th request and at the end.

Goals (2 cores): HTTP p50 within 1.5 ms of in-process; 16 clients: no error, p99 under
50 ms, throughput at least 70% of in-process batch; soak: zero 5xx, RSS growth under
100 MB; start-up under 10 s.

    python bench/bench_service.py [--store bench/out/index/store] [--seconds 60]
    python bench/bench_service.py --soak-only [--soak 20000]
"""
from __future__ import annotations

import argparse
import datetime as dt
import http.client
import json
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from workflow.utils import cpu_name  # noqa: E402

MODE = "hierarchical"


def start(store: Path, scratch: Path, port: int, *extra: str):
    """(process, seconds to /health 200)."""
    t = time.perf_counter()
    p = subprocess.Popen([sys.executable, "-m", "workflow", "serve", "--store", str(store),
                          "--scratch", str(scratch), "--port", str(port), *extra], cwd=REPO,
                         stdout=subprocess.DEVNULL, stderr=open(scratch.parent /
                                                                f"serve-{port}.log", "w"))
    while True:
        if p.poll() is not None:
            raise SystemExit(f"the server exited: see {scratch.parent}/serve-{port}.log")
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            c.request("GET", "/health")
            if c.getresponse().status == 200:
                return p, time.perf_counter() - t
        except OSError:
            time.sleep(0.05)


def drop_page_cache() -> bool:
    """Empty the kernel's page cache (root on Linux), so that a start-up reads from disk."""
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("1")
        return True
    except OSError:
        return False


def stop(p) -> None:
    p.send_signal(2)
    p.wait(30)


class Client:
    """One keep-alive HTTP connection."""

    def __init__(self, port: int):
        self.c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)

    def call(self, method: str, path: str, body: bytes | None = None,
             ctype: str = "application/json") -> tuple[int, bytes]:
        self.c.request(method, path, body, {"Content-Type": ctype} if body else {})
        r = self.c.getresponse()
        data = r.read()
        if (r.getheader("connection") or "").lower() == "close":  # e.g. after a 413
            self.c.close()
            self.c = http.client.HTTPConnection("127.0.0.1", self.c.port, timeout=60)
        return r.status, data

    def ids(self, i: int, k: int = 10) -> tuple[int, bytes]:
        return self.call("POST", "/search", json.dumps({"ids": [i], "k": k,
                                                        "mode": MODE}).encode())

    def upload(self, data: bytes) -> tuple[int, bytes]:
        b = "benchboundary"
        body = (f"--{b}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"q\"\r\n"
                f"\r\n").encode() + data + f"\r\n--{b}--\r\n".encode()
        return self.call("POST", "/search?k=10", body, f"multipart/form-data; boundary={b}")


def single_client(port: int, store: Path, scratch: Path, n: int, rounds: int = 3,
                  warmup: int = 1000) -> dict:
    """HTTP and in-process p50 of one id query at a time, in alternating blocks, after
    `warmup` untimed queries each; in-process batch throughput (the median of three
    batches of 1,000 ids)."""
    from workflow.search import Searcher
    s = Searcher(str(store), str(scratch), cache_size=0)
    rng = np.random.default_rng(0)
    total = int(s.index.ntotal)
    client, http_t, local_t = Client(port), [], []
    for i in rng.integers(0, total, warmup):  # untimed: page tables, caches, first touches
        client.ids(int(i))
    s.search(rng.integers(0, total, warmup).tolist(), k=10, mode=MODE)
    for _ in range(rounds):
        for i in rng.integers(0, total, n):
            t = time.perf_counter()
            status, _ = client.ids(int(i))
            http_t.append(time.perf_counter() - t)
            assert status in (200, 404), status
        for i in rng.integers(0, total, n):
            t = time.perf_counter()
            try:
                s.search([int(i)], k=10, mode=MODE)
            except Exception:  # noqa: BLE001 - an id without a feature, as 404 above
                pass
            local_t.append(time.perf_counter() - t)
    batch_qps = []
    for _ in range(3):
        ids = rng.integers(0, total, 1000).tolist()
        t = time.perf_counter()
        s.search(ids, k=10, mode=MODE)
        batch_qps.append(len(ids) / (time.perf_counter() - t))
    batch_qps = float(np.median(batch_qps))
    return {"http_p50_ms": 1000 * float(np.median(http_t)),
            "local_p50_ms": 1000 * float(np.median(local_t)), "local_batch_qps": batch_qps}


def concurrent_clients(port: int, total: int, clients: int, seconds: float) -> dict:
    lat: list[float] = []
    codes: dict[int, int] = {}
    lock = threading.Lock()
    until = time.monotonic() + seconds

    def work(seed: int):
        rng, c = np.random.default_rng(seed), Client(port)
        while time.monotonic() < until:
            t = time.perf_counter()
            try:
                status, _ = c.ids(int(rng.integers(0, total)))
            except OSError:
                status, c = -1, Client(port)
            with lock:
                lat.append(time.perf_counter() - t)
                codes[status] = codes.get(status, 0) + 1
    threads = [threading.Thread(target=work, args=(i,)) for i in range(clients)]
    t = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    wall = time.perf_counter() - t
    return {"clients": clients, "seconds": wall, "requests": len(lat), "codes": codes,
            "qps": len(lat) / wall, "p50_ms": 1000 * float(np.percentile(lat, 50)),
            "p99_ms": 1000 * float(np.percentile(lat, 99))}


def small_store(out: Path) -> tuple[Path, Path, list[Path]]:
    """A store of the demo corpus (real photos) through prefilter, a real model with
    random weights; returns (store, scratch, some corpus images)."""
    store, scratch, corpus = out / "small" / "store", out / "small" / "scratch", out / "demo"
    if not (out / "small" / "done").exists():
        shutil.rmtree(out / "small", ignore_errors=True)
        from workflow.demo import make_demo_corpus
        make_demo_corpus(corpus, n=300)
        common = ["--store", str(store), "--scratch", str(scratch), "--no-progress"]
        for stage, extra in (("preprocess", ["--source", str(corpus / "photos")]),
                             ("extract", ["--weights", "none", "--input-size", "96"]),
                             ("train", []), ("add", []), ("prefilter", [])):
            subprocess.run([sys.executable, "-m", "workflow", stage, *extra, *common],
                           cwd=REPO, check=True, capture_output=True)
        (out / "small" / "done").touch()
    images = sorted(p for p in (corpus / "photos").rglob("*") if p.suffix.lower() == ".jpg")
    return store, scratch, images[:50]


def hostile(tmp: Path) -> list[bytes]:
    from workflow.demo import make_bad_inputs
    kinds = make_bad_inputs(tmp)
    bad = [(tmp / name).read_bytes() for name, kind in kinds.items() if kind != "ok"]
    return bad + [os.urandom(3 << 20)]  # over the soak's --max-upload-mb 2


def soak(out: Path, port: int, n: int, clients: int = 4) -> dict:
    store, scratch, images = small_store(out)
    p, _ = start(store, scratch, port, "--max-upload-mb", "2", "--preload")
    proc = psutil.Process(p.pid)
    n_ids = json.loads(Client(port).call("GET", "/status")[1])["vectors"]
    jpegs, bad = [q.read_bytes() for q in images], hostile(out / "hostile")
    codes: dict[int, int] = {}
    rss: dict[str, float] = {}
    lock, counter = threading.Lock(), [0]

    def work(seed: int):
        rng, c = np.random.default_rng(seed), Client(port)
        while True:
            with lock:
                if counter[0] >= n:
                    return
                counter[0] += 1
                if counter[0] == 1000:
                    rss["at_1000"] = proc.memory_info().rss / 2**20
            r = rng.random()
            try:
                if r < 0.05:
                    status, _ = c.upload(bad[rng.integers(len(bad))])
                elif r < 0.20:
                    status, _ = c.upload(jpegs[rng.integers(len(jpegs))])
                elif r < 0.40:
                    status, _ = c.call("GET", f"/image/{rng.integers(0, n_ids)}")
                else:
                    status, _ = c.ids(int(rng.integers(0, n_ids)))
            except (OSError, http.client.HTTPException):
                status, c = -1, Client(port)  # a reset: counted as -1
            with lock:
                codes[status] = codes.get(status, 0) + 1
    t = time.perf_counter()
    threads = [threading.Thread(target=work, args=(i,)) for i in range(clients)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    rss["end"] = proc.memory_info().rss / 2**20
    alive = p.poll() is None
    stop(p)
    return {"requests": n, "seconds": time.perf_counter() - t, "codes": codes,
            "alive": alive, "rss_mb": rss, "rss_growth_mb": rss["end"] - rss["at_1000"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--store", type=Path, default=REPO / "bench" / "out" / "index" / "store")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "out" / "service")
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--soak", type=int, default=20_000)
    ap.add_argument("--port", type=int, default=8931)
    ap.add_argument("--soak-only", action="store_true",
                    help="only the soak (4.), on its small store: no 2M store needed")
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    scratch = a.out / "scratch"
    shutil.rmtree(scratch, ignore_errors=True)
    machine = f"{cpu_name()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    report = {"date": dt.date.today().isoformat(), "machine": machine,
              "command": "python bench/bench_service.py " + " ".join(sys.argv[1:])}
    if not a.soak_only:
        search_figures(a, scratch, report)
    if a.soak:
        report["soak"] = soak(a.out, a.port + 1, a.soak)
        print("soak:", report["soak"], flush=True)
    (a.out / "service.json").write_text(json.dumps(report, indent=1))
    print_report(report)


def search_figures(a, scratch: Path, report: dict) -> None:
    """1-3: start-up, one client, 16 clients on the 2M store."""
    report["cold_page_cache"] = drop_page_cache()
    p, report["start_cold_s"] = start(a.store, scratch, a.port)
    stop(p)
    p, report["start_warm_s"] = start(a.store, scratch, a.port)
    print(f"start-up: cold {report['start_cold_s']:.1f} s, warm {report['start_warm_s']:.1f} s",
          flush=True)
    try:
        total = json.loads(Client(a.port).call("GET", "/health")[1])["vectors"]
        report["single"] = single_client(a.port, a.store, scratch, 300)
        print("one client:", report["single"], flush=True)
        report["concurrent"] = concurrent_clients(a.port, total, 16, a.seconds)
        print("16 clients:", report["concurrent"], flush=True)
    finally:
        stop(p)


def print_report(r: dict) -> None:
    print(f"\n{r['date']} | {r['machine']} | {r['command']}\n")
    print("| measure | value | goal |\n|---|---:|---|")
    if "single" in r:
        print_search(r)
    k = r.get("soak")
    if k is None:
        return
    print(f"| soak: {k['requests']:,} requests in {k['seconds']:.0f} s, status codes | "
          f"{k['codes']} | no 5xx, no reset (-1) |")
    print(f"| soak: server RSS at the 1,000th request / at the end | "
          f"{k['rss_mb']['at_1000']:.0f} / {k['rss_mb']['end']:.0f} MB "
          f"(+{k['rss_growth_mb']:.0f}) | growth < 100 MB |")


def print_search(r: dict) -> None:
    s, c = r["single"], r["concurrent"]
    cold = "cold" + (" (page cache dropped)" if r.get("cold_page_cache") else "")
    print(f"| start-up to /health, {cold} / warm | {r['start_cold_s']:.1f} s / "
          f"{r['start_warm_s']:.1f} s | under 10 s |")
    print(f"| one client p50: HTTP / in-process | {s['http_p50_ms']:.2f} / "
          f"{s['local_p50_ms']:.2f} ms | within 1.5 ms |")
    print(f"| 16 clients, {c['seconds']:.0f} s: requests, status codes | {c['requests']:,}, "
          f"{c['codes']} | no error |")
    print(f"| 16 clients: p50 / p99 | {c['p50_ms']:.1f} / {c['p99_ms']:.1f} ms | p99 < 50 ms |")
    print(f"| 16 clients: queries/s / in-process batch | {c['qps']:.0f} / "
          f"{s['local_batch_qps']:.0f} ({c['qps'] / s['local_batch_qps']:.0%}) | >= 70% |")


if __name__ == "__main__":
    main()
