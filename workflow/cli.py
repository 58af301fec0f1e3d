"""Command line: `python -m workflow COMMAND ...` and the thin `scripts/NN_*.py` wrappers.

The options of every stage are declared once, on its config dataclass
(`workflow.options`); this module builds the parsers from them, runs the commands and
turns errors into exit codes: 0 when the stage is complete; 3 when it stopped early on
purpose (--max-minutes) and can be resumed; 2 for an error the user can fix (the message
says how); 130 when interrupted.
"""
from __future__ import annotations

import argparse
import errno
import functools
import logging
import os
import sys
from collections.abc import Callable, Sequence

from tqdm.contrib.logging import logging_redirect_tqdm

from .errors import WorkflowError
from .execution import blas  # configured when the package was imported
from .options import (
    DEFAULT_STORE,
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    EXIT_OK,
    add_options,
    config_from,
)
from .options import finish as _exit
from .options import parser as _parser
from .pipeline import all_parser, run_all
from .utils import is_transient

logger = logging.getLogger("workflow")


# ------------------------------------------------------------------ the stages

# (script, --help description) of each stage; its options come from its config class
STAGE_COMMANDS = {
    "preprocess": ("01_preprocess.py", (
        "Stage 1: decode, orient, convert and resize source images into HDF5 image shards "
        "(images/shard-NNNNN.h5 in the store). Bad images are recorded with a reason, "
        "never fatal. Kill it at any moment and run the same command again: it resumes, "
        "redoing at most the shard in flight.")),
    "extract": ("02_extract.py", (
        "Stage 2: CNN features for every image shard, L2-normalised, as float16 HDF5 "
        "feature shards (features/shard-NNNNN.h5). Decoding runs in a pool of threads (or "
        "processes: --executor) and overlaps inference; the next shard is read meanwhile. "
        "Kill it at any moment and run it again: it resumes.")),
    "train": ("03_train.py", (
        "Stage 3: train an IVF-PQ index (inner product on the normalised features) and "
        "the prefilter's PCA on a seeded sample of the features. The parameters are "
        "chosen from N, d and --memory-budget and printed with their estimated cost "
        "before training; each can be overridden. A finished train is not redone.")),
    "add": ("04_add.py", (
        "Stage 4: fill the trained index, one part per feature shard (a killed run "
        "resumes at the first missing part), merge the parts into index/index.faiss (in "
        "memory, or with on-disk inverted lists when the index would not fit), and write "
        "the float16 re-rank store index/rerank.npy (row = id).")),
    "prefilter": ("05_prefilter.py", (
        "Stage 5: an Annoy index (angular) over the PCA-reduced features, the fast "
        "candidate generator of the hierarchical search. Built on local disk, committed "
        "when complete; a finished prefilter is not rebuilt.")),
    "evaluate": ("07_evaluate.py", (
        "Stage 7: recall@1/10/100 of every search mode against exact search, single-query "
        "latency (p50/p95/p99) and batch queries/s over a sweep of each mode's parameters; "
        "the cheapest setting reaching --target-recall becomes the search default. The "
        "exact top 100 is computed once, block by block, and kept in the store. Writes "
        "evaluation/report.md, report.json and recall_vs_qps.png; with a folder-per-class "
        "corpus also precision@k by class.")),
    "duplicates": ("08_duplicates.py", (
        "Stage 8: near-duplicate groups over the whole corpus. Each image's --k nearest "
        "others are found through the index and re-scored exactly (one unit per feature "
        "shard: kill it and run it again, it resumes); images at --threshold or more are "
        "linked, and every member of a group must reach its centre (the member nearest "
        "the group's mean feature) at --threshold minus --slack, so that chains of small "
        "steps do not merge unrelated images; the representative kept is the largest "
        "original resolution, then the largest file, then the lowest id. "
        "Writes duplicates/groups.json, groups.csv and remove-list.txt (for `python -m "
        "workflow remove --from-file`). A new --threshold regroups without searching "
        "again.")),
}


