"""Stage 7, evaluate: recall of every search mode against exact search, speed, tuning.

- Queries: a seeded sample of corpus items (each query's own id left out of both the
  exact and the approximate results), or a folder of query images.
- `evaluation/groundtruth.npz`: the queries and their exact top 100, computed block by
  block over the feature shards (GPU where Faiss has one), checkpointed while it runs
  (`groundtruth-partial.npz`), so a killed evaluation resumes and a later one reuses it.
- `evaluation/sweep-<mode>.npz`: per mode, a sweep of its parameters: at every setting
  recall@1/10, a tie-aware recall@10 and queries/s in batches (k=10), and each query's
  top 10; at the settings that decide the tuning (`search.measure.to_time`: the 3 with
  the most queries/s that reach the target; every one with --full-sweep), single-query
  latency p50/p95/p99 and recall@100 too.
- `evaluation/search_defaults.json`: per mode, the cheapest measured parameters (lowest
  p50 latency) that reach --target-recall, and the default mode: the cheapest of those
  that reach it, `exact` included; the `Searcher` uses them as its defaults.
- Queries in words (a store made with an image-text model, `HUB_MODELS`): the lines of
  `--text-queries`, or a prompt per class folder ("a photo of a {folder}"), embedded by
  the text tower, get their own ground truth (`groundtruth-text.npz`), sweeps
  (`sweep-text-<mode>.npz`) and tuned defaults (`search_defaults.json`'s "text"), since
  they lie elsewhere in the space than the images (the modality gap) and settings tuned
  on image queries can miss their target on them. The report puts both kinds side by
  side, with the text queries' recall at the image-tuned settings.
- `evaluation/report.json`, `report.md`, `recall_vs_qps.png`, and precision@k by class
  where the corpus is organised in a folder per class.
"""
from __future__ import annotations

import datetime as dt
import logging
import os
from dataclasses import dataclass, field

from ..errors import DeadlineReached, WorkflowError
from ..formats.evaluation import (
    commit_bytes,
    report_json,
    search_defaults_json,
)
from ..formats.layout import (
    ADD,
    DEFAULTS_FILE,
    EVALUATE,
    PLOT_FILE,
    PREFILTER,
    REPORT_JSON,
    REPORT_MD,
    TRAIN,
)
from ..formats.plan import corpus_version
from ..index.metrics import class_label, labelled, precision_by_class
from ..options import opt
from ..report.evaluation import (
    PRECISION_AT,
    recall_qps_plot,
    report_markdown,
    search_defaults,
    tuned_table,
)
from ..search import measure as meter
from ..search.modes import MODE_PARAMS, MODES
from ..search.query import query_files
from ..search.searcher import Searcher
from ..storage.store import Store
from ..utils import cpu_name
from . import groundtruth as gt
from . import sweeps as sweep
from .base import StageConfig, StageRun
from .groundtruth import K_GT, TEXT, TEXT_PROMPT

logger = logging.getLogger(__name__)

STAGE = EVALUATE
GROUP = "evaluation"


@dataclass(frozen=True)
class EvaluateConfig(StageConfig):
    """Settings of the evaluate stage; see `scripts/07_evaluate.py --help`."""
    queries: int = opt(1000, "size of the seeded sample of corpus images used as queries",
                       type=int, group=GROUP)
    query_dir: str | None = opt(None, "a folder of query images instead (a sub-folder per "
                                "class gives precision@k by class)", group=GROUP)
    target_recall: float = opt(0.95, "recall@10 that the tuned search defaults must reach",
                               type=float, group=GROUP)
    modes: tuple[str, ...] = opt(MODES, f"modes to evaluate: {', '.join(MODES)}", nargs="+",
                                 choices=MODES, metavar="MODE", group=GROUP,
                                 shown="all", to_config=tuple)
    seed: int = opt(0, "seed of the query sample", type=int, flag="--eval-seed", group=GROUP)
    latency_queries: int = opt(200, "single queries timed per timed setting (exact: 3 to 20, "
                               "fewer for larger corpora)", type=int, group=GROUP)
    labels: str = opt("auto", "precision@k by class where every image is in a class folder",
                      choices=["auto", "none"], group=GROUP)
    remeasure: bool = opt(False, "measure the sweeps again (the exact ground truth is kept)",
                          action="store_true", group=GROUP)
    full_sweep: bool = opt(False, "time every setting one query at a time, not only the "
                           "fastest few that reach the target (slow; for the full table)",
                           action="store_true", group=GROUP)
    checkpoint_seconds: float = opt(30.0, "how often the exact search saves its progress to "
                                    "the store", type=float, group=GROUP)
    text_queries: str | None = opt(None, "image-text models (clip-*, siglip-*): a UTF-8 file "
                                   "of queries in words, one a line, measured and tuned "
                                   "beside the image queries (default: one prompt per "
                                   "class folder, see --text-prompt)", metavar="FILE",
                                   group=GROUP)
    text_prompt: str = opt(TEXT_PROMPT, "image-text models without --text-queries: the "
                           "query in words made from each class folder's name",
                           group=GROUP)
    batch_size: int = 256
    tie_epsilon: float = 1e-4

    def checks(self) -> list[tuple[bool, str]]:
        r = self.require
        return super().checks() + [
            r("queries", self.queries >= 1, "must be at least 1"),
            r("target_recall", 0 < self.target_recall <= 1, "must be in (0, 1]"),
            r("modes", bool(self.modes) and set(self.modes) <= set(MODES),
              f"must be among {', '.join(MODES)}"),
            r("latency_queries", self.latency_queries >= 1, "must be at least 1"),
            (self.batch_size >= 1, "batch_size must be at least 1"),
            (self.tie_epsilon >= 0, "tie_epsilon must be >= 0"),
            r("labels", self.labels in ("auto", "none"), "must be auto or none"),
            r("query_dir", self.query_dir is None or os.path.isdir(self.query_dir),
              f"{self.query_dir} is not a folder"),
            r("text_queries", self.text_queries is None or os.path.isfile(self.text_queries),
              f"{self.text_queries} is not a file"),
            r("text_prompt", "{folder}" in self.text_prompt,
              "must contain {folder} (e.g. 'a photo of a {folder}')"),
        ]


