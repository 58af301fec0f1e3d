"""Command line: `python -m workflow STAGE ...` and the thin `scripts/NN_*.py` wrappers.

Exit status: 0 when the stage is complete; 3 when it stopped early on purpose
(--max-minutes) and can be resumed; 2 for an error the user can fix (the message says
how); 130 when interrupted.
"""
from __future__ import annotations

import argparse
import errno
import logging
import os
import sys
from typing import Callable, Sequence

from tqdm.contrib.logging import logging_redirect_tqdm

from .errors import WorkflowError

EXIT_OK, EXIT_ERROR, EXIT_RESUMABLE, EXIT_INTERRUPTED = 0, 2, 3, 130
DEFAULT_STORE = "checkpoints/store"

logger = logging.getLogger("workflow")


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    pass


def _pixels(text: str) -> int:
    try:
        return int(float(text.replace("_", "")))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a pixel count (e.g. 200e6)") from None


def add_common(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("store and run control")
    g.add_argument("--store", default=DEFAULT_STORE,
                   help="store root: a local folder (e.g. a mounted Drive folder) or an "
                        "fsspec URL (gs://, s3://, memory://)")
    g.add_argument("--scratch", default=None,
                   help="local scratch folder for work in progress (default: "
                        "$WORKFLOW_SCRATCH or a folder under /tmp)")
    g.add_argument("--max-minutes", type=float, default=None,
                   help="stop cleanly after about this many minutes (exit status 3); "
                        "re-running resumes")
    g.add_argument("--takeover", action="store_true",
                   help="take the stage's lease even if another run seems to hold it")
    g.add_argument("--wait-minutes", type=float, default=0.0,
                   help="if another run holds the stage, wait up to this long for it to "
                        "finish instead of stopping at once")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    g.add_argument("--log-level", default="INFO",
                   choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="logging detail")


def add_spark(p: argparse.ArgumentParser) -> None:
    p.add_argument("--spark-master", default=None, metavar="URL",
                   help="with --executor spark: local[N], spark://HOST:7077, yarn or "
                        "k8s://...; default: the active Spark session, else Spark's default "
                        "(spark-submit --master). The store and the sources must be reachable "
                        "from every executor")


def preprocess_parser(p: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    p = p or argparse.ArgumentParser(prog="01_preprocess.py")
    p.description = (
        "Stage 1: decode, orient, convert and resize source images into HDF5 image shards "
        "(images/shard-NNNNN.h5 in the store). Bad images are recorded with a reason, "
        "never fatal. Kill it at any moment and run the same command again: it resumes, "
        "redoing at most the shard in flight.")
    p.formatter_class = _Formatter
    p.add_argument("--source", action="extend", nargs="+", default=[], metavar="SRC",
                   help="a folder (recursive), a list file (.txt: one path per line; .csv: "
                        "a 'path' column), a tar or zip archive; local or fsspec URL; "
                        "repeat or give several. May be left out when resuming")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                   help="decoding processes")
    p.add_argument("--executor", choices=["local", "process", "spark"], default="process",
                   help="process: a supervised pool of --workers processes (a hung or "
                        "crashing image costs only that image); local: all in this process; "
                        "spark: one Spark task per shard (see --spark-master)")
    add_spark(p)
    p.add_argument("--shard-size", type=int, default=10_000, help="images per shard (about)")
    p.add_argument("--image-size", type=int, default=256,
                   help="short side of the stored images in px (never upscaled)")
    p.add_argument("--jpeg-quality", type=int, default=90, help="quality of the stored JPEGs")
    p.add_argument("--max-pixels", type=_pixels, default=200_000_000,
                   help="images with more pixels are refused (decompression bombs)")
    p.add_argument("--image-timeout", type=float, default=60.0,
                   help="seconds one image may take before its worker is killed")
    p.add_argument("--read-threads", type=int, default=8,
                   help="threads reading source files (helps on network drives)")
    p.add_argument("--drop-duplicates", action="store_true",
                   help="later stages leave out exact duplicate files (they are always "
                        "reported in images/report.json)")
    add_common(p)
    return p


def run_preprocess(a: argparse.Namespace) -> int:
    from . import preprocess
    cfg = preprocess.PreprocessConfig(
        store=a.store, sources=tuple(a.source), scratch=a.scratch, executor=a.executor,
        workers=a.workers, shard_size=a.shard_size, image_size=a.image_size,
        jpeg_quality=a.jpeg_quality, max_pixels=a.max_pixels, drop_duplicates=a.drop_duplicates,
        image_timeout=a.image_timeout, read_threads=a.read_threads,
        spark_master=a.spark_master, max_minutes=a.max_minutes,
        takeover=a.takeover, wait_minutes=a.wait_minutes, progress=not a.no_progress)
    result = preprocess.run(cfg)
    print(result.summary())
    return EXIT_OK if result.complete else EXIT_RESUMABLE


def extract_parser(p: argparse.ArgumentParser | None = None,
                   for_all: bool = False) -> argparse.ArgumentParser:
    from .models import KERAS_APPS, POOLING, PREPROCESSING
    p = p or argparse.ArgumentParser(prog="02_extract.py")
    p.description = (
        "Stage 2: CNN features for every image shard, L2-normalised, as float16 HDF5 "
        "feature shards (features/shard-NNNNN.h5). Decoding runs in a pool of threads (or "
        "processes: --executor) and overlaps inference; the next shard is read meanwhile. "
        "Kill it at any moment and run it again: it resumes.")
    p.formatter_class = _Formatter
    g = p.add_argument_group("model")
    g.add_argument("--model", default=None if for_all else "efficientnet-b0",
                   help=f"a Keras application ({', '.join(KERAS_APPS)}), or a path to your "
                        "own .keras/.h5 model, SavedModel folder or .tflite file "
                        "[default: efficientnet-b0]")
    g.add_argument("--weights", default=None if for_all else "imagenet",
                   help="imagenet (downloaded once by Keras), none (random: for tests only) "
                        "or a path to a weights file [default: imagenet]")
    g.add_argument("--input-size", type=int, default=None,
                   help="model input in px (default: the model's native size)")
    g.add_argument("--pooling", choices=POOLING, default="avg", help="global pooling")
    g.add_argument("--preprocessing", choices=PREPROCESSING, default=None,
                   help="input scaling for your own model (raw 0..255, unit 0..1, tf -1..1, "
                        "caffe, torch); Keras applications know their own")
    g.add_argument("--embedding-tensor", default=None,
                   help="TFLite: the name of the tensor to read (default: the output)")
    g.add_argument("--batch-size", type=int, default=None,
                   help="images per model call [default: 32 on a CPU, 256 on a GPU]")
    g.add_argument("--mixed-precision", choices=["auto", "on", "off"], default="auto",
                   help="float16 compute for Keras models; auto = on where a GPU is present")
    g.add_argument("--xla", action="store_true",
                   help="compile the model with XLA (TensorFlow backend). Measure first: "
                        "on some CPUs it is much slower")
    if not for_all:
        p.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 1),
                       help="decoding threads (or processes, with --executor process)")
        p.add_argument("--executor", choices=["auto", "local", "thread", "process", "spark"],
                       default="auto",
                       help="where stored JPEGs are decoded: auto: process with a GPU, "
                            "thread without; thread: --workers threads (OpenCV releases "
                            "the GIL; the fastest without a GPU, bench/bench_extract.py); "
                            "process: --workers processes writing into batches in shared "
                            "memory, so the inference loop shares no GIL with decoding "
                            "(3.6x threads for EfficientNet-B0 on an H100); local: one "
                            "thread, one batch at a time; spark: one Spark task per shard, "
                            "the model built once per Python worker")
        add_spark(p)
        add_common(p)
    return p


