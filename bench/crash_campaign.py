#!/usr/bin/env python
"""The long crash campaign: every stage of the workflow, in subprocesses, killed with
SIGKILL at seeded random moments (a third of them while a file is being committed) and
resumed until done, then compared with an uninterrupted run: image and feature shards,
index files and prefilter byte-identical, the same exact ground truth and recall; no
temporary or orphan file; every id exactly once; one marker per unit.

    python bench/crash_campaign.py [--kills 36] [--images 120] [--seed 0]
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from workflow.utils import cpu_name  # noqa: E402

from campaign import check_clean, compare_stores, crash_campaign  # noqa: E402
from conftest import write_corpus  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kills", type=int, default=36)
    ap.add_argument("--images", type=int, default=120)
    ap.add_argument("--shard-size", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "out" / "crash")
    a = ap.parse_args()
    shutil.rmtree(a.out, ignore_errors=True)
    write_corpus(a.out / "corpus", a.images, seed=a.seed, size=(64, 48))
    camp, ref, store = crash_campaign(a.out, a.out / "corpus", a.kills, a.seed, a.shard_size)
    compare_stores(ref, store)
    check_clean(store)
    cpu = cpu_name()
    print(f"{dt.date.today()} | {cpu}, {os.cpu_count()} cores | python "
          f"bench/crash_campaign.py {' '.join(sys.argv[1:])}\n")
    print(f"{a.images} images in shards of {a.shard_size}; every stage run as a user runs "
          "it, killed and re-run until it finished\n")
    print(camp.summary())
    print(f"\nall {camp.kills} kills survived: outputs equal the uninterrupted run's, no "
          "temporary or orphan file, every id once, one marker per unit")


if __name__ == "__main__":
    main()
