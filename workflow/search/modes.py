"""Search modes and their parameters: what `Searcher`, the CLI and evaluation share.
Importing this module needs no Faiss."""
from __future__ import annotations

from dataclasses import dataclass, fields

from ..errors import ConfigError

# Results per query when recall@10, queries/s and latency are measured (evaluate).
K_MEASURED = 10

MODES = ("exact", "ivfpq", "ivfpq+rerank", "annoy+rerank", "hierarchical")

@dataclass(frozen=True)
class SearchParams:
    """Knobs of the approximate modes; each mode reads only its own (`MODE_PARAMS`)."""
    nprobe: int = 16          # inverted lists visited by IVF-PQ
    rerank: int = 200         # IVF-PQ candidates re-scored exactly
    annoy: int = 100          # Annoy candidates re-scored exactly
    search_k: int = -1        # Annoy nodes inspected (-1: Annoy's default, trees x annoy)

    def validate(self) -> SearchParams:
        bad = [f"{f.name}={getattr(self, f.name)}" for f in fields(self)
               if f.name != "search_k" and getattr(self, f.name) < (0 if f.name == "annoy"
                                                                    else 1)]
        if bad or self.search_k < -1:
            raise ConfigError(f"invalid search parameters: {', '.join(bad) or 'search_k'} "
                              "(nprobe and rerank >= 1, annoy >= 0, search_k >= -1)")
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