CONFIG = EvaluateConfig  # the stage's settings; the command line is built from its fields


@dataclass
class EvaluateResult:
    complete: bool
    n_queries: int
    report: dict = field(default_factory=dict)
    seconds: float = 0.0
    store: str = ""

    def summary(self) -> str:
        if not self.complete:
            return (f"evaluate stopped early (re-run to resume); {self.seconds:.1f} s. "
                    f"Store: {self.store}")
        text = self.report.get("text")
        words = (f"\nQueries in words ({text['queries']:,}):\n" + tuned_table(text)
                 if text else "")
        return (f"evaluate complete: {self.n_queries:,} queries; {self.seconds:.1f} s.\n"
                + tuned_table(self.report) + words +
                f"\nReport: {self.store.rstrip('/')}/{REPORT_MD}")


# ------------------------------------------------------------------ the stage

def run(cfg: EvaluateConfig) -> EvaluateResult:
    """Run (or resume) the evaluation; a finished ground truth and sweep are reused."""
    with StageRun(STAGE, cfg) as run:
        searcher = Searcher(run.store, cache_size=1024)
        modes = _available_modes(run.store, cfg.modes)
        run.freeze(_settings(cfg), _parent(run))
        if cfg.remeasure:
            for mode in MODES:
                run.store.remove_marker(STAGE, f"sweep-{mode}")
                run.store.remove_marker(STAGE, f"sweep{TEXT}-{mode}")
        texts = gt.texts(cfg, run.store, searcher)
        try:
            q = gt.queries(run, searcher)
            sweeps = sweep.sweeps(run, searcher, modes, q, gt.corpus_id(run.store), "")
            tq, text_sweeps = None, {}
            if texts:
                tq = gt.text_queries(run, searcher, *texts)
                text_sweeps = sweep.sweeps(run, searcher, modes, tq, tq["corpus"], TEXT)
        except DeadlineReached:
            run.stopped_early()
            return EvaluateResult(False, 0, seconds=run.seconds, store=run.store.url)
        report = _report(cfg, run.store, searcher, q, sweeps)
        if tq is not None:
            report["text"] = _text_report(cfg, searcher, tq, text_sweeps, report["tuned"])
        run.lease.check()
        _commit_report(run, report)
    return EvaluateResult(True, len(q["xq"]), report, run.seconds, run.store.url)


def _available_modes(store: Store, modes) -> list[str]:
    if store.marker(ADD, "index") is None:
        raise WorkflowError(f"{store.url} has no filled index; run the stages up to "
                            "scripts/04_add.py first")
    if store.marker(PREFILTER, "annoy") is None:
        skipped = [m for m in modes if "annoy" in MODE_PARAMS[m]]
        if skipped:
            logger.warning("no prefilter in the store (scripts/05_prefilter.py): not "
                           "evaluating %s", ", ".join(skipped))
        modes = [m for m in modes if m not in skipped]
    return list(modes)


def _settings(cfg: EvaluateConfig) -> dict:
    """What the ground truth depends on (timings and tuning are re-done at will)."""
    s = {"queries": cfg.queries, "seed": cfg.seed, "k": K_GT}
    if cfg.query_dir:
        files = query_files(cfg.query_dir)
        s = {"query_dir": os.path.abspath(cfg.query_dir), "k": K_GT,
             "query_files": gt.sha([(str(p.relative_to(cfg.query_dir)), p.stat().st_size)
                                     for p in files])}
    return s


def _parent(run: StageRun) -> str:
    return "+".join(fp for fp in map(run.frozen_fingerprint, (ADD, PREFILTER)) if fp)


