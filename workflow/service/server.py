"""`python -m workflow serve`: open the store's `Searcher` once and serve it with uvicorn
until stopped (Ctrl-C stops it cleanly)."""
from __future__ import annotations

import ipaddress
import logging
import os
import time
from dataclasses import dataclass

from threadpoolctl import threadpool_limits

from .app import Limits, create_app

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServeConfig:
    store: str
    scratch: str | None = None
    host: str = "127.0.0.1"
    port: int = 8080
    preload: bool = False
    cache_size: int = 1024
    limits: Limits = Limits()


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def open_searcher(cfg: ServeConfig):
    """The Searcher with everything a query needs loaded (the model only with
    --preload: it is loaded by the first image query otherwise)."""
    from ..search.searcher import Searcher
    t = time.monotonic()
    s = Searcher(cfg.store, cfg.scratch, cache_size=cfg.cache_size)
    s.index, s.xb, s.plan_info  # noqa: B018 - load now, not in the first request
    s.removals()
    try:
        s.annoy, s.pca  # noqa: B018
    except Exception as e:  # noqa: BLE001 - the Annoy modes need it, the others do not
        logger.warning("no prefilter (%s): the annoy modes will answer with an error", e)
    if cfg.preload:
        s.embedder  # noqa: B018
    s.prefetch()
    logger.info("opened %s: %d vectors of dimension %d in %.1f s", s.store.url,
                s.index.ntotal, s.d, time.monotonic() - t)
    return s


def threads_per_search(slots: int) -> int:
    """BLAS and OpenMP threads for each search: the cores shared by the searches that
    compute at once. Two searches on 2 cores each with 2 threads spin against each other
    (at 2M on 2 cores: 340 id queries/s against 490 with one BLAS thread each)."""
    return max(1, (os.cpu_count() or 1) // slots)


def status_of(store) -> dict:
    """`GET /status`: the corpus and each stage's line, as `status` prints them."""
    from ..formats.layout import STAGE_NAMES
    from ..formats.plan import corpus_version, planned_count
    from ..stages.status import stage_status
    return {"store": store.url, "corpus": {"version": corpus_version(store),
                                           "images": planned_count(store)},
            "stages": {s: stage_status(store, s) for s in STAGE_NAMES}}


def serve(cfg: ServeConfig) -> None:
    import uvicorn
    if not is_loopback(cfg.host):
        logger.warning("serving on %s: anyone who can reach this address can search the "
                       "index and read its images; the service has no authentication",
                       cfg.host)
    searcher = open_searcher(cfg)
    threads = threads_per_search(cfg.limits.max_concurrent)
    blas = threadpool_limits(threads, user_api="blas")  # noqa: F841 - while serving
    app = create_app(searcher, cfg.limits, lambda: status_of(searcher.store), threads)
    logger.warning("serving %s on http://%s:%d/ (API docs at /docs); Ctrl-C stops",
                   searcher.store.url, cfg.host, cfg.port)
    uvicorn.run(app, host=cfg.host, port=cfg.port, log_level="warning",
                timeout_graceful_shutdown=5)
