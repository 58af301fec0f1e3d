"""How far each stage has got (`status`), and `reset`.

Read-only, from the commit markers alone (no heavy library is imported): per stage its
progress, when it last made progress and, while it is in progress, its rate over its
latest burst of commits and an ETA; the corpus version and the removed and missing
counts; and the one command to run next."""
from __future__ import annotations

import calendar
import shlex
import socket
import time
from dataclasses import dataclass
from typing import NamedTuple

from ..formats.evaluation import LEGACY_CORPUS, corpus_id
from ..formats.layout import (
    ADD,
    DUPLICATES,
    EVALUATE,
    EXTRACT,
    PREFILTER,
    PREPROCESS,
    STAGE_NAMES,
    TRAIN,
    TRAINED,
    is_shard,
)
from ..formats.plan import plan_chain
from ..formats.prefilter import chain_of
from ..formats.removed import removal_markers
from ..search.modes import MODES
from ..storage.lease import pid_alive, read_leases
from ..storage.marker import Marker
from ..storage.store import Store
from .base import reset_stage  # noqa: F401 - `reset` is offered beside `status`

BURST_GAP = 30 * 60     # s between two commits that ends a burst of work
LEASE_STALE = 300.0     # s without a heartbeat after which a lease is taken over
TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
OPTIONAL = (DUPLICATES,)  # not needed to search: "next" names it once it was started
SCRIPTS = {PREPROCESS: "01_preprocess.py", EXTRACT: "02_extract.py", TRAIN: "03_train.py",
           ADD: "04_add.py", PREFILTER: "05_prefilter.py", EVALUATE: "07_evaluate.py",
           DUPLICATES: "08_duplicates.py"}


class Line(NamedTuple):
    """A stage's state ("complete", "in progress", ...), what it holds, whether nothing is
    left to run, and the arguments its next run needs beyond --store."""
    state: str
    parts: list[str]
    done: bool
    args: str = ""

    def text(self) -> str:
        return self.state + (": " + "; ".join(self.parts) if self.parts else "")


@dataclass
class View:
    """What status reads of a store, once: the stages frozen in run.json, every stage's
    markers and the removal list's."""
    store: Store
    frozen: dict[str, dict]
    markers: dict[str, dict[str, Marker]]
    removed: list[Marker]
    now: float

    @classmethod
    def read(cls, store: Store) -> View:
        return cls(store, store.run_info()["stages"], {s: store.markers(s) for s in STAGE_NAMES},
                   removal_markers(store), time.time())

    def shards(self, stage: str) -> dict[str, Marker]:
        return dict(sorted((u, m) for u, m in self.markers[stage].items() if is_shard(u)))

    @property
    def plan(self) -> list[Marker]:
        """The plan segments' markers, in order (none before the sources are listed)."""
        return plan_chain(self.markers[PREPROCESS])

    @property
    def version(self) -> int:
        return len(self.plan)

    @property
    def planned(self) -> int:
        return sum(int(m.extra["n"]) for m in self.plan)

    @property
    def planned_shards(self) -> int:
        return sum(int(m.extra["shards"]) for m in self.plan)

    @property
    def corpus_id(self) -> str:
        return corpus_id(self.version, self.removed[-1].extra["version"] if self.removed else 0)


# ------------------------------------------------------------------ times and rates

def _when(m: Marker) -> float | None:
    try:
        return float(calendar.timegm(time.strptime(m.committed or "", TIME_FORMAT)))
    except ValueError:
        return None


def _ago(t: float, now: float) -> str:
    age = max(0.0, now - t)
    if age < 90:
        return f"{age:.0f} s ago"
    if age < 90 * 60:
        return f"{age / 60:.0f} min ago"
    if age < 24 * 3600:
        return f"{age / 3600:.0f} h ago"
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(t))


def _duration(s: float) -> str:
    if s < 90:
        return f"{max(s, 1):.0f} s"
    if s < 90 * 60:
        return f"{s / 60:.0f} min"
    if s < 48 * 3600:
        return f"{s / 3600:.1f} h"
    return f"{s / 86400:.1f} days"


