#!/usr/bin/env python
"""Stores on an object store: every stage with its store in a bucket of a real S3 server
process against the same stage with its store on local disk, side by side in one run,
stage after stage, on real photos (flowers12 from ../shared/assets; skipped with a
message where that folder is absent).

The S3 server is moto's, on 127.0.0.1, reached through a TCP proxy that counts the bytes
it carries; each request the server answers is a line of its log. Per stage: the wall
time of the script on each store (a process of its own, start-up and model loading
included, as a user runs it), the bytes uploaded and downloaded, and the requests by
kind, in all and per image shard; then, for one shard of extract, the requests that
name it, in order, which show what each store call costs. The sources are a list file
on local disk for both stores (what is compared is the store alone); scratch folders
are fresh; a warm-up on a few images runs first. moto answers from memory on this
machine: the figures are the workflow's own request and transfer counts, without a
network's latency (against a remote service, each request adds its round trip).

    python bench/bench_object_store.py [--n 240] [--shard-size 40] [--out DIR]
"""
from __future__ import annotations

import argparse
import collections
import datetime as dt
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))  # the test suite's S3 server and proxy

from workflow.utils import cpu_name  # noqa: E402

ASSETS = REPO.parent / "shared" / "assets"
FLOWERS = ASSETS / "images" / "flowers12"
BUCKET = "bench-store"
# request kinds, in the order of the tables; what makes them is in CALLS
KINDS = ("bucket", "stat", "list", "read", "upload", "copy", "delete", "other")
CALLS = """\
Which store calls make the requests (workflow/storage/store.py; s3fs underneath):
- bucket: opening the store (`Store(...)`): one HEAD of the bucket per process that
  opens it (the stage, and each worker process or Spark task that opens it again).
- stat: a HEAD of an object: `exists`, `size`, and `marker` (each marker read is
  checked against its file's size), the size check of every upload.
- list: a listing (GET ?list-type=2): `listdir`, `markers` (one per stage folder),
  `cleanup` at the start of a stage (each folder it commits into, its markers, its
  temporary files), the lease's leftover check; s3fs's `info` on a path that is no
  object also lists.
- read: a GET of an object: `read_json` (run.json, markers, the lease), `fetch` (a shard
  or file staged in to scratch), and the sha256 read-back of every upload.
- upload: a PUT under a temporary name: every `commit` and `write_json` (markers,
  run.json, the lease heartbeat) first writes `NAME.tmp-XXXXXXXX`.
- copy, delete: the rename to the final name (S3 has none: s3fs copies, then deletes
  the temporary object); `remove` and `cleanup` delete too.
So a committed file costs 7 requests (1 upload, 3 stats: the size check, the read-back's
open and the copy's; 1 read, 1 copy, 1 delete) and its marker 4 more (1 upload, 1 stat,
1 copy, 1 delete), after 2 that find no older marker (a stat, then a listing: s3fs's way
of telling a missing object from a folder)."""


def kind(method: str, path: str) -> str:
    """The kind of one S3 request from its method and path (path-style addressing)."""
    p, _, q = path.partition("?")
    if method == "GET" and "list-type" in q:
        return "list"
    if method == "HEAD":
        return "bucket" if p.strip("/").count("/") == 0 else "stat"
    if method == "GET":
        return "read"
    if method == "PUT":
        return "upload" if ".tmp-" in p else "copy"
    if method == "DELETE" or (method == "POST" and "delete" in q):
        return "delete"
    return "other"


def source_list(n: int, out: Path) -> tuple[Path, int]:
    """A list file of `n` flowers12 photos, the classes taken in turn; (file, count)."""
    by_class = [sorted(d.glob("*.jpg")) for d in sorted((FLOWERS / "train").iterdir())
                if d.is_dir()]
    paths = [p for group in zip(*by_class) for p in group][:n]
    listing = out / "flowers.txt"
    listing.write_text("".join(f"{p}\n" for p in paths))
    return listing, len(paths)


