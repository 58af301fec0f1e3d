"""Search a finished store: `Searcher`, the query cache, query embedding.

`from workflow.search import Searcher` works; the module is loaded on first use, so that
importing `workflow.search.modes` needs no Faiss.
"""
from __future__ import annotations


def __getattr__(name: str):
    if name in ("Searcher", "QueryResult"):
        from . import searcher
        return getattr(searcher, name)
    raise AttributeError(name)
