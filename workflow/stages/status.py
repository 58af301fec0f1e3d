"""How far each stage has got (`status`), and `reset`."""
from __future__ import annotations

import time

from ..formats.layout import EXTRACT, PREPROCESS, STAGES, is_shard
from ..search.modes import MODES
from ..storage.lease import LEASE_DIR, read_leases
from ..storage.store import DONE_DIR, Store


def _preprocess_status(store: Store, markers: dict) -> tuple[bool, list[str]]:
    shards = {u: m for u, m in markers.items() if is_shard(u)}
    plan = markers.get("plan")
    parts = [f"{len(shards)}/{plan.extra['shards'] if plan else '?'} shards"]
    if shards:
        ok = sum(m.extra["stats"]["ok"] for m in shards.values())
        failed: dict[str, int] = {}
        for m in shards.values():
            for k, v in m.extra["stats"]["failed"].items():
                failed[k] = failed.get(k, 0) + v
        n = sum(m.extra["stats"]["n"] for m in shards.values())
        detail = ", ".join(f"{k} {v}" for k, v in sorted(failed.items()))
        parts.append(f"{n:,} of {plan.extra['n']:,} images done: {ok:,} ok" +
                     (f", failed: {detail}" if detail else ""))
    complete = "report" in markers
    if complete:
        parts.append(f"{markers['report'].extra.get('duplicates', 0):,} exact duplicates")
    return complete, parts


def _extract_status(store: Store, markers: dict) -> tuple[bool, list[str]]:
    inputs = [u for u in store.markers(PREPROCESS) if is_shard(u)]
    shards = {u: m for u, m in markers.items() if is_shard(u)}
    n = sum(m.extra["n"] for m in shards.values())
    dim = next((m.extra["dim"] for m in shards.values()), None)
    parts = [f"{len(shards)}/{len(inputs)} shards", f"{n:,} features" +
             (f" of dimension {dim}" if dim else "")]
    return bool(inputs) and len(shards) == len(inputs), parts


def _train_status(store: Store, markers: dict) -> tuple[bool, list[str]]:
    index = markers.get("index")
    if index is None:
        return False, ["training"]
    plan = index.extra.get("plan", {})
    return True, [f"{index.extra['factory']} trained on {plan.get('train_size', 0):,} of "
                  f"{plan.get('n', 0):,} vectors"]


def _add_status(store: Store, markers: dict) -> tuple[bool, list[str]]:
    inputs = [u for u in store.markers(EXTRACT) if is_shard(u)]
    parts = [u for u in markers if is_shard(u)]
    out = [f"{len(parts)}/{len(inputs)} parts"]
    index = markers.get("index")
    if index is not None:
        where = "on-disk inverted lists" if index.extra.get("on_disk") else "in memory"
        out.append(f"{index.extra['ntotal']:,} vectors merged ({where})")
    return index is not None, out


def _prefilter_status(store: Store, markers: dict) -> tuple[bool, list[str]]:
    m = markers.get("annoy")
    if m is None:
        return False, ["building"]
    return True, [f"Annoy over {m.extra['n']:,} vectors, {m.extra['dim']} dims, "
                  f"{m.extra['trees']} trees"]


def _evaluate_status(store: Store, markers: dict) -> tuple[bool, list[str]]:
    m = markers.get("report")
    if m is None:
        gt = markers.get("groundtruth")
        partial = markers.get("groundtruth-partial")
        sweeps = sorted(u[len("sweep-"):] for u in markers if u.startswith("sweep-"))
        return False, [("exact ground truth done" if gt else
                        f"exact ground truth: {len(partial.extra['done']) if partial else 0} "
                        "shards done"), f"modes measured: {', '.join(sweeps) or 'none'}"]
    out = [f"{m.extra.get('queries', 0):,} queries; tuned recall@10 and p50 latency"]
    tuned = m.extra.get("tuned", {})
    for mode in sorted(tuned, key=lambda x: MODES.index(x) if x in MODES else 99):
        out.append(f"{mode} {tuned[mode]['recall@10']:.3f} at {tuned[mode]['p50_ms']:.2f} ms")
    return True, out


STATUS = {"preprocess": _preprocess_status, "extract": _extract_status,
          "train": _train_status, "add": _add_status, "prefilter": _prefilter_status,
          "evaluate": _evaluate_status}


def stage_status(store: Store, stage: str) -> str:
    """One line saying where `stage` stands in the store."""
    if store.run_info()["stages"].get(stage) is None:
        return "not started"
    complete, parts = STATUS[stage](store, store.markers(stage))
    return ("complete" if complete else "in progress") + ": " + "; ".join(parts)


def status_report(store: Store) -> str:
    """A few lines: every stage's progress, and who holds a lease."""
    lines = [f"store: {store.url}"]
    for s in STAGES:
        lines.append(f"  {s.name:<11} {stage_status(store, s.name)}")
    for stage, lease in sorted(read_leases(store).items()):
        age = time.time() - float(lease.get("heartbeat", 0))
        lines.append(f"  lease: {stage} held by host {lease.get('host')} pid "
                     f"{lease.get('pid')}, heartbeat {age:.0f} s ago")
    return "\n".join(lines)


def reset_stage(store: Store, stage: str) -> list[str]:
    """Delete a stage's outputs, markers and frozen settings; returns what was removed."""
    info = next(s for s in STAGES if s.name == stage)
    removed = []
    for rel in (info.folders[0], f"{DONE_DIR}/{stage}", f"{LEASE_DIR}/{stage}.json"):
        if store.exists(rel):
            store.remove(rel)
            removed.append(rel)
    store.forget_stage(stage)
    return removed
