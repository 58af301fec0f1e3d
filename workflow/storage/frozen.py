"""Frozen stage settings in `run.json`: what each stage was started with.

A stage's record holds its `settings` (what determines its outputs), the fingerprint of
its input stage (`parent`), the library `versions` its work depends on, and its own
`fingerprint`, an identifier that later stages record as their parent. Settings and
parent are held fixed: resuming with others is an error naming each difference. Library
versions are held fixed only while there is work to do: a complete stage is passed over
with a note when a runtime has other versions (a notebook runtime upgrades OpenCV between
sessions), and `--accept-new-versions` records the new versions and goes on.
"""
from __future__ import annotations

import logging
import time

from ..errors import FingerprintMismatch
from .fingerprint import canonical_json, diff_settings, fingerprint

logger = logging.getLogger(__name__)


class VersionMismatch(FingerprintMismatch):
    """Work still to be done was started under other library versions."""


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def frozen_versions(frozen: dict, names) -> dict:
    """The versions a record holds (records made before versions had their own place
    kept them among the settings)."""
    if "versions" in frozen:
        return dict(frozen["versions"])
    return {k: frozen["settings"][k] for k in names if k in frozen["settings"]}


def check_record(store, stage: str, frozen: dict, settings: dict, parent: str | None,
                 versions: dict) -> None:
    """Raise FingerprintMismatch naming every setting that differs from the record."""
    old = {k: v for k, v in frozen["settings"].items() if k not in versions}
    lines = diff_settings(old, settings)
    if frozen.get("parent") != parent:
        lines.append("the input stage's fingerprint changed (it was re-run with other "
                     "settings)")
    if lines:
        raise FingerprintMismatch(
            f"the {stage} stage in {store.display('run.json')} was started with other "
            "settings:\n  " + "\n  ".join(lines) +
            f"\nRe-run with the frozen settings to resume, or start over with "
            f"`python -m workflow reset --store {store.url} {stage}` "
            "(deletes this stage's outputs) or a new --store.")


def check_versions(store, stage: str, info: dict, versions: dict, pending: bool,
                   accept: bool) -> bool:
    """Compare the runtime's library versions with the frozen ones. Returns whether the
    record was changed (new versions accepted)."""
    frozen = info["stages"][stage]
    old = frozen_versions(frozen, versions)
    if old == versions:
        return False
    what = ", ".join(f"{k} {old.get(k, '<unset>')} -> {v}" for k, v in versions.items()
                     if old.get(k) != v)
    if not pending:
        logger.info("%s: complete, passed over (this runtime has %s)", stage, what)
        return False
    if not accept:
        raise VersionMismatch(
            f"the {stage} stage has work left, and its finished part was made with other "
            f"library versions ({what}). Finish it on the old versions (e.g. pip install "
            f"the versions named) so that every output is made alike, or re-run with "
            f"--accept-new-versions to go on with these (recorded in the store; outputs "
            f"made from now on may differ slightly from the earlier ones).")
    logger.warning("%s: going on with new library versions (%s); recorded in run.json",
                   stage, what)
    frozen.setdefault("accepted", []).append({"from": old, "to": versions, "at": _now()})
    frozen["versions"] = dict(versions)
    frozen["settings"] = {k: v for k, v in frozen["settings"].items() if k not in versions}
    return True


class PrecisionMismatch(FingerprintMismatch):
    """Work still to be done would be computed in another precision than the rest."""


def check_precision(store, stage: str, precision: str, pending: bool, accept: bool,
                    record: dict | None = None) -> None:
    """Hold a stage's work to one precision (recorded as `precision`, float32 where a
    record has none), as library versions are held: where work is left and this run
    computes in another, raise unless `accept`; accepted, the change and `record` (what
    the new precision needs to be loaded again) are recorded."""
    info = store.run_info()
    frozen = info["stages"].get(stage)
    if frozen is None:
        return
    old = frozen.get("precision", "f32")
    if old == precision:
        return
    if not pending:
        logger.info("%s: complete, passed over (its features are in %s; this run's would be "
                    "in %s)", stage, old, precision)
        return
    if not accept:
        raise PrecisionMismatch(
            f"the {stage} stage in {store.display('run.json')} has work left, and its "
            f"finished part was computed in {old}; this run computes in {precision}. "
            f"Re-run with --precision {old} (or auto, which keeps the store's) so that every "
            f"feature is computed alike, or with --accept-mixed-precision to go on in "
            f"{precision} (recorded in the store; the features of the two parts then differ "
            f"as much as {old} and {precision} do).")
    logger.warning("%s: going on in %s, the finished part being in %s; recorded in run.json",
                   stage, precision, old)
    frozen.setdefault("precision_accepted", []).append(
        {"from": old, "to": precision, "at": _now()})
    record_precision(store, stage, precision, record, info)


def record_precision(store, stage: str, precision: str, record: dict | None = None,
                     info: dict | None = None) -> None:
    """Record the precision a stage computes in (and what loading it needs again)."""
    info = info or store.run_info()
    frozen = info["stages"][stage]
    frozen["precision"] = precision
    frozen.pop("calibration", None)
    frozen.update(record or {})
    store.write_json("run.json", info)


def freeze(store, stage: str, settings: dict, parent: str | None = None,
           versions: dict | None = None, pending: bool = True,
           accept_new_versions: bool = False) -> str:
    """Record the stage's settings in run.json, or check them against the record.
    Returns the stage's fingerprint (the recorded one, once there is a record)."""
    versions = dict(versions or {})
    info = store.run_info()
    frozen = info["stages"].get(stage)
    if frozen is None:
        info.setdefault("created", _now())
        fp = fingerprint(settings, parent)
        info["stages"][stage] = {"fingerprint": fp, "settings": settings, "parent": parent,
                                 "versions": versions, "started": _now()}
        store.write_json("run.json", info)
        return fp
    check_record(store, stage, frozen, settings, parent, versions)
    if check_versions(store, stage, info, versions, pending, accept_new_versions):
        store.write_json("run.json", info)
    return frozen["fingerprint"]


def update_settings(store, stage: str, **changes) -> None:
    """Change recorded settings that may change without a new fingerprint (the source
    list of a corpus that grows); each change is logged in the record."""
    info = store.run_info()
    frozen = info["stages"][stage]
    if all(canonical_json(frozen["settings"].get(k)) == canonical_json(v)
           for k, v in changes.items()):
        return
    frozen.setdefault("updates", []).append({"at": _now(), **{
        k: {"from": frozen["settings"].get(k), "to": v} for k, v in changes.items()}})
    frozen["settings"].update(changes)
    store.write_json("run.json", info)