def run_extract(a: argparse.Namespace) -> int:
    from . import extract
    cfg = extract.ExtractConfig(
        store=a.store, scratch=a.scratch, model=a.model or "efficientnet-b0",
        weights=a.weights or "imagenet", input_size=a.input_size, pooling=a.pooling,
        preprocessing=a.preprocessing, embedding_tensor=a.embedding_tensor,
        batch_size=a.batch_size, executor=getattr(a, "extract_executor", None) or a.executor,
        workers=getattr(a, "extract_workers", None) or a.workers,
        mixed_precision=a.mixed_precision, xla=a.xla, max_minutes=a.max_minutes,
        spark_master=getattr(a, "spark_master", None),
        takeover=a.takeover, wait_minutes=a.wait_minutes,
        progress=not a.no_progress)
    result = extract.run(cfg)
    print(result.summary())
    return EXIT_OK if result.complete else EXIT_RESUMABLE


def train_parser(p: argparse.ArgumentParser | None = None,
                 for_all: bool = False) -> argparse.ArgumentParser:
    p = p or argparse.ArgumentParser(prog="03_train.py")
    p.description = p.description if for_all else (
        "Stage 3: train an IVF-PQ index (inner product on the normalised features) and "
        "the prefilter's PCA on a seeded sample of the features. The parameters are "
        "chosen from N, d and --memory-budget and printed with their estimated cost "
        "before training; each can be overridden. A finished train is not redone.")
    p.formatter_class = _Formatter
    g = p.add_argument_group("index")
    g.add_argument("--index-factory", default=None,
                   help="a Faiss index factory string (e.g. 'OPQ64,IVF4096,PQ64'); "
                        "default: chosen from N, d and the memory budget")
    g.add_argument("--memory-budget", type=_size, default="8G",
                   help="memory the filled index may use (half of it, the rest is for "
                        "search): decides the PQ code size")
    g.add_argument("--nlist", type=int, default=None, help="inverted lists (default ~4 sqrt N)")
    g.add_argument("--pq-m", type=int, default=None, help="PQ bytes per vector")
    g.add_argument("--opq", action=argparse.BooleanOptionalAction, default=None,
                   help="OPQ rotation (default: where it trains in about a minute)")
    g.add_argument("--train-size", type=int, default=None,
                   help="training sample (default: 39 per list, at least 50k)")
    g.add_argument("--pca-dim", type=int, default=None, help="prefilter dimension (default 64)")
    g.add_argument("--seed", type=int, default=0, help="seed of the training sample")
    if not for_all:
        add_common(p)
    return p