def burst_rate(items: list[tuple[float, int]]) -> float | None:
    """Items per second over the latest burst of commits ((time, items) per unit; a gap
    of over BURST_GAP ends a burst): the items committed after the burst's first commit
    over the time since it. None with fewer than two commits in the burst."""
    items = sorted(items)
    start = len(items) - 1
    while start > 0 and items[start][0] - items[start - 1][0] <= BURST_GAP:
        start -= 1
    burst = items[start:]
    if len(burst) < 2 or burst[-1][0] <= burst[0][0]:
        return None
    return sum(n for _, n in burst[1:]) / (burst[-1][0] - burst[0][0])


def _speed(rate: float, unit: str) -> str:
    if rate < 1:
        return f"{rate * 60:.1f} {unit}/min"
    return f"{rate:,.0f} {unit}/s" if rate >= 10 else f"{rate:.1f} {unit}/s"


def _progress(v: View, stage: str, line: Line, items=None, remaining: int = 0,
              unit: str = "img") -> Line:
    """`line` with the rate and ETA (in progress, where `items(marker)` counts what a
    shard marker committed) and the age of the stage's newest marker."""
    parts = list(line.parts)
    if items is not None and not line.done and remaining > 0:
        rate = burst_rate([(t, items(m)) for m in v.shards(stage).values()
                           if (t := _when(m)) is not None])
        if rate:
            parts.append(f"{_speed(rate, unit)}, ETA {_duration(remaining / rate)}")
    times = [t for m in v.markers[stage].values() if (t := _when(m)) is not None]
    if times:
        parts.append(f"last progress {_ago(max(times), v.now)}")
    return line._replace(parts=parts)


# ------------------------------------------------------------------ the stages

def _preprocess_status(v: View) -> Line:
    shards = v.shards(PREPROCESS)
    if not v.plan:
        return _progress(v, PREPROCESS, Line("in progress", ["listing the sources"], False))
    parts = [f"{len(shards)}/{v.planned_shards} shards"]
    stats = [m.extra["stats"] for m in shards.values()]
    done = sum(s["n"] for s in stats)
    if stats:
        failed: dict[str, int] = {}
        for s in stats:
            for k, n in s["failed"].items():
                failed[k] = failed.get(k, 0) + n
        detail = ", ".join(f"{k} {n}" for k, n in sorted(failed.items()))
        parts.append(f"{done:,} of {v.planned:,} images done: {sum(s['ok'] for s in stats):,} "
                     "ok" + (f", failed: {detail}" if detail else ""))
    report = v.markers[PREPROCESS].get("report")
    complete = report is not None and report.extra.get("version", 1) == v.version
    if complete:
        parts.append(f"{report.extra.get('duplicates', 0):,} exact duplicates")
    line = Line("complete" if complete else "in progress", parts, complete)
    return _progress(v, PREPROCESS, line, lambda m: m.extra["stats"]["n"], v.planned - done)


def _extract_status(v: View) -> Line:
    images, feats = v.shards(PREPROCESS), v.shards(EXTRACT)
    total = max(v.planned_shards, len(images))
    n = sum(m.extra["n"] for m in feats.values())
    dim = next((m.extra["dim"] for m in feats.values()), None)
    parts = [f"{len(feats)}/{total} shards",
             f"{n:,} features" + (f" of dimension {dim}" if dim else "")]
    complete = total > 0 and len(feats) >= total and not set(images) - set(feats)
    remaining = sum(m.extra["stats"]["ok"] for u, m in images.items() if u not in feats)
    line = Line("complete" if complete else "in progress", parts, complete)
    return _progress(v, EXTRACT, line, lambda m: m.extra["n"], remaining)


def _train_status(v: View) -> Line:
    index, fit = v.markers[TRAIN].get("index"), v.markers[TRAIN].get("fit")
    if index is None:
        return _progress(v, TRAIN, Line("in progress", ["training"], False))
    plan = index.extra.get("plan", {})
    parts = [f"{index.extra['factory']} trained on {plan.get('train_size', 0):,} of "
             f"{plan.get('n', 0):,} vectors"]
    checked = fit is not None and fit.extra.get("version") == v.version
    added = sum(m.extra["n"] for m in v.shards(EXTRACT).values()) - plan.get("n", 0)
    line = Line("complete", parts, True)
    if checked and fit.extra.get("retrain"):
        parts.append(f"the fit check advises retraining (see {TRAINED}/fit.json)")
        line = Line("complete", parts, True, "--retrain")  # advice: it is the user's call
    elif checked:
        parts.append("the fit check found that it still fits")
    elif added > 0:
        parts.append(f"its fit to the {added:,} vectors added since is not checked yet")
        line = Line("complete", parts, False)
    return _progress(v, TRAIN, line)


