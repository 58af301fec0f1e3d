"""The service's OpenAPI description, as the service checks requests: the `POST /search`
body and options with their bounds (the index's lists, the corpus's ids, the limits),
and every answer each route gives, errors included (`{"detail": reason}`). A client
generated from `/openapi.json`, or a fuzzer such as Schemathesis, sees the real
contract."""
from __future__ import annotations

from ..search.modes import MAX_CANDIDATES, MAX_SEARCH_K, MODES

MAX_ID = 2**63 - 1  # ids and integer options are 64-bit
MAX_TEXT = 1000  # characters of one query in words

ERROR = {"type": "object", "required": ["detail"],
         "properties": {"detail": {"type": "string", "description": "the reason"}}}
ANSWERS = {
    400: "the query cannot be searched (an upload that is not an image: the reason "
         "preprocess would record; words for a store whose model has no text tower: the "
         "models that have one)",
    404: "an id that is not in the corpus (or has no stored image)",
    409: "the store does not hold it yet (near-duplicate groups before the duplicates "
         "stage ran)",
    413: "the upload is larger than the limit (--max-upload-mb)",
    422: "a parameter or body the service does not take, with the reason",
    503: "busy: every search slot stayed taken for the queue timeout; try again",
}
RESULTS = {
    "type": "object", "required": ["results", "took_ms"],
    "properties": {
        "took_ms": {"type": "number"},
        "results": {"type": "array", "items": {
            "type": "object", "required": ["query", "results"],
            "properties": {
                "query": {"type": "string"},
                "results": {"type": "array", "items": {
                    "type": "object", "required": ["id", "key", "score"],
                    "properties": {"id": {"type": "integer"},
                                   "key": {"type": ["string", "null"]},
                                   "score": {"type": "number"}}}}}}}}}
ITEM = {"type": "object", "required": ["id", "key", "status", "removed"],
        "properties": {"id": {"type": "integer"}, "key": {"type": "string"},
                       "status": {"type": "string"}, "removed": {"type": "boolean"}}}


def errors(*codes: int) -> dict:
    """FastAPI `responses` for these error statuses."""
    return {code: {"description": ANSWERS[code],
                   "content": {"application/json": {"schema": ERROR}}} for code in codes}


def options(limits, nlist: int) -> dict[str, dict]:
    """The search options' schemas, bounded as `requests.options` and the search check
    them."""
    return {
        "k": {"type": "integer", "minimum": 1, "maximum": limits.max_k,
              "description": "results per query"},
        "mode": {"type": "string", "enum": list(MODES),
                 "description": "search mode (default: the one evaluation tuned)"},
        "nprobe": {"type": "integer", "minimum": 1, "maximum": nlist,
                   "description": "inverted lists visited (at most the index's lists)"},
        "rerank": {"type": "integer", "minimum": 1, "maximum": MAX_CANDIDATES,
                   "description": "IVF-PQ candidates re-scored exactly"},
        "annoy": {"type": "integer", "minimum": 0, "maximum": MAX_CANDIDATES,
                  "description": "Annoy candidates re-scored exactly"},
        "search_k": {"type": "integer", "minimum": -1, "maximum": MAX_SEARCH_K,
                     "description": "Annoy nodes inspected (-1: Annoy's default)"},
        "exclude_self": {"type": "boolean", "description": "leave an id query out of its "
                                                           "own results"},
        "collapse_duplicates": {"type": "boolean", "description": "at most one image of "
                                                                  "each near-duplicate group"},
    }


def search_openapi(limits, d: int, nlist: int) -> dict:
    """`openapi_extra` of `POST /search`: its query parameters and its body (JSON ids,
    texts or vectors, or a multipart upload), each with the options."""
    opts = options(limits, nlist)
    many = {"minItems": 1, "maxItems": limits.max_queries}
    ids = {"type": "object", "required": ["ids"], "additionalProperties": False,
           "properties": {"ids": {"type": "array", **many, "items": {
               "type": "integer", "minimum": 0, "maximum": MAX_ID}}, **opts}}
    texts = {"type": "object", "required": ["texts"], "additionalProperties": False,
             "description": "queries in words (a store extracted with an image-text model)",
             "properties": {"texts": {"type": "array", **many, "items": {
                 "type": "string", "minLength": 1, "maxLength": MAX_TEXT, "pattern": r"\S",
                 "description": "words, not only blanks"}}, **opts}}
    vectors = {"type": "object", "required": ["vectors"], "additionalProperties": False,
               "properties": {"vectors": {"type": "array", **many, "items": {
                   "type": "array", "minItems": d, "maxItems": d,
                   "items": {"type": "number"}}}, **opts}}
    upload = {"type": "object", "required": ["image"], "additionalProperties": False,
              "properties": {"image": {"type": "string", "format": "binary"}, **opts}}
    return {
        "parameters": [{"name": name, "in": "query", "required": False, "schema": schema}
                       for name, schema in opts.items()],
        "requestBody": {"required": True, "content": {
            "application/json": {"schema": {"oneOf": [ids, texts, vectors]}},
            "multipart/form-data": {"schema": upload}}},
    }
