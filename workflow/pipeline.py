"""The main job, `run_all.py` / `python -m workflow all`: every stage in order, each
from one explicit config built from the shared command line, then the status."""
from __future__ import annotations

import argparse
import logging
import os

from .errors import WorkflowError
from .options import EXIT_OK, add_options, config_from
from .options import finish as _exit
from .options import parser as _parser

logger = logging.getLogger("workflow")

MODEL_OPTIONS = ("model", "weights", "input_size", "pooling", "preprocessing",
                 "embedding_tensor", "batch_size", "mixed_precision", "xla")
EVALUATE_OPTIONS = ("queries", "query_dir", "target_recall")


def all_parser() -> argparse.ArgumentParser:
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
        "on with random weights (the workflow runs; visual similarity is meaningless)."))
    add_options(p, PreprocessConfig)
    # None: left to the stage, and tells a chosen model from the default one
    add_options(p, ExtractConfig, only=MODEL_OPTIONS, defaults={"model": None, "weights": None})
    add_options(p, TrainConfig, skip=_run_control())
    add_options(p, PrefilterConfig, skip=_run_control())
    add_options(p, EvaluateConfig, only=EVALUATE_OPTIONS)
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
    from .stages import add, evaluate, extract, prefilter, preprocess, train
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
    }


def run_all(a: argparse.Namespace) -> int:
    from .report.gallery import commit_results_page
    from .stages import add, evaluate, prefilter, preprocess, train
    from .stages.status import status_report
    from .storage.store import Store
    if a.demo:
        if a.source:
            raise WorkflowError("give either --demo or --source, not both")
        a.source = demo_sources(a.demo_dir, a.demo_n)
    cfgs = stage_configs(a)
    code = _exit(preprocess.run(cfgs["preprocess"]))
    if code == EXIT_OK:
        code = _extract(a, cfgs["extract"])
    for stage, module in (("train", train), ("add", add), ("prefilter", prefilter),
                          ("evaluate", evaluate)):
        if code == EXIT_OK:
            code = _exit(module.run(cfgs[stage]))
    store = Store(a.store, a.scratch)
    if code == EXIT_OK:
        print(f"result page: {commit_results_page(store)}")
    print(status_report(store))
    return code


def _extract(a: argparse.Namespace, cfg) -> int:
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
        return _exit(extract.run(stage_configs(a, weights="none")["extract"]))


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