def stages(listing: Path, shard_size: int) -> list[tuple[str, list[str]]]:
    """(name, command after `python`) of each step; `--store STORE` is added."""
    return [
        ("preprocess", ["scripts/01_preprocess.py", "--source", str(listing),
                        "--shard-size", str(shard_size), "--workers", "2"]),
        ("extract", ["scripts/02_extract.py", "--model", "efficientnet-b0", "--weights",
                     "none", "--batch-size", "32"]),
        ("train", ["scripts/03_train.py"]),
        ("add", ["scripts/04_add.py"]),
        ("prefilter", ["scripts/05_prefilter.py"]),
        ("search", ["scripts/06_search.py", "--id", "0", "--k", "10"]),
        ("search again", ["scripts/06_search.py", "--id", "0", "--k", "10"]),
        ("evaluate", ["scripts/07_evaluate.py", "--queries", "50", "--latency-queries",
                      "10"]),
        ("duplicates", ["scripts/08_duplicates.py"]),
    ]


def warm_up(listing: Path, out: Path, env: dict[str, str]) -> None:
    """Preprocess and extract on a few images, and the index libraries imported, in a
    throwaway local store: whichever store runs a stage first would otherwise pay for
    reading the libraries from disk and for converting the model (cached per user)."""
    few = out / "warm-up.txt"
    few.write_text("".join(listing.read_text().splitlines(keepends=True)[:8]))
    for name, cmd in stages(few, 8)[:2]:
        run(cmd, str(out / "warm-up-store"), env, out / f"warm-up-{name}.log")
    subprocess.run([sys.executable, "-c", "import annoy, faiss, h5py"], cwd=REPO, env=env,
                   check=True)
    shutil.rmtree(out / "warm-up-store")


def run(cmd: list[str], store: str, env: dict[str, str], log: Path) -> float:
    t = time.perf_counter()
    with open(log, "w") as err:
        r = subprocess.run([sys.executable, *cmd, "--store", store, *(
            [] if "06_search" in cmd[0] else ["--no-progress"])], cwd=REPO, env=env,
            stdout=subprocess.DEVNULL, stderr=err)
    seconds = time.perf_counter() - t
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} --store {store} exited with {r.returncode}:\n"
                         f"{log.read_text()[-3000:]}")
    return seconds


def cpu_snapshot() -> tuple[float, float, float]:
    """(wall s, CPU s busy on the whole machine, CPU s of this process and its reaped
    children: the stages and the S3 server), to tell how much else ran meanwhile."""
    import psutil
    t, own = psutil.cpu_times(), os.times()
    return (time.perf_counter(), t.user + t.nice + t.system + getattr(t, "irq", 0)
            + getattr(t, "softirq", 0),
            own.user + own.system + own.children_user + own.children_system)