def _text_report(cfg, searcher: Searcher, tq: dict, sweeps: dict, image_tuned: dict) -> dict:
    """The queries in words: each mode tuned for them, and their recall at the settings
    tuned on the image queries (what those would have given them)."""
    tuned = {}
    for mode, s in sweeps.items():
        i, met = meter.tune(s["points"], cfg.target_recall)
        tuned[mode] = {**s["points"][i], "target_met": met, "point": i}
    at_image = {}
    for mode, t in image_tuned.items():
        point, _ = meter.measure(cfg, searcher, mode, meter.params_of(t), tq)
        at_image[mode] = {k: point[k] for k in ("params", "recall@1", "recall@10", "qps")}
    out = {"queries": len(tq["xq"]), "query_source": tq["source"],
           "target_recall": cfg.target_recall, "tuned": tuned,
           "sweeps": {m: s["points"] for m, s in sweeps.items()},
           "at_image_settings": at_image, "precision": None}
    qlabels = [str(x) for x in tq["labels"]]
    if cfg.labels != "none" and all(qlabels):
        out["precision"] = _precision_of(searcher, qlabels, tq, sweeps, tuned)
    return out



# ------------------------------------------------------------------ the report

def _report(cfg, store: Store, searcher: Searcher, q: dict, sweeps: dict) -> dict:
    import faiss
    tuned = {}
    for mode, s in sweeps.items():
        i, met = meter.tune(s["points"], cfg.target_recall)
        tuned[mode] = {**s["points"][i], "target_met": met, "point": i}
    cpu = cpu_name()
    report = {
        "date": dt.datetime.now().strftime("%Y-%m-%d %H:%M"),
        "machine": f"{cpu}, {os.cpu_count()} cores, {faiss.get_num_gpus()} GPU(s)",
        "store": store.url, "n": int(searcher.index.ntotal), "d": searcher.d,
        "corpus": {"version": corpus_version(store), "removed": searcher.removed_count},
        "index": store.marker(TRAIN, "index").extra.get("factory"),
        "queries": len(q["xq"]), "query_source": cfg.query_dir or f"sample, seed {cfg.seed}",
        "target_recall": cfg.target_recall, "tie_epsilon": cfg.tie_epsilon,
        "tuned": tuned, "sweeps": {m: s["points"] for m, s in sweeps.items()},
        "precision": _precision(cfg, searcher, q, sweeps, tuned),
        "cache": meter.cache_check(searcher, q["xq"][:50], next(
            (m for m in ("hierarchical", "ivfpq+rerank") if m in tuned), "ivfpq")),
    }
    return report


def _precision(cfg, searcher: Searcher, q: dict, sweeps: dict, tuned: dict) -> dict | None:
    """Precision@k by class, for exact search and each mode at its tuned setting."""
    if cfg.labels == "none":
        return None
    labels = gt.class_labels(searcher)
    if labels is None or not labelled(labels):
        return None
    if cfg.query_dir:
        qlabels = [class_label(str(k)) for k in q["query_keys"]]
    else:
        qlabels = [labels[i] for i in q["query_ids"]]
    return _precision_of(searcher, qlabels, q, sweeps, tuned, labels)


def _precision_of(searcher: Searcher, qlabels: list[str], q: dict, sweeps: dict,
                  tuned: dict, labels: list[str] | None = None) -> dict:
    """Precision@k by class of queries labelled `qlabels` (the corpus: its folders)."""
    if labels is None:
        labels = [class_label(k) for k in searcher.plan_info[0]]
    out = {"classes": sorted(set(qlabels)), "by_mode": {}}
    results = {"exact (ground truth)": q["I"]}
    results.update({m: s["I"][tuned[m]["point"]] for m, s in sweeps.items()
                    if len(s["I"][tuned[m]["point"]]) == len(q["I"])})  # not on a sample
    for name, I in results.items():
        out["by_mode"][name] = {}
        for k in PRECISION_AT:
            mean, per = precision_by_class(I, qlabels, labels, k)
            out["by_mode"][name][f"P@{k}"] = {"mean": round(mean, 6),
                                             "by_class": {c: round(v, 6) for c, v in per.items()}}
    return out


def _commit_report(run: StageRun, report: dict) -> None:
    files = {
        "report": (REPORT_JSON, report_json(report)),
        "report-md": (REPORT_MD, report_markdown(report).encode()),
        "plot": (PLOT_FILE, recall_qps_plot(report)),
        "defaults": (DEFAULTS_FILE, search_defaults_json(search_defaults(report))),
    }
    summary = {"queries": report["queries"], "target_recall": report["target_recall"],
               "corpus": gt.corpus_id(run.store),
               "tuned": {m: {"recall@10": t["recall@10"], "p50_ms": t["p50_ms"]}
                         for m, t in report["tuned"].items()}}
    if "text" in report:
        summary["text"] = {"queries": report["text"]["queries"], "tuned": {
            m: {"recall@10": t["recall@10"], "p50_ms": t["p50_ms"]}
            for m, t in report["text"]["tuned"].items()}}
    for unit, (rel, data) in files.items():
        commit_bytes(run.store, rel, unit, run.fp, summary if unit == "report" else None, data)
