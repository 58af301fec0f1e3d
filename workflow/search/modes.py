"""Search modes and their parameters: what `Searcher`, the CLI and evaluation share.
Importing this module needs no Faiss."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields, replace

from ..errors import ConfigError

# Results per query when recall@10, queries/s and latency are measured (evaluate).
K_MEASURED = 10

MODES = ("exact", "ivfpq", "ivfpq+rerank", "annoy+rerank", "hierarchical")

# the largest values a search takes: candidates re-scored per query, Annoy nodes
# inspected, lists probed where the index is not known (Faiss and Annoy take C ints)
MAX_CANDIDATES = 100_000
MAX_SEARCH_K = 100_000_000
MAX_NPROBE = 1 << 20


@dataclass(frozen=True)
class SearchParams:
    """Knobs of the approximate modes; each mode reads only its own (`MODE_PARAMS`)."""
    nprobe: int = 16          # inverted lists visited by IVF-PQ
    rerank: int = 200         # IVF-PQ candidates re-scored exactly
    annoy: int = 100          # Annoy candidates re-scored exactly
    search_k: int = -1        # Annoy nodes inspected (-1: Annoy's default, trees x annoy)

    def validate(self, nlist: int | None = None) -> SearchParams:
        """Self, or ConfigError naming each parameter out of its range; `nlist` (the
        index's inverted lists) bounds nprobe."""
        top = {"nprobe": nlist or MAX_NPROBE, "rerank": MAX_CANDIDATES,
               "annoy": MAX_CANDIDATES, "search_k": MAX_SEARCH_K}
        low = {"nprobe": 1, "rerank": 1, "annoy": 0, "search_k": -1}
        bad = [f"{f.name}={getattr(self, f.name)} (from {low[f.name]} to {top[f.name]})"
               for f in fields(self)
               if not (isinstance(getattr(self, f.name), int)
                       and low[f.name] <= getattr(self, f.name) <= top[f.name])]
        if bad:
            raise ConfigError(f"invalid search parameters: {', '.join(bad)}")
        return self

    def for_mode(self, mode: str) -> dict:
        return {name: getattr(self, name) for name in MODE_PARAMS[mode]}


MODE_PARAMS = {
    "exact": (),
    "ivfpq": ("nprobe",),
    "ivfpq+rerank": ("nprobe", "rerank"),
    "annoy+rerank": ("annoy", "search_k"),
    "hierarchical": ("nprobe", "rerank", "annoy", "search_k"),
}


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ConfigError(f"unknown search mode {mode!r}; choose one of {', '.join(MODES)}")
    return mode


def mode_params(base: SearchParams, mode: str, given: dict,
                nlist: Callable[[], int]) -> SearchParams:
    """`base` (the mode's defaults) with the `given` overrides, checked: nprobe against
    the index's lists (`nlist()`, asked only for the modes that probe; a default above
    them on a small index means all of them), annoy >= 1 where Annoy alone gives the
    candidates."""
    unknown = set(given) - {f.name for f in fields(SearchParams)}
    if unknown:
        raise ConfigError(f"unknown search parameter(s): {', '.join(sorted(unknown))}")
    if mode == "annoy+rerank" and given.get("annoy", 1) < 1:
        raise ConfigError("annoy must be at least 1 in annoy+rerank mode (0 leaves Annoy "
                          "out: only hierarchical takes it)")
    if "nprobe" not in MODE_PARAMS[mode]:
        return replace(base, **given).validate()
    lists = nlist()
    return replace(replace(base, nprobe=min(base.nprobe, lists)), **given).validate(lists)
