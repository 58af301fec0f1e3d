"""The main job, `run_all.py` / `python -m workflow all`: every stage in order, each
from one explicit config built from the shared command line, then the status."""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import os
import time

from .errors import WorkflowError
from .formats.layout import STAGE_NAMES
from .options import EXIT_OK, EXIT_RESUMABLE, add_options, config_from
from .options import finish as _exit
from .options import parser as _parser

logger = logging.getLogger("workflow")

MODEL_OPTIONS = ("model", "weights", "input_size", "pooling", "preprocessing",
                 "embedding_tensor", "batch_size", "mixed_precision", "xla")
EVALUATE_OPTIONS = ("queries", "query_dir", "target_recall")


def all_parser() -> argparse.ArgumentParser:
    from .stages.duplicates import DuplicatesConfig
    from .stages.evaluate import EvaluateConfig
    from .stages.extract import ExtractConfig
    from .stages.prefilter import PrefilterConfig
    from .stages.preprocess import PreprocessConfig
    from .stages.train import TrainConfig
    p = _parser("run_all.py", (
        "Run every stage in order on --source (or on the built-in demo corpus with "
        "--demo), then print where each stands. Each stage resumes where it stopped, so "
        "after a disconnect just run the same command again. At the end it prints the "
        "recall table of every search mode and writes a result page "
        "(evaluation/results.html in the store). Where the ImageNet weights cannot be "
        "downloaded and neither --model nor --weights is given, extract says so and goes "
        "on with random weights (the workflow runs; visual similarity is meaningless). "
        "--max-minutes is one deadline for the whole job: each stage gets the time that is "
        "left, and the job stops (exit status 3) at the first stage that runs out of it."))
    add_options(p, PreprocessConfig)
    # None: left to the stage, and tells a chosen model from the default one
    add_options(p, ExtractConfig, only=MODEL_OPTIONS, defaults={"model": None, "weights": None})
    add_options(p, TrainConfig, skip=_run_control())
    add_options(p, PrefilterConfig, skip=_run_control())
    add_options(p, EvaluateConfig, only=EVALUATE_OPTIONS)
    add_options(p, DuplicatesConfig, only=("threshold", "slack"))
    g = p.add_argument_group("demo corpus")
    g.add_argument("--demo", action="store_true",
                   help="make (once) and use the demo corpus of real photos shipped with "
                        "scikit-image, with variants and deliberately broken files")
    g.add_argument("--demo-dir", default="checkpoints/demo-corpus",
                   help="where the demo corpus is written [default: %(default)s]")
    g.add_argument("--demo-n", type=int, default=400,
                   help="images in the demo corpus [default: %(default)s]")
    return p


def _run_control() -> tuple[str, ...]:
    import dataclasses

    from .stages.base import StageConfig
    return tuple(f.name for f in dataclasses.fields(StageConfig))


def stage_configs(a: argparse.Namespace, weights: str | None = None) -> dict:
    """One config per stage from the command line of `run_all`: run control and
    spark_master shared; extract decodes with one worker less than preprocess (the model
    takes a core) and its default executor; add builds its parts here, or on Spark."""
    from .stages import add, duplicates, evaluate, extract, prefilter, preprocess, train
    spark = a.executor == "spark"
    return {
        "preprocess": config_from(preprocess.PreprocessConfig, a),
        "extract": config_from(
            extract.ExtractConfig, a, model=a.model or "efficientnet-b0",
            weights=weights or a.weights or "imagenet", workers=max(1, a.workers - 1),
            executor="auto" if a.executor == "process" else a.executor),
        "train": config_from(train.TrainConfig, a),
        "add": config_from(add.AddConfig, a, on_disk="auto",
                           executor="spark" if spark else "local"),
        "prefilter": config_from(prefilter.PrefilterConfig, a),
        "evaluate": config_from(evaluate.EvaluateConfig, a),
        "duplicates": config_from(duplicates.DuplicatesConfig, a),
    }


def run_all(a: argparse.Namespace) -> int:
    """Every stage in order, under one deadline (--max-minutes): each stage is given the
    minutes left; the job stops (EXIT_RESUMABLE) at the first stage that stops early."""
    from .report.gallery import commit_results_page
    from .stages import add, duplicates, evaluate, prefilter, preprocess, train
    from .stages.status import status_report
    from .storage.store import Store
    if a.demo:
        if a.source:
            raise WorkflowError("give either --demo or --source, not both")
        a.source = demo_sources(a.demo_dir, a.demo_n)
    cfgs = stage_configs(a)
    modules = {"preprocess": preprocess, "train": train, "add": add, "prefilter": prefilter,
               "evaluate": evaluate, "duplicates": duplicates}
    # a value that is not positive is left to the stages, which refuse it
    deadline = time.monotonic() + a.max_minutes * 60 if (a.max_minutes or 0) > 0 else None
    code = EXIT_OK
    with _spark_session(a):
        for stage in STAGE_NAMES:
            cfg = _with_time_left(cfgs[stage], deadline)
            if cfg is None:
                code = _out_of_time(a, stage)
            elif stage == "extract":
                code = _extract(a, cfg, deadline)
            else:
                code = _exit(modules[stage].run(cfg))
            if code != EXIT_OK:
                break
    store = Store(a.store, a.scratch)
    if code == EXIT_OK:
        print(f"result page: {commit_results_page(store)}")
    print(status_report(store))
    return code


@contextlib.contextmanager
def _spark_session(a: argparse.Namespace):
    """With --executor spark, one Spark session for the whole job: the executors, their
    Python workers and the model in them start once, not once per stage."""
    if a.executor != "spark":
        yield
        return
    from .execution.spark import SparkShards
    with SparkShards(a.spark_master, "run_all", a.spark_conf):
        yield


def _with_time_left(cfg, deadline: float | None):
    """`cfg` with max_minutes set to the minutes left before `deadline`; None when none
    are left; `cfg` itself without a deadline."""
    if deadline is None:
        return cfg
    left = (deadline - time.monotonic()) / 60
    return dataclasses.replace(cfg, max_minutes=left) if left > 0 else None


def _out_of_time(a: argparse.Namespace, stage: str) -> int:
    logger.warning("--max-minutes %g used up before the %s stage; re-run the same command "
                   "(python scripts/run_all.py ..., or python -m workflow all ...) to resume "
                   "from there", a.max_minutes, stage)
    return EXIT_RESUMABLE


def _extract(a: argparse.Namespace, cfg, deadline: float | None = None) -> int:
    from .models.registry import OfflineWeightsError
    from .stages import extract
    try:
        return _exit(extract.run(cfg))
    except OfflineWeightsError as e:
        if a.model or a.weights:
            raise
        logger.warning("%s\nGoing on with RANDOM weights (--weights none): every stage runs "
                       "and agreement with exact search is measured, but neighbours will "
                       "not look alike. Pass --weights to choose.", e)
        cfg = _with_time_left(dataclasses.replace(cfg, weights="none"), deadline)
        return _out_of_time(a, "extract") if cfg is None else _exit(extract.run(cfg))


def demo_sources(folder: str, n: int) -> list[str]:
    """The demo corpus's sources, making the corpus first if it is not there yet."""
    from .demo import make_demo_corpus
    root = os.path.abspath(folder)
    if not os.path.exists(os.path.join(root, "manifest.json")):
        logger.info("writing the demo corpus (%d images) to %s", n, root)
        make_demo_corpus(root, n=n)
    archives = sorted(os.path.join(root, "archives", f)
                      for f in os.listdir(os.path.join(root, "archives")))
    return [os.path.join(root, "photos"), *archives]
