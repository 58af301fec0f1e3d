"""Shard executors: where a stage runs its per-shard task. `local`: one shard after another
in this process; `process`: a pool of spawned processes; `spark`: one Spark job of one
task per shard (`workflow.execution.spark`). All yield (unit, result) as shards finish."""
from __future__ import annotations

import concurrent.futures as cf
import multiprocessing as mp
import time
from collections.abc import Callable, Iterator
from typing import Any

from ..errors import ConfigError, DeadlineReached
from .executors import bounded_map

SHARD_EXECUTORS = ("local", "process", "spark")


def map_shards(name: str, task: Callable, units: list, workers: int = 1,
               spark_master: str | None = None, stage: str = "",
               deadline: float | None = None,
               reachable: dict[str, str] | None = None,
               needs: tuple[str, ...] = (),
               spark_conf: tuple[str, ...] = ()) -> Iterator[tuple[Any, Any]]:
    """(unit, task(unit)) for each shard as it finishes, run by the shard executor `name`.

    With a deadline (time.monotonic()), no shard starts after it (those in flight finish)
    and DeadlineReached is raised. On Spark, every executor is checked first: it sees
    `reachable` (name -> path or URL) and its Python imports the modules `needs` and the
    task's own module (the package is shipped to executors that lack it); `spark_conf`
    (KEY=VALUE) configures a session it creates."""
    if name not in SHARD_EXECUTORS:
        raise ConfigError(f"unknown executor {name!r}; choose one of "
                          f"{', '.join(SHARD_EXECUTORS)}")
    if name == "spark":
        from .spark import SparkShards  # PySpark is optional: imported only here
        with SparkShards(spark_master, stage, spark_conf) as sp:
            sp.prepare(needs, type(task).__module__, reachable)
            yield from _until(sp.map(task, units), deadline)
        return
    if name == "local":
        for unit in units:
            if deadline is not None and time.monotonic() > deadline:
                raise DeadlineReached()
            yield unit, task(unit)
        return
    with cf.ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
        yield from _until(bounded_map(pool, task, units, workers), deadline)


def _until(results: Iterator, deadline: float | None) -> Iterator:
    try:
        for r in results:
            yield r
            if deadline is not None and time.monotonic() > deadline:
                raise DeadlineReached()
    finally:
        results.close()