def _stage(name: str):
    """The stage's module and its config class (imported on use: a command loads only
    what its stage needs)."""
    import importlib
    module = importlib.import_module(f".stages.{name}", __package__)
    return module, module.CONFIG


def stage_parser(name: str) -> argparse.ArgumentParser:
    prog, description = STAGE_COMMANDS[name]
    p = _parser(prog, description)
    add_options(p, _stage(name)[1])
    return p


def run_stage(name: str, a: argparse.Namespace) -> int:
    module, config = _stage(name)
    return _exit(module.run(config_from(config, a)))


# ------------------------------------------------------------------ search, status, reset

def _store_arguments(p: argparse.ArgumentParser, scratch: bool = False) -> None:
    from .storage.options import STORAGE_OPTIONS_HELP
    p.add_argument("--store", default=DEFAULT_STORE, help="store root or URL [default: "
                   "%(default)s]")
    p.add_argument("--storage-options", default=None, metavar="JSON",
                   help=STORAGE_OPTIONS_HELP)
    if scratch:
        p.add_argument("--scratch", default=None, help="local scratch folder")


def search_parser() -> argparse.ArgumentParser:
    from .search.modes import MODES
    p = _parser("06_search.py", (
        "Search the store by image, by id ('more like this'), by words or by vector. Image "
        "queries are preprocessed exactly as the corpus was and embedded with the same "
        "model; words are embedded by the text tower of an image-text model (a store "
        "extracted with --model clip-vit-b32, clip-vit-b16 or siglip-base-224). "
        "Prints each query's top k (or, with --json, one JSON object per query per line) "
        "and can write a result page with thumbnails from the stored image shards. "
        "Parameters left out come from the store's evaluation (scripts/07_evaluate.py), "
        "else from built-in defaults."), log_level="WARNING")
    q = p.add_argument_group("queries (at least one)")
    q.add_argument("--query", action="extend", nargs="+", default=[], metavar="IMAGE",
                   help="image files")
    q.add_argument("--id", action="extend", nargs="+", type=int, default=[], metavar="N",
                   help="ids of corpus images")
    q.add_argument("--text", action="append", default=[], metavar="WORDS",
                   help='a query in words, e.g. --text "a red bicycle" (repeat it for more); '
                        "needs a store extracted with an image-text model")
    q.add_argument("--text-file", default=None, metavar="FILE",
                   help="a text file of queries in words, one a line (blank lines skipped)")
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
    g.add_argument("--collapse-duplicates", action="store_true",
                   help="at most one image of each near-duplicate group (the best scoring; "
                        "needs scripts/08_duplicates.py)")
    o = p.add_argument_group("output")
    o.add_argument("--json", action="store_true",
                   help='one JSON object per query per line: {"query": ..., "results": '
                        '[{"id", "key", "score"}, ...]}')
    o.add_argument("--out", default=None, metavar="PAGE",
                   help="write the results as an HTML page (.html) or a PNG sheet (.png)")
    _store_arguments(p, scratch=True)
    return p


def run_search(a: argparse.Namespace) -> int:
    import json

    import numpy as np

    from .report.gallery import write_results_page
    from .search.query import TextQuery, read_text_queries
    from .search.searcher import Searcher
    texts = [*a.text, *(read_text_queries(a.text_file) if a.text_file else [])]
    queries: list = [*a.id, *a.query, *map(TextQuery, texts)]
    if a.vectors:
        try:
            queries.append(np.load(a.vectors))
        except (OSError, ValueError) as e:
            raise WorkflowError(f"--vectors {a.vectors}: cannot read it as a .npy array "
                                f"({e})") from None
    if not queries:
        raise WorkflowError("nothing to search for: give --query IMAGE, --id N, --text WORDS "
                            "or --vectors")
    searcher = Searcher(a.store, a.scratch)
    results = searcher.search(queries, k=a.k, mode=a.mode, exclude_self=a.exclude_self,
                              collapse_duplicates=a.collapse_duplicates, nprobe=a.nprobe,
                              rerank=a.rerank, annoy=a.annoy, search_k=a.search_k)
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
                                  f"top {a.k}, "
                                  f"{a.mode or searcher.mode_for(len(texts) == len(queries))}")
        print(f"result page: {path}", file=sys.stderr)
    return EXIT_OK


