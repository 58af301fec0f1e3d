"""The query cache."""
from workflow.search.cache import QueryCache


def test_query_cache_is_bounded_lru_with_statistics():
    c = QueryCache(2)
    c.put("a", 1)
    c.put("b", 2)
    assert c.get("a") == 1
    c.put("c", 3)  # evicts b, the least recently used
    assert c.get("b") is None and c.get("c") == 3
    assert c.stats() == {"hits": 2, "misses": 1, "size": 2, "maxsize": 2, "hit_rate": 2 / 3}
    off = QueryCache(0)
    off.put("a", 1)
    assert off.get("a") is None
