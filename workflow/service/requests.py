"""Reading a `POST /search` request: the queries (an uploaded image, ids, texts or
vectors) and the search options, each checked, with a reason for every refusal. Nothing from a
request is used as a file-system path: an upload is searched from its bytes."""
from __future__ import annotations

import json
import re

import numpy as np
from fastapi import Request

from ..errors import BadQuery, ConfigError, UnknownId
from ..search.modes import MODES
from ..search.query import TextQuery
from .limits import UploadTooLarge
from .schema import MAX_ID, MAX_TEXT
from .schema import options as option_schemas

INT_OPTIONS = ("k", "nprobe", "rerank", "annoy", "search_k")
INTEGER = re.compile(r"[+-]?\d+")
NOT_BLANK = re.compile(r"\S")  # a text query must match it (the schema's pattern)
FLAGS = ("exclude_self", "collapse_duplicates")


async def parse_query(request: Request, limits, d: int, nlist: int) -> tuple[list, dict]:
    """(queries for `Searcher.search`, its keyword options). Options may come as query
    parameters and in the body (which wins); each is checked where it is given."""
    params = dict(request.query_params)
    options(params, limits, nlist)
    ctype = request.headers.get("content-type", "")
    if ctype.startswith("multipart/form-data"):
        queries, fields = await _upload(request)
        params.update(fields)
    else:
        queries, fields = await _json_body(request, d)
        params.update(fields)
    if len(queries) > limits.max_queries:
        raise ConfigError(f"at most {limits.max_queries} queries per request")
    return queries, options(params, limits, nlist)


async def _upload(request: Request) -> tuple[list, dict]:
    try:
        form = await request.form(max_files=1, max_fields=20)
    except Exception as e:  # noqa: BLE001 - any malformed form is the client's error
        if isinstance(e, UploadTooLarge):
            raise
        raise BadQuery(f"the upload is not a valid multipart form ({e})") from None
    image = form.get("image")
    if image is None or isinstance(image, str):
        raise ConfigError("the form has no file in the field 'image'")
    data = await image.read()
    fields = {k: v for k, v in form.items() if k != "image" and isinstance(v, str)}
    return [data], fields


async def _json_body(request: Request, d: int) -> tuple[list, dict]:
    raw = await request.body()
    try:
        body = json.loads(raw or b"{}")
    except ValueError as e:
        raise ConfigError(f"the body is neither a multipart upload nor JSON ({e})") from None
    if not isinstance(body, dict):
        raise ConfigError('the JSON body must be an object: {"ids": [...]}, {"texts": '
                          '[...]} or {"vectors": [[...]]}')
    given = {name: body.pop(name) for name in ("ids", "texts", "vectors") if name in body}
    if len(given) != 1:
        raise ConfigError('give exactly one of "ids", "texts", "vectors" (or upload an '
                          '"image")')
    if "ids" in given:
        ids = given["ids"]
        if not isinstance(ids, list) or not ids or not all(
                isinstance(i, int) and not isinstance(i, bool) for i in ids):
            raise ConfigError('"ids" must be a non-empty list of integers')
        if outside := [i for i in ids if not 0 <= i <= MAX_ID]:
            raise UnknownId(f"id {outside[0]} is not in the corpus")
        return list(ids), _typed(body)
    if "texts" in given:
        return _texts(given["texts"]), _typed(body)
    vectors = given["vectors"]
    if not isinstance(vectors, list) or not all(  # numbers: not true, not "1.5"
            isinstance(row, list) and all(type(v) in (int, float) for v in row)
            for row in vectors):
        raise ConfigError('"vectors" must be a list of lists of numbers')
    try:
        x = np.asarray(vectors, dtype=np.float64)
    except (TypeError, ValueError, OverflowError):
        raise ConfigError('"vectors" must be a list of lists of numbers') from None
    if x.ndim != 2 or x.shape[1] != d or not len(x) or not np.isfinite(x).all():
        raise ConfigError(f'"vectors" must be [n, {d}] finite numbers, not {list(x.shape)}')
    # only the direction counts (queries are L2-normalised): scaled into float32's range
    scale = np.abs(x).max(axis=1, keepdims=True)
    return [(x / np.where(scale > 0, scale, 1.0)).astype(np.float32)], _typed(body)


def _texts(texts) -> list[TextQuery]:
    """Queries in words: a non-empty list of strings, each with a character that is not
    blank and at most MAX_TEXT characters."""
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
        raise ConfigError('"texts" must be a non-empty list of strings')
    for i, t in enumerate(texts):
        if not NOT_BLANK.search(t):
            raise ConfigError(f'"texts"[{i}] is empty: a query in words needs a word')
        if len(t) > MAX_TEXT:
            raise ConfigError(f'"texts"[{i}] has {len(t)} characters: at most {MAX_TEXT}')
        try:
            t.encode("utf-8")
        except UnicodeEncodeError:
            raise ConfigError(f'"texts"[{i}] is not valid Unicode (a lone surrogate)') from None
    return [TextQuery(t) for t in texts]


def _typed(body: dict) -> dict:
    """The options of a JSON body, which must be JSON's own types: a flag true or false
    (not "true"), a number a number (not "5"), the mode a string."""
    for name in FLAGS:
        if name in body and not isinstance(body[name], bool):
            raise ConfigError(f"{name} must be true or false, not {body[name]!r}")
    for name in INT_OPTIONS:
        if name in body and isinstance(body[name], str):
            raise ConfigError(f"{name} must be a JSON integer, not the string {body[name]!r}")
    if "mode" in body and not isinstance(body["mode"], str):
        raise ConfigError(f"mode must be one of {', '.join(MODES)}")
    return body


def options(params: dict, limits, nlist: int) -> dict:
    """The search options, checked against the bounds the OpenAPI schema states: k,
    mode, nprobe, rerank, annoy, search_k, exclude_self, collapse_duplicates."""
    unknown = set(params) - {*INT_OPTIONS, "mode", *FLAGS}
    if unknown:
        raise ConfigError(f"unknown option(s): {', '.join(map(repr, sorted(unknown)))}")
    out: dict = {name: _integer(name, params[name]) for name in INT_OPTIONS if name in params}
    schema = option_schemas(limits, nlist)
    for name, value in out.items():
        low, high = schema[name]["minimum"], schema[name]["maximum"]
        if not low <= value <= high:
            raise ConfigError(f"{name} must be between {low} and {high}, not {value}")
    if "mode" in params and params["mode"] not in MODES:
        raise ConfigError(f"mode must be one of {', '.join(MODES)}")
    out["mode"] = params.get("mode")
    for name in FLAGS:
        flag = params.get(name, False)
        if isinstance(flag, str) and flag in ("true", "false"):  # as OpenAPI writes them
            flag = flag == "true"
        if not isinstance(flag, bool):  # not [1], 2 or "yes"
            raise ConfigError(f"{name} must be true or false, not {flag!r}")
        out[name] = flag
    return out


def _integer(name: str, value) -> int:
    """An integer option: a JSON integer, or a query parameter of decimal digits (not
    2.7, true or [1]); huge values are refused here, the search bounds the rest."""
    if isinstance(value, str) and INTEGER.fullmatch(value.strip()):
        digits = value.strip().lstrip("+-")
        value = int(value) if len(digits) <= 19 else MAX_ID + 1  # not converted: too long
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name} must be an integer, not {value!r}")
    if abs(value) > MAX_ID:
        raise ConfigError(f"{name}={value} is out of range")
    return value