def run_train(a: argparse.Namespace) -> int:
    from . import train
    cfg = train.TrainConfig(
        store=a.store, scratch=a.scratch, index_factory=a.index_factory,
        memory_budget=a.memory_budget, nlist=a.nlist, pq_m=a.pq_m, opq=a.opq,
        train_size=a.train_size, pca_dim=a.pca_dim, seed=a.seed, max_minutes=a.max_minutes,
        takeover=a.takeover, wait_minutes=a.wait_minutes, progress=not a.no_progress)
    result = train.run(cfg)
    print(result.summary())
    return EXIT_OK if result.complete else EXIT_RESUMABLE


def add_parser(p: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    p = p or argparse.ArgumentParser(prog="04_add.py")
    p.description = (
        "Stage 4: fill the trained index, one part per feature shard (a killed run "
        "resumes at the first missing part), merge the parts into index/index.faiss (in "
        "memory, or with on-disk inverted lists when the index would not fit), and write "
        "the float16 re-rank store index/rerank.npy (row = id).")
    p.formatter_class = _Formatter
    p.add_argument("--memory-budget", type=_size, default="8G",
                   help="above half of this, the merged index keeps its inverted lists on "
                        "disk (memory-mapped)")
    p.add_argument("--on-disk", choices=["auto", "on", "off"], default="auto",
                   help="on-disk inverted lists: auto = when over the memory budget")
    p.add_argument("--executor", choices=["local", "process", "spark"], default="local",
                   help="where the index parts are built: local: one after another here "
                        "(Faiss uses every core); process: --workers processes; spark: one "
                        "Spark task per shard. The merge always runs here")
    p.add_argument("--workers", type=int, default=2, help="processes, with --executor process")
    add_spark(p)
    add_common(p)
    return p


def run_add(a: argparse.Namespace) -> int:
    from . import add
    cfg = add.AddConfig(store=a.store, scratch=a.scratch, memory_budget=a.memory_budget,
                        on_disk=a.on_disk, executor=getattr(a, "add_executor", a.executor),
                        workers=a.workers, spark_master=a.spark_master,
                        max_minutes=a.max_minutes, takeover=a.takeover,
                        wait_minutes=a.wait_minutes, progress=not a.no_progress)
    result = add.run(cfg)
    print(result.summary())
    return EXIT_OK if result.complete else EXIT_RESUMABLE


def prefilter_parser(p: argparse.ArgumentParser | None = None,
                     for_all: bool = False) -> argparse.ArgumentParser:
    p = p or argparse.ArgumentParser(prog="05_prefilter.py")
    p.description = p.description if for_all else (
        "Stage 5: an Annoy index (angular) over the PCA-reduced features, the fast "
        "candidate generator of the hierarchical search. Built on local disk, committed "
        "when complete; a finished prefilter is not rebuilt.")
    p.formatter_class = _Formatter
    g = p.add_argument_group("prefilter")
    g.add_argument("--trees", type=int, default=None,
                   help="Annoy trees (default: about 2 log2 N, between 8 and 50)")
    g.add_argument("--annoy-seed", type=int, default=0, help="seed of the Annoy build")
    if not for_all:
        add_common(p)
    return p


def run_prefilter(a: argparse.Namespace) -> int:
    from . import prefilter
    cfg = prefilter.PrefilterConfig(store=a.store, scratch=a.scratch, trees=a.trees,
                                    seed=a.annoy_seed, max_minutes=a.max_minutes,
                                    takeover=a.takeover, wait_minutes=a.wait_minutes,
                                    progress=not a.no_progress)
    print(prefilter.run(cfg).summary())
    return EXIT_OK


def search_parser(p: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    from .search import MODES
    p = p or argparse.ArgumentParser(prog="06_search.py")
    p.description = (
        "Search the store by image, by id ('more like this') or by vector. Image queries "
        "are preprocessed exactly as the corpus was and embedded with the same model. "
        "Prints each query's top k (or, with --json, one JSON object per query per line) "
        "and can write a result page with thumbnails from the stored image shards. "
        "Parameters left out come from the store's evaluation (scripts/07_evaluate.py), "
        "else from built-in defaults.")
    p.formatter_class = _Formatter
    q = p.add_argument_group("queries (at least one)")
    q.add_argument("--query", action="extend", nargs="+", default=[], metavar="IMAGE",
                   help="image files")
    q.add_argument("--id", action="extend", nargs="+", type=int, default=[], metavar="N",
                   help="ids of corpus images")
    q.add_argument("--vectors", default=None, metavar="FILE.npy",
                   help="a .npy file of query vectors [n, d] (or one vector [d])")
    g = p.add_argument_group("search")
    g.add_argument("--k", type=int, default=10, help="results per query")
    g.add_argument("--mode", choices=MODES, default=None,
                   help="search mode [default: hierarchical, or the store's tuned default]")
    g.add_argument("--nprobe", type=int, default=None, help="IVF lists visited")
    g.add_argument("--rerank", type=int, default=None,
                   help="IVF-PQ candidates re-scored exactly")
    g.add_argument("--annoy", type=int, default=None, help="Annoy candidates re-scored exactly")
    g.add_argument("--search-k", type=int, default=None,
                   help="Annoy nodes inspected (-1: Annoy's default)")
    g.add_argument("--exclude-self", action="store_true",
                   help="leave an id query's own id out of its results")
    o = p.add_argument_group("output")
    o.add_argument("--json", action="store_true",
                   help='one JSON object per query per line: {"query": ..., "results": '
                        '[{"id", "key", "score"}, ...]}')
    o.add_argument("--out", default=None, metavar="PAGE",
                   help="write the results as an HTML page (.html) or a PNG sheet (.png)")
    p.add_argument("--store", default=DEFAULT_STORE, help="store root or URL")
    p.add_argument("--scratch", default=None, help="local scratch folder")
    p.add_argument("--log-level", default="WARNING",
                   choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="logging detail")
    return p


def run_search(a: argparse.Namespace) -> int:
    import json

    import numpy as np

    from .gallery import write_results_page
    from .search import Searcher
    queries: list = [*a.id, *a.query]
    if a.vectors:
        try:
            queries.append(np.load(a.vectors))
        except (OSError, ValueError) as e:
            raise WorkflowError(f"--vectors {a.vectors}: cannot read it as a .npy array "
                                f"({e})") from None
    if not queries:
        raise WorkflowError("nothing to search for: give --query IMAGE, --id N or --vectors")
    searcher = Searcher(a.store, a.scratch)
    results = searcher.search(queries, k=a.k, mode=a.mode, exclude_self=a.exclude_self,
                              nprobe=a.nprobe, rerank=a.rerank, annoy=a.annoy,
                              search_k=a.search_k)
    for r in results:
        if a.json:
            print(json.dumps(r.to_json(), ensure_ascii=False))
        else:
            print(f"query {r.query}:")
            for rank, (i, key, s) in enumerate(zip(r.ids, r.keys, r.scores), 1):
                print(f"  {rank:>3}  {s:7.4f}  id {i:<10} {key}")
    if a.out:
        thumbs = searcher.thumbnails([i for r in results for i in r.ids] +
                                     [int(r.query[3:]) for r in results
                                      if r.query.startswith("id:")])
        path = write_results_page(results, thumbs, a.out, f"{len(results)} queries, "
                                  f"top {a.k}, {a.mode or searcher.default_mode}")
        print(f"result page: {path}", file=sys.stderr)
    return EXIT_OK


def evaluate_parser(p: argparse.ArgumentParser | None = None,
                    for_all: bool = False) -> argparse.ArgumentParser:
    from .search import MODES
    p = p or argparse.ArgumentParser(prog="07_evaluate.py")
    p.description = p.description if for_all else (
        "Stage 7: recall@1/10/100 of every search mode against exact search, single-query "
        "latency (p50/p95/p99) and batch queries/s over a sweep of each mode's parameters; "
        "the cheapest setting reaching --target-recall becomes the search default. The "
        "exact top 100 is computed once, block by block, and kept in the store. Writes "
        "evaluation/report.md, report.json and recall_vs_qps.png; with a folder-per-class "
        "corpus also precision@k by class.")
    p.formatter_class = _Formatter
    g = p.add_argument_group("evaluation")
    g.add_argument("--queries", type=int, default=1000,
                   help="size of the seeded sample of corpus images used as queries")
    g.add_argument("--query-dir", default=None,
                   help="a folder of query images instead (a sub-folder per class gives "
                        "precision@k by class)")
    g.add_argument("--target-recall", type=float, default=0.95,
                   help="recall@10 that the tuned search defaults must reach")
    if not for_all:
        g.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES), metavar="MODE",
                       help=f"modes to evaluate: {', '.join(MODES)}")
        g.add_argument("--eval-seed", type=int, default=0, help="seed of the query sample")
        g.add_argument("--latency-queries", type=int, default=200,
                       help="single queries timed per setting (exact: 3 to 20, fewer for "
                            "larger corpora)")
        g.add_argument("--labels", choices=["auto", "none"], default="auto",
                       help="precision@k by class where every image is in a class folder")
        g.add_argument("--remeasure", action="store_true",
                       help="measure the sweeps again (the exact ground truth is kept)")
        g.add_argument("--checkpoint-seconds", type=float, default=30.0,
                       help="how often the exact search saves its progress to the store")
        add_common(p)
    return p