def _add_status(v: View) -> Line:
    feats, parts = v.shards(EXTRACT), v.shards(ADD)
    index, rerank = v.markers[ADD].get("index"), v.markers[ADD].get("rerank")
    total, shards = sum(m.extra["n"] for m in feats.values()), max(v.planned_shards, len(feats))
    merged = index is not None and index.extra["ntotal"] == total and \
        index.extra.get("parts", len(feats)) == len(feats)
    out = [f"{len(parts)}/{shards} parts"]
    if index is not None:
        where = "on-disk inverted lists" if index.extra.get("on_disk") else "in memory"
        out.append(f"{index.extra['ntotal']:,} vectors merged ({where})" +
                   ("" if merged else f", of {total:,}"))
    complete = merged and len(feats) == shards > 0 and not set(feats) - set(parts) and \
        rerank is not None and rerank.extra.get("rows") == v.planned
    remaining = sum(m.extra["n"] for u, m in feats.items() if u not in parts)
    line = Line("complete" if complete else "in progress", out, complete)
    return _progress(v, ADD, line, lambda m: m.extra.get("n", 0), remaining, "vec")


def _prefilter_status(v: View) -> Line:
    feats = v.shards(EXTRACT)
    chain, covered = chain_of(v.markers[PREFILTER], [m.extra["n"] for m in feats.values()])
    if not chain:
        return _progress(v, PREFILTER, Line("in progress", ["building"], False))
    base, shards = chain[0].extra, max(v.planned_shards, len(feats))
    parts = [f"Annoy over {sum(m.extra['n'] for m in chain):,} vectors, {base['dim']} dims, "
             f"{base['trees']} trees" + (f", {len(chain)} segments" if len(chain) > 1 else "")]
    complete = covered == len(feats) == shards
    if not complete:
        parts.append(f"covers {covered}/{shards} feature shards")
    return _progress(v, PREFILTER, Line("complete" if complete else "in progress", parts,
                                        complete))


def _evaluated_corpus(report: Marker, gt: Marker | None) -> str | None:
    """The corpus id ("<plan version>.<removal version>") the report is of; None where
    it predates the ground truth in force (it is of an earlier corpus)."""
    if "corpus" in report.extra:
        return str(report.extra["corpus"])
    if gt is None:
        return "1.0"
    t_report, t_gt = _when(report), _when(gt)
    if t_report is not None and t_gt is not None and t_report < t_gt:
        return None
    return str(gt.extra.get("corpus", LEGACY_CORPUS))


def _evaluate_status(v: View) -> Line:
    markers = v.markers[EVALUATE]
    m = markers.get("report")
    if m is None:
        gt, partial = markers.get("groundtruth"), markers.get("groundtruth-partial")
        sweeps = sorted(u[len("sweep-"):] for u in markers if u.startswith("sweep-"))
        parts = [("exact ground truth done" if gt else f"exact ground truth: "
                  f"{len(partial.extra['done']) if partial else 0} shards done"),
                 f"modes measured: {', '.join(sweeps) or 'none'}"]
        return _progress(v, EVALUATE, Line("in progress", parts, False))
    out = [f"{m.extra.get('queries', 0):,} queries; tuned recall@10 and p50 latency"]
    tuned = m.extra.get("tuned", {})
    for mode in sorted(tuned, key=lambda x: MODES.index(x) if x in MODES else 99):
        p50 = tuned[mode]["p50_ms"]
        at = "not timed (out of the running)" if p50 is None else f"at {p50:.2f} ms"
        out.append(f"{mode} {tuned[mode]['recall@10']:.3f} {at}")
    corpus = _evaluated_corpus(m, markers.get("groundtruth"))
    if corpus == v.corpus_id:
        return _progress(v, EVALUATE, Line("complete", out, True))
    old = None if corpus is None else corpus.split(".")[0]
    if old == str(v.version):
        state = "complete before the latest removals or restores (re-run evaluate)"
    else:
        state = (f"complete for {'an earlier corpus' if old is None else f'corpus version {old}'}"
                 f" (the corpus is now version {v.version}: re-run evaluate)")
    return _progress(v, EVALUATE, Line(state, out, False))