def status_parser() -> argparse.ArgumentParser:
    p = _parser("workflow status", "Print where every stage stands in a store (read-only).",
                log_level="WARNING")
    _store_arguments(p)
    return p


def run_status(a: argparse.Namespace) -> int:
    from .stages.status import status_report
    from .storage.store import Store
    print(status_report(Store(a.store, create=False)))
    return EXIT_OK


def reset_parser() -> argparse.ArgumentParser:
    from .formats.layout import STAGE_NAMES
    p = _parser("workflow reset", (
        "Delete one stage's outputs, markers and frozen settings, so that it can be run "
        "again with other settings. Later stages built on it must be reset too."))
    p.add_argument("stage", choices=STAGE_NAMES)
    _store_arguments(p)
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    return p


def run_reset(a: argparse.Namespace) -> int:
    from .stages.status import reset_stage
    from .storage.store import Store
    store = Store(a.store, create=False)
    if not a.yes:
        if not sys.stdin.isatty():
            raise WorkflowError("reset deletes data: pass --yes to confirm")
        if input(f"delete the {a.stage} stage's outputs in {store.url}? [y/N] ").lower() != "y":
            return EXIT_ERROR
    removed = reset_stage(store, a.stage)
    print(f"reset {a.stage}: removed {', '.join(removed) or 'nothing'}")
    return EXIT_OK


def remove_parser() -> argparse.ArgumentParser:
    p = _parser("workflow remove", (
        "Take images out of every search result, evaluation and thumbnail (a deleted "
        "photo, a takedown), or bring them back with --restore. Nothing is rebuilt: "
        "searches leave removed ids out as they run. Ids are listed by `search`; keys are "
        "the images' paths within their source."))
    _store_arguments(p)
    p.add_argument("--id", type=int, nargs="+", action="extend", default=[], metavar="N",
                   help="image ids")
    p.add_argument("--key", nargs="+", action="extend", default=[], metavar="K",
                   help="image keys")
    p.add_argument("--source", nargs="+", action="extend", default=[], metavar="SRC",
                   help="every image of a source (e.g. one that --update should drop)")
    p.add_argument("--missing", action="store_true", help="the images whose files were "
                   "gone at the last `01_preprocess.py --update`")
    p.add_argument("--from-file", metavar="F", help="a text file of one image a line: "
                   "`id<TAB>key` (as duplicates/remove-list.txt: the key is checked against "
                   "the id), an id, or a key as it is; blank lines and # lines that are no "
                   "key are skipped")
    p.add_argument("--restore", action="store_true", help="bring the named images back")
    p.add_argument("--scratch", default=None, help="local scratch folder")
    return p


def run_remove(a: argparse.Namespace) -> int:
    from .stages.remove import Selection, remove
    from .storage.store import Store
    sel = Selection(tuple(a.id), tuple(a.key), a.missing, a.from_file, tuple(a.source))
    print(remove(Store(a.store, a.scratch, create=False), sel, a.restore).summary())
    return EXIT_OK


def serve_parser() -> argparse.ArgumentParser:
    p = _parser("workflow serve", (
        "Serve a finished store over HTTP: a page to search by dropping an image or "
        "clicking a result (/), a JSON API (POST /search, GET /image/ID, /items/ID, "
        "/health, /status, /metrics; OpenAPI docs at /docs). The index, re-rank store and "
        "prefilter are opened once and memory-mapped; the model is loaded by the first "
        "image query (or at start, with --preload). Ctrl-C stops it."))
    _store_arguments(p, scratch=True)
    p.add_argument("--host", default="127.0.0.1", help="address to bind [default: "
                   "%(default)s: this machine only; the service has no authentication]")
    p.add_argument("--port", type=int, default=8080, help="[default: %(default)s]")
    p.add_argument("--preload", action="store_true", help="load the model at start")
    p.add_argument("--max-upload-mb", type=float, default=20.0, help="larger uploads get "
                   "413 [default: %(default)s]")
    p.add_argument("--max-concurrent", type=int, default=2, help="searches computing at "
                   "once; the others wait [default: %(default)s]")
    p.add_argument("--queue-timeout", type=float, default=10.0, help="seconds a request "
                   "may wait for a slot before it gets 503 [default: %(default)s]")
    p.add_argument("--cache-size", type=int, default=1024, help="results kept in the "
                   "query cache [default: %(default)s]")
    return p


