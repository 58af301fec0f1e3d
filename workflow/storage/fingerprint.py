"""Stage fingerprints: a hash of a stage's own settings and its input's fingerprint."""
from __future__ import annotations

import hashlib
import json
from typing import Any


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def fingerprint(settings: dict, parent: str | None = None) -> str:
    """16 hex digits identifying `settings` on top of the `parent` stage's fingerprint."""
    h = hashlib.sha256(canonical_json({"parent": parent, "settings": settings}).encode())
    return h.hexdigest()[:16]


def diff_settings(old: dict, new: dict) -> list[str]:
    """Human-readable lines naming every setting that differs between old and new."""
    lines = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key, "<unset>"), new.get(key, "<unset>")
        if a != b:
            lines.append(f"{key}: frozen {canonical_json(a)}, now {canonical_json(b)}")
    return lines