def _duplicates_status(v: View) -> Line:
    markers = v.markers[DUPLICATES]
    shards = sum(1 for u in v.markers[EXTRACT] if is_shard(u))
    done = sum(1 for u in markers if is_shard(u))
    m = markers.get("groups")
    if done < shards or m is None:
        line = Line("in progress", [f"neighbours of {done}/{shards} shards"], False)
        return _progress(v, DUPLICATES, line)
    parts = [f"{m.extra['groups']:,} groups holding {m.extra['images']:,} images at "
             f"threshold {m.extra['threshold']:g}"]
    if m.extra.get("review_only"):
        parts.append("for review only, no remove-list: the model cannot tell near-copies "
                     "from unrelated images here (see duplicates/groups.json)")
    if m.extra.get("corpus") != v.corpus_id:
        return Line("complete for an earlier corpus or removal list (re-run duplicates)",
                    parts, False)
    return _progress(v, DUPLICATES, Line("complete", parts, True))


STATUS = {PREPROCESS: _preprocess_status, EXTRACT: _extract_status, TRAIN: _train_status,
          ADD: _add_status, PREFILTER: _prefilter_status, EVALUATE: _evaluate_status,
          DUPLICATES: _duplicates_status}


# ------------------------------------------------------------------ the report

def _line(v: View, stage: str) -> Line:
    if stage not in v.frozen:
        return Line("not started", [], False, "--source FOLDER" if stage == PREPROCESS else "")
    return STATUS[stage](v)


def stage_status(store: Store, stage: str) -> str:
    """One line saying where `stage` stands in the store."""
    return _line(View.read(store), stage).text()


def _corpus(v: View) -> str:
    if not v.plan:
        return "corpus: no plan yet (the sources are not listed)"
    missing = v.markers[PREPROCESS].get("missing")
    return (f"corpus: version {v.version}, {v.planned:,} images planned; "
            f"{v.removed[-1].extra.get('count', 0) if v.removed else 0:,} removed; "
            f"{missing.extra.get('count', 0) if missing else 0:,} missing")


def _live(lease: dict, now: float) -> bool:
    """Whether a lease is held by a run that still runs (else the next run takes it)."""
    if now - float(lease.get("heartbeat", 0)) > LEASE_STALE:
        return False
    return lease.get("host") != socket.gethostname() or \
        pid_alive(int(lease.get("pid", -1)), lease.get("started"))


def next_command(v: View, lines: dict[str, Line], leases: dict[str, dict]) -> str:
    """The one thing to do next: wait for a live run, run the first stage not complete
    (its script), or search."""
    live = [s for s, lease in sorted(leases.items()) if _live(lease, v.now)]
    if live:
        return (f"wait: the {live[0]} stage is running (see the lease above); then "
                f"python -m workflow status --store {shlex.quote(v.store.url)}")
    stage = next((s for s in STAGE_NAMES if not lines[s].done and not (
        s in OPTIONAL and s not in v.frozen)), None)
    if stage is None:
        out = f"python -m workflow search --store {shlex.quote(v.store.url)} --query IMAGE"
        if lines[TRAIN].args == "--retrain":
            out += (f" (or first, as the fit check advises: python scripts/{SCRIPTS[TRAIN]} "
                    f"--store {shlex.quote(v.store.url)} --retrain)")
        elif DUPLICATES not in v.frozen:
            out += (f" (or find the near-duplicates: python scripts/{SCRIPTS[DUPLICATES]} "
                    f"--store {shlex.quote(v.store.url)})")
        return out
    return " ".join(["python", f"scripts/{SCRIPTS[stage]}", "--store",
                     shlex.quote(v.store.url)] + ([lines[stage].args] if lines[stage].args
                                                   else []))


def status_report(store: Store) -> str:
    """A few lines: the corpus, every stage's progress, who holds a lease, and the next
    command to run."""
    v = View.read(store)
    lines = {s: _line(v, s) for s in STAGE_NAMES}
    leases = read_leases(store)
    out = [f"store: {store.url}", _corpus(v)]
    out += [f"  {s:<11} {lines[s].text()}" for s in STAGE_NAMES]
    for stage, lease in sorted(leases.items()):
        age = v.now - float(lease.get("heartbeat", 0))
        out.append(f"  lease: {stage} held by host {lease.get('host')} pid {lease.get('pid')}, "
                   f"heartbeat {age:.0f} s ago" +
                   ("" if _live(lease, v.now) else " (stale: the next run takes it over)"))
    out.append("next: " + next_command(v, lines, leases))
    return "\n".join(out)