def run_serve(a: argparse.Namespace) -> int:
    from .service.app import Limits
    from .service.server import ServeConfig, serve
    if a.max_upload_mb <= 0 or a.max_concurrent < 1 or a.queue_timeout <= 0 or \
            not 0 <= a.port <= 65535:
        raise WorkflowError("--max-upload-mb and --queue-timeout must be positive, "
                            "--max-concurrent at least 1, --port 0..65535")
    serve(ServeConfig(a.store, a.scratch, a.host, a.port, a.preload, a.cache_size,
                      Limits(a.max_upload_mb, a.max_concurrent, a.queue_timeout)))
    return EXIT_OK


# ------------------------------------------------------------------ running a command

COMMANDS: dict[str, tuple[Callable, Callable]] = {
    "all": (all_parser, run_all),
    **{name: (functools.partial(stage_parser, name), functools.partial(run_stage, name))
       for name in STAGE_COMMANDS},
    "search": (search_parser, run_search),
    "status": (status_parser, run_status),
    "reset": (reset_parser, run_reset),
    "remove": (remove_parser, run_remove),
    "serve": (serve_parser, run_serve),
}


def _quiet_py4j_retries(record: logging.LogRecord) -> bool:
    """Py4J logs a retried command on the root logger, with a traceback, at INFO."""
    return record.levelno >= logging.WARNING or f"{os.sep}py4j{os.sep}" not in record.pathname


def setup_logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, level), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    if level != "DEBUG":  # PySpark's gateway logs every connection it closes or retries
        logging.getLogger("py4j").setLevel(logging.WARNING)
        for handler in logging.getLogger().handlers:
            handler.addFilter(_quiet_py4j_retries)
    if blas.state["kernel"]:
        logger.info("Faiss's OpenBLAS: the %s kernel (%s)", blas.state["kernel"],
                    blas.state["why"])
    else:
        logger.debug("Faiss's OpenBLAS: its own kernel choice (%s)", blas.state["why"])


def run_command(name: str, argv: Sequence[str] | None) -> int:
    """Parse argv for command `name`, run it, and turn errors into exit codes."""
    make_parser, func = COMMANDS[name]
    args = make_parser().parse_args(argv)
    setup_logging(args.log_level)
    try:
        with logging_redirect_tqdm():
            _use_storage_options(args)
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
    except Exception as e:
        if not is_transient(e):  # an object store client's network error (botocore's)
            raise
        logger.error("the connection to the object store failed (%s: %s). Check that it "
                     "runs and is reachable from here (for s3://, the endpoint comes from "
                     "AWS_ENDPOINT_URL or endpoint_url in --storage-options), then re-run "
                     "the same command: finished work is kept", type(e).__name__, e)
        return EXIT_ERROR


def _use_storage_options(args: argparse.Namespace) -> None:
    """--storage-options for every store and source the command opens (the stages apply
    them again in their workers)."""
    if getattr(args, "storage_options", None):
        from .storage.options import use_storage_options
        use_storage_options(args.storage_options,
                            [args.store, *(getattr(args, "sources", None) or ())])


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print("usage: python -m workflow {" + ",".join(COMMANDS) + "} [options]\n"
              "       python -m workflow COMMAND --help   for the options of one command")
        return EXIT_OK if argv and argv[0] in ("-h", "--help") else EXIT_ERROR
    return run_command(argv[0], argv[1:])
