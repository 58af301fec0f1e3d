"""The service's HTTP app (FastAPI) over one open `Searcher`.

Routes: `POST /search` (an uploaded image, ids, texts or vectors), `GET /image/{id}` (the
stored JPEG), `GET /items/{id}`, `GET /health`, `GET /status`, `GET /metrics`, and the page
at `/` (static files, no build step). Errors are JSON `{"detail": reason}`: 400 a query
that cannot be searched (an upload that is not an image: the reason preprocess would
record; words for a store whose model has no text tower),
404 an unknown id, 409 what the store does not hold yet (near-duplicate groups), 413 too
large, 422 a bad parameter, 503 busy; never a traceback.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from fastapi import FastAPI, Request
from fastapi import Path as FastAPIPath
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from fastapi.staticfiles import StaticFiles

from ..errors import BadQuery, ConfigError, NotBuilt, UnknownId, WorkflowError
from ..formats.duplicates import groups_summary
from ..search.modes import MODES, SearchParams
from ..search.query import TextQuery, require_text_tower
from .batching import Batcher
from .limits import BodyLimit, Busy, Gate, UploadTooLarge
from .metrics import CONTENT_TYPE_LATEST, Metrics, MetricsMiddleware
from .requests import parse_query
from .schema import ITEM, MAX_ID, RESULTS, errors, search_openapi

logger = logging.getLogger(__name__)

STATIC = Path(__file__).with_name("static")


@dataclass(frozen=True)
class Limits:
    """Request limits (the `serve` command's options)."""
    max_upload_mb: float = 20.0
    max_concurrent: int = 2
    queue_timeout: float = 10.0
    max_k: int = 1000
    max_queries: int = 256
    max_batch: int = 4  # queries per search call (micro-batching): the lowest p99 at 2M


# an image id: a 64-bit integer, 0 or more (a larger one is refused with 422, not 500)
ImageId = Annotated[int, FastAPIPath(ge=0, le=MAX_ID)]

ERRORS = ((UnknownId, 404), (BadQuery, 400), (NotBuilt, 409), (ConfigError, 422), (Busy, 503),
          (UploadTooLarge, 413), (WorkflowError, 500))


def _error(request: Request, e: Exception) -> JSONResponse:
    status = next(code for kind, code in ERRORS if isinstance(e, kind))
    return JSONResponse({"detail": str(e)}, status_code=status)


def _crash(request: Request, e: Exception) -> JSONResponse:
    logger.exception("%s %s failed", request.method, request.url.path)
    return JSONResponse({"detail": f"internal error ({type(e).__name__}); it is logged "
                                   "on the server"}, status_code=500)


def _invalid(request: Request, e: RequestValidationError) -> JSONResponse:
    reasons = "; ".join(f"{'.'.join(map(str, err['loc'][1:])) or 'request'}: {err['msg']}"
                        for err in e.errors())
    return JSONResponse({"detail": reasons}, status_code=422)


def _nlist(searcher) -> int:
    """The index's inverted lists (the largest nprobe); 1 for an index without lists."""
    import faiss
    try:
        return int(faiss.extract_index_ivf(searcher.index).nlist)
    except Exception:  # noqa: BLE001 - a flat index, or a test double
        return 1


def _takes_text(store) -> bool:
    """Whether the store's model has a text tower (queries in words)."""
    try:
        require_text_tower(store)
    except BadQuery:
        return False
    return True


def create_app(searcher, limits: Limits = Limits(), status=None,
               threads: int | None = None) -> FastAPI:
    """The app. `status()` gives the body of `GET /status` (default: built from the
    searcher); `threads`: OpenMP threads of each search (default: OpenMP's own)."""
    app = FastAPI(title="image index search", summary="Search by image, id or vector.",
                  docs_url="/docs", redoc_url=None)
    gate = Gate(limits.max_concurrent, limits.queue_timeout, threads)
    metrics = Metrics(searcher.cache.stats)
    batcher = Batcher(gate, searcher.search, limits.max_batch, metrics.batch.observe)
    app.add_middleware(BodyLimit, limit=int(limits.max_upload_mb * 2**20))
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    for kind, _ in ERRORS:
        app.add_exception_handler(kind, _error)
    app.add_exception_handler(RequestValidationError, _invalid)
    app.add_exception_handler(Exception, _crash)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    nlist = _nlist(searcher)

    @app.post("/search", openapi_extra=search_openapi(limits, searcher.d, nlist),
              responses={200: {"content": {"application/json": {"schema": RESULTS}}},
                         **errors(400, 404, 409, 413, 422, 503)})
    async def search(request: Request):
        """Search for an uploaded image (multipart, field `image`), or `{"ids": [...]}`,
        `{"texts": ["a red bicycle"]}` (a store of an image-text model) or
        `{"vectors": [[...]]}`; options k, mode, nprobe, rerank, annoy, search_k,
        exclude_self, collapse_duplicates as query parameters or JSON fields."""
        queries, opts = await parse_query(request, limits, searcher.d, nlist)
        t = time.perf_counter()
        if any(isinstance(q, (bytes, TextQuery)) for q in queries):  # its own model call
            results = await gate.run(searcher.search, queries, **opts)
        else:
            results = await batcher.run(queries, opts)
        return JSONResponse({"results": [r.to_json() for r in results],  # no re-encoding
                             "took_ms": round(1000 * (time.perf_counter() - t), 3)})

    @app.get("/image/{image_id}", response_class=Response,
             responses={200: {"content": {"image/jpeg": {"schema": {
                 "type": "string", "format": "binary"}}}}, **errors(404, 422, 503)})
    async def image(image_id: ImageId):
        """The stored (preprocessed) JPEG of an image."""
        jpeg = (await gate.run(searcher.thumbnails, [image_id])).get(image_id)
        if not jpeg:
            raise UnknownId(f"id {image_id} has no stored image (unknown, failed in "
                            "preprocessing, or removed)")
        return Response(jpeg, media_type="image/jpeg",
                        headers={"Cache-Control": "public, max-age=3600"})

    @app.get("/items/{image_id}", responses={
        200: {"content": {"application/json": {"schema": ITEM}}}, **errors(404, 422, 503)})
    async def item(image_id: ImageId):
        """Key, original size, status and reason of an image."""
        return await gate.run(searcher.item, image_id)

    _info_routes(app, searcher, metrics, status, limits)
    return app


def _info_routes(app: FastAPI, searcher, metrics: Metrics, status, limits: Limits) -> None:
    """/health, /status, /metrics and the page."""
    @app.get("/health")
    async def health():
        return {"status": "ok", "vectors": int(searcher.index.ntotal)}

    @app.get("/status")
    async def get_status():
        """Where the store stands: corpus, stages, search defaults, cache."""
        body = status() if status else {}
        return {**body, "modes": list(MODES), "default_mode": searcher.default_mode,
                "defaults": {m: dataclasses.asdict(p) for m, p in searcher.defaults.items()},
                "params": [f.name for f in dataclasses.fields(SearchParams)],
                "cache": searcher.cache.stats(), "removed": searcher.removed_count,
                "duplicate_groups": groups_summary(searcher.store),
                "vectors": int(searcher.index.ntotal), "dim": searcher.d,
                "max_upload_bytes": int(limits.max_upload_mb * 2**20),
                "text_queries": _takes_text(searcher.store),
                "text_default_mode": searcher.text_default_mode,
                "text_defaults": {m: dataclasses.asdict(p)
                                  for m, p in searcher.text_defaults.items()}}

    @app.get("/metrics", response_class=PlainTextResponse,
             responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}},
                              "description": "Prometheus metrics (text format 0.0.4)"}})
    async def get_metrics():
        return Response(metrics.text(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(STATIC / "index.html")