def mb(n: float) -> str:
    return f"{n / 1e6:.2f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=240, help="images [default: %(default)s]")
    ap.add_argument("--shard-size", type=int, default=40, help="[default: %(default)s]")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "out" / "object-store",
                    help="work folder (emptied first) [default: %(default)s]")
    a = ap.parse_args()
    if not FLOWERS.is_dir():
        print(f"skipped: {FLOWERS} is absent (the real photos this benchmark runs on; "
              "see ../shared/assets/README.md)")
        return 0
    from object_store import MotoServer, TcpProxy, make_bucket, s3_env

    shutil.rmtree(a.out, ignore_errors=True)
    a.out.mkdir(parents=True)
    listing, n = source_list(a.n, a.out)
    local = a.out / "local-store"
    url = f"s3://{BUCKET}/flowers"
    rows = []
    cpu0 = cpu_snapshot()
    with MotoServer(a.out / "moto.log") as server, TcpProxy(server.port) as proxy:
        make_bucket(server.endpoint, BUCKET)
        base = {**os.environ, "WORKFLOW_SCRATCH": str(a.out / "scratch"),
                "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1"}
        env = {**base, **s3_env(proxy.endpoint)}
        warm_up(listing, a.out, base)
        extract_requests = []
        for name, cmd in stages(listing, a.shard_size):
            tag = name.replace(" ", "-")
            local_s = run(cmd, str(local), base, a.out / f"{tag}-local.log")
            before, sent, received = len(server.requests()), proxy.sent, proxy.received
            s3_s = run(cmd, url, env, a.out / f"{tag}-s3.log")
            time.sleep(0.3)  # the server logs a request after it has answered it
            requests = server.requests()[before:]
            if name == "extract":
                extract_requests = requests
            gets = collections.Counter(p for m, p, _ in requests
                                       if kind(m, p) == "read")
            rows.append({"stage": name, "local_s": local_s, "s3_s": s3_s,
                         "again": {p: c for p, c in gets.items() if c > 1},
                         "up": proxy.sent - sent, "down": proxy.received - received,
                         "kinds": collections.Counter(kind(m, p) for m, p, _ in requests),
                         "methods": collections.Counter(m for m, _, _ in requests),
                         "errors": sum(status >= 400 for _, _, status in requests)})
            print(f"{name}: local {local_s:.1f} s, s3 {s3_s:.1f} s, {len(requests)} "
                  "requests", flush=True)
    cpu1 = cpu_snapshot()
    other = max(0.0, (cpu1[1] - cpu0[1]) - (cpu1[2] - cpu0[2])) / (cpu1[0] - cpu0[0])
    shards = len(list((local / "images").glob("shard-*.h5")))

    print(f"\n{dt.date.today()} | {cpu_name()}, {os.cpu_count()} cores | python "
          f"bench/bench_object_store.py {' '.join(sys.argv[1:])}\n")
    print(f"{n} flowers12 photos (224x224 JPEG) in {shards} shards of {a.shard_size}; "
          "EfficientNet-B0, random weights, 224 px; sources on local disk; the S3 store "
          "on moto's server on 127.0.0.1 behind a counting TCP proxy. Wall time of each "
          "script (its start-up and imports included); MB = 10^6 bytes. Other load "
          f"during the run: other processes used {other:.2f} of {os.cpu_count()} cores on "
          "average.\n")
    print("| stage | local disk s | S3 s | S3 / local | MB up | MB down | requests | "
          "per shard | " + " | ".join(KINDS[:-1]) + " |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|" + "---:|" * (len(KINDS) - 1))
    for r in rows:
        total = sum(r["kinds"].values())
        print(f"| {r['stage']} | {r['local_s']:.1f} | {r['s3_s']:.1f} | "
              f"{r['s3_s'] / r['local_s']:.2f} | {mb(r['up'])} | {mb(r['down'])} | "
              f"{total} | {total / shards:.1f} | " +
              " | ".join(str(r["kinds"].get(k, 0)) for k in KINDS[:-1]) + " |")
    t_local, t_s3 = sum(r["local_s"] for r in rows), sum(r["s3_s"] for r in rows)
    n_req = sum(sum(r["kinds"].values()) for r in rows)
    print(f"| all | {t_local:.1f} | {t_s3:.1f} | {t_s3 / t_local:.2f} | "
          f"{mb(sum(r['up'] for r in rows))} | {mb(sum(r['down'] for r in rows))} | "
          f"{n_req} | {n_req / shards:.1f} | " + " | ".join(
              str(sum(r["kinds"].get(k, 0) for r in rows)) for k in KINDS[:-1]) + " |")
    unknown = sum(r["kinds"].get("other", 0) for r in rows)
    refused = sum(r["errors"] for r in rows)
    methods = sum((r["methods"] for r in rows), collections.Counter())
    print(f"\nBy method: {', '.join(f'{m} {c}' for m, c in methods.most_common())}; other "
          f"requests: {unknown}; answered with an error status (a 404 where the store asks "
          f"whether something exists): {refused}")
    print("\nObjects read more than once by one stage (times read):")
    for r in rows:
        again = sorted(r["again"].items(),  # data files first, then the JSON records
                       key=lambda x: (x[0].endswith(".json"), -x[1], x[0]))
        if again:
            print(f"  {r['stage']}: " + ", ".join(
                f"{p.split(BUCKET + '/flowers/', 1)[-1]} {c}" for p, c in again[:6])
                + (f" and {len(again) - 6} more" if len(again) > 6 else ""))
    one = [f"{m} {p.split('?')[0].split(BUCKET + '/flowers/', 1)[-1]}"
           + (f"?{p.split('?', 1)[1]}" if "?" in p else "")
           for m, p, _ in extract_requests if "shard-00001" in p]
    print("\nThe requests of extract that name shard-00001, in order (fetch the image "
          "shard, commit the feature shard, then its marker):")
    for line in one:
        print(f"  {line}")
    print("\n" + CALLS)
    shutil.rmtree(a.out, ignore_errors=True)  # the stores, scratch and logs: figures kept
    return 0


if __name__ == "__main__":
    sys.exit(main())