def run_evaluate(a: argparse.Namespace) -> int:
    from . import evaluate
    from .search import MODES
    cfg = evaluate.EvaluateConfig(
        store=a.store, scratch=a.scratch, queries=a.queries, query_dir=a.query_dir,
        seed=getattr(a, "eval_seed", 0), target_recall=a.target_recall,
        modes=tuple(getattr(a, "modes", MODES)),
        latency_queries=getattr(a, "latency_queries", 200),
        labels=getattr(a, "labels", "auto"), remeasure=getattr(a, "remeasure", False),
        checkpoint_seconds=getattr(a, "checkpoint_seconds", 30.0),
        max_minutes=a.max_minutes, takeover=a.takeover, wait_minutes=a.wait_minutes,
        progress=not a.no_progress)
    result = evaluate.run(cfg)
    print(result.summary())
    return EXIT_OK if result.complete else EXIT_RESUMABLE


def _size(text: str) -> int:
    from .utils import parse_size
    try:
        return parse_size(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def status_parser(p: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    p = p or argparse.ArgumentParser(prog="workflow status")
    p.description = "Print where every stage stands in a store (read-only)."
    p.add_argument("--store", default=DEFAULT_STORE, help="store root or URL")
    p.add_argument("--log-level", default="WARNING", choices=["DEBUG", "INFO", "WARNING"])
    return p


def run_status(a: argparse.Namespace) -> int:
    from .stages import status_report
    from .store import Store
    print(status_report(Store(a.store, create=False)))
    return EXIT_OK


def reset_parser(p: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    from .stages import STAGE_NAMES
    p = p or argparse.ArgumentParser(prog="workflow reset")
    p.description = ("Delete one stage's outputs, markers and frozen settings, so that it "
                     "can be run again with other settings. Later stages built on it must "
                     "be reset too.")
    p.add_argument("stage", choices=STAGE_NAMES)
    p.add_argument("--store", default=DEFAULT_STORE, help="store root or URL")
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING"])
    return p


def run_reset(a: argparse.Namespace) -> int:
    from .stages import reset_stage
    from .store import Store
    store = Store(a.store, create=False)
    if not a.yes:
        if not sys.stdin.isatty():
            raise WorkflowError("reset deletes data: pass --yes to confirm")
        if input(f"delete the {a.stage} stage's outputs in {store.url}? [y/N] ").lower() != "y":
            return EXIT_ERROR
    removed = reset_stage(store, a.stage)
    print(f"reset {a.stage}: removed {', '.join(removed) or 'nothing'}")
    return EXIT_OK


def all_parser(p: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    p = preprocess_parser(p or argparse.ArgumentParser(prog="run_all.py"))
    extract_parser(p, for_all=True)
    train_parser(p, for_all=True)
    prefilter_parser(p, for_all=True)
    evaluate_parser(p, for_all=True)
    p.description = (
        "Run every stage in order on --source (or on the built-in demo corpus with "
        "--demo), then print where each stands. Each stage resumes where it stopped, so "
        "after a disconnect just run the same command again. At the end it prints the "
        "recall table of every search mode and writes a result page "
        "(evaluation/results.html in the store). Where the ImageNet "
        "weights cannot be downloaded and neither --model nor --weights is given, "
        "extract says so and goes on with "
        "random weights (the workflow runs; visual similarity is meaningless).")
    g = p.add_argument_group("demo corpus")
    g.add_argument("--demo", action="store_true",
                   help="make (once) and use the demo corpus of real photos shipped with "
                        "scikit-image, with variants and deliberately broken files")
    g.add_argument("--demo-dir", default="checkpoints/demo-corpus",
                   help="where the demo corpus is written")
    g.add_argument("--demo-n", type=int, default=400, help="images in the demo corpus")
    return p


def run_all(a: argparse.Namespace) -> int:
    from .stages import status_report
    from .store import Store
    if a.demo:
        if a.source:
            raise WorkflowError("give either --demo or --source, not both")
        a.source = demo_sources(a.demo_dir, a.demo_n)
    code = run_preprocess(a)
    if code == EXIT_OK:
        code = _extract_for_all(a)
    if code == EXIT_OK:
        code = run_train(a)
    if code == EXIT_OK:
        a.on_disk = "auto"
        a.add_executor = "spark" if a.executor == "spark" else "local"
        code = run_add(a)
    if code == EXIT_OK:
        code = run_prefilter(a)
    if code == EXIT_OK:
        code = run_evaluate(a)
    store = Store(a.store, a.scratch)
    if code == EXIT_OK:
        print(f"result page: {results_page(store)}")
    print(status_report(store))
    return code


def results_page(store, n_queries: int = 6, k: int = 8) -> str:
    """A result page for a few evaluation queries, committed as evaluation/results.html."""
    from .evaluate import STAGE as EVALUATE, sample_query_ids
    from .gallery import write_results_page
    from .search import Searcher
    searcher = Searcher(store)
    ids = sample_query_ids(searcher.xb, n_queries, seed=1).tolist()
    results = searcher.search(ids, k=k, exclude_self=True)
    thumbs = searcher.thumbnails([i for r in results for i in r.ids] + ids)
    work = store.scratch / EVALUATE
    path = write_results_page(results, thumbs, work / "results.html",
                              f"{len(ids)} corpus images and their {k} nearest neighbours "
                              f"({searcher.default_mode} search)")
    fp = store.run_info()["stages"][EVALUATE]["fingerprint"]
    store.commit(path, "evaluation/results.html", EVALUATE, "results-page", fp)
    path.unlink()
    return store.display("evaluation/results.html")


def _extract_for_all(a: argparse.Namespace) -> int:
    from .models import OfflineWeightsError
    a.extract_workers = max(1, a.workers - 1)
    # the preprocess default (a process pool) maps to the extract default (auto)
    a.extract_executor = "auto" if a.executor == "process" else a.executor
    try:
        return run_extract(a)
    except OfflineWeightsError as e:
        if a.model or a.weights:
            raise
        logger.warning("%s\nGoing on with RANDOM weights (--weights none): every stage runs "
                       "and agreement with exact search is measured, but neighbours will "
                       "not look alike. Pass --weights to choose.", e)
        a.weights = "none"
        return run_extract(a)


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


COMMANDS: dict[str, tuple[Callable, Callable]] = {
    "all": (all_parser, run_all),
    "preprocess": (preprocess_parser, run_preprocess),
    "extract": (extract_parser, run_extract),
    "train": (train_parser, run_train),
    "add": (add_parser, run_add),
    "prefilter": (prefilter_parser, run_prefilter),
    "evaluate": (evaluate_parser, run_evaluate),
    "search": (search_parser, run_search),
    "status": (status_parser, run_status),
    "reset": (reset_parser, run_reset),
}


def setup_logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, level), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)


def run_command(name: str, argv: Sequence[str] | None) -> int:
    """Parse argv for command `name`, run it, and turn errors into exit codes."""
    make_parser, func = COMMANDS[name]
    args = make_parser().parse_args(argv)
    setup_logging(args.log_level)
    try:
        with logging_redirect_tqdm():
            return func(args)
    except WorkflowError as e:
        logger.error("%s", e)
        return EXIT_ERROR
    except KeyboardInterrupt:
        logger.error("interrupted; re-run the same command to resume")
        return EXIT_INTERRUPTED
    except OSError as e:
        if e.errno != errno.ENOSPC:
            raise
        logger.error("no space left on the disk (%s). Free some space, or give --scratch a "
                     "folder on a larger disk; committed work is kept, so re-run the same "
                     "command to resume", e.filename or e)
        return EXIT_ERROR


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print("usage: python -m workflow {" + ",".join(COMMANDS) + "} [options]\n"
              "       python -m workflow COMMAND --help   for the options of one command")
        return EXIT_OK if argv and argv[0] in ("-h", "--help") else EXIT_ERROR
    return run_command(argv[0], argv[1:])
