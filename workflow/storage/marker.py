"""Commit markers: what `_done/<stage>/<unit>.json` says about a committed file. A unit is
done if and only if its marker exists and matches its file; the marker is written last."""
from __future__ import annotations

import socket
import time
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Marker:
    """What `_done/<stage>/<unit>.json` says about a committed file."""
    stage: str
    unit: str
    path: str
    size: int
    sha256: str
    fingerprint: str
    extra: dict
    committed: str | None = field(default=None, compare=False)  # UTC, as read back

    def to_json(self) -> dict:
        return {"stage": self.stage, "unit": self.unit, "path": self.path, "size": self.size,
                "sha256": self.sha256, "fingerprint": self.fingerprint,
                "committed": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "host": socket.gethostname(), **self.extra}

    @classmethod
    def from_json(cls, d: dict) -> Marker:
        known = {"stage", "unit", "path", "size", "sha256", "fingerprint", "committed", "host"}
        return cls(d["stage"], d["unit"], d["path"], int(d["size"]), d["sha256"],
                   d["fingerprint"], {k: v for k, v in d.items() if k not in known},
                   d.get("committed"))
