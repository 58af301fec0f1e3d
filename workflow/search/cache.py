"""The query cache: a bounded LRU of search results, keyed by query and parameters."""
from __future__ import annotations

from collections import OrderedDict


class QueryCache:
    """A bounded LRU cache of search results, keyed by query and parameters."""

    def __init__(self, maxsize: int = 1024):
        self.maxsize = maxsize
        self.data: OrderedDict = OrderedDict()
        self.hits = self.misses = 0

    def get(self, key):
        if key in self.data:
            self.data.move_to_end(key)
            self.hits += 1
            return self.data[key]
        self.misses += 1
        return None

    def put(self, key, value) -> None:
        if self.maxsize <= 0:
            return
        self.data[key] = value
        self.data.move_to_end(key)
        while len(self.data) > self.maxsize:
            self.data.popitem(last=False)

    def stats(self) -> dict:
        total = self.hits + self.misses
        return {"hits": self.hits, "misses": self.misses, "size": len(self.data),
                "maxsize": self.maxsize, "hit_rate": self.hits / total if total else 0.0}
