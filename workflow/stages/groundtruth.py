"""The evaluate stage's queries and their exact results: a seeded sample of corpus images
or a folder of query images, and, for a store of an image-text model, queries in words
(the lines of --text-queries, or a prompt per class folder); each kind's exact top K_GT
over the feature shards, checkpointed while it runs (`groundtruth[-text]-partial.npz`)
and committed as `groundtruth[-text].npz`."""
from __future__ import annotations

import hashlib
import json
import logging
import time

import numpy as np
from tqdm.auto import tqdm

from ..errors import WorkflowError
from ..formats.evaluation import commit_npz, load_npz, of_corpus
from ..formats.evaluation import corpus_id as make_corpus_id
from ..formats.features import feature_markers, fetch_features
from ..formats.layout import EVALUATE, EVALUATION, GT_FILE, GT_PARTIAL_FILE
from ..formats.plan import corpus_version
from ..formats.removed import removal_version
from ..index.knn import drop_ids, exact_search, merge_topk
from ..index.metrics import class_label, labelled
from ..search import measure as meter
from ..search.query import embed_query_dir, read_text_queries, require_text_tower
from ..search.searcher import Searcher
from ..storage.store import Store
from ..utils import Timeit
from .base import StageRun

logger = logging.getLogger(__name__)

STAGE = EVALUATE
K_GT = 100
TEXT = "-text"  # the units and files of the queries in words: groundtruth-text, sweep-text-*
TEXT_PROMPT = "a photo of a {folder}"
TEXT_BATCH = 64  # texts embedded at a time


def sha(obj) -> str:
    return hashlib.sha256(json.dumps(obj).encode()).hexdigest()[:16]


def queries(run: StageRun, searcher: Searcher) -> dict:
    """The queries and their exact top K_GT: from the store, or computed and committed."""
    cfg, store = run.cfg, run.store
    corpus = corpus_id(store)
    if not of_corpus(store.marker(STAGE, "groundtruth"), corpus):
        _, removed = searcher.removals()
        if cfg.query_dir:
            qids, xq, qkeys = embed_query_dir(cfg.query_dir, searcher.embedder,
                                                   cfg.progress)
        else:
            qids = meter.sample_query_ids(searcher.xb, cfg.queries, cfg.seed, removed)
            xq = np.asarray(searcher.xb[qids], np.float32)
            qkeys = np.array([f"id:{i}" for i in qids])
        D, I = _ground_truth(run, xq, qids, removed, corpus, "")
        commit_npz(store, GT_FILE, "groundtruth", run.fp, {"n": len(qids), "corpus": corpus},
                   query_ids=qids, query_keys=qkeys, xq=xq, D=D, I=I)
    _drop_partial(store, "")
    return load_npz(store, store.marker(STAGE, "groundtruth"))


def _partial_file(kind: str) -> str:
    return GT_PARTIAL_FILE if not kind else f"{EVALUATION}/groundtruth{kind}-partial.npz"


def _drop_partial(store: Store, kind: str) -> None:
    """The checkpoint of a finished ground truth, marker and file: on every run, as a
    kill between the ground truth's commit and this may have left either."""
    store.remove_marker(STAGE, f"groundtruth{kind}-partial", remove_file=True)
    if store.exists(_partial_file(kind)):
        store.remove(_partial_file(kind))


def corpus_id(store: Store) -> str:
    """The corpus the store holds now (`formats.evaluation.corpus_id`)."""
    return make_corpus_id(corpus_version(store), removal_version(store))


def _resume_ground_truth(run: StageRun, qids: np.ndarray, shape: tuple, corpus: str,
                         kind: str):
    """(D, I, shards done) of a checkpoint of this ground truth, or a fresh start."""
    D, I = np.full(shape, -np.inf, np.float32), np.full(shape, -1, np.int64)
    pm = run.store.marker(STAGE, f"groundtruth{kind}-partial")
    if of_corpus(pm, corpus):
        f = load_npz(run.store, pm)
        if f["D"].shape == D.shape and np.array_equal(f["qids"], qids):
            return f["D"], f["I"], list(pm.extra["done"])
    return D, I, []


def _ground_truth(run: StageRun, xq: np.ndarray, qids: np.ndarray, removed: np.ndarray,
                  corpus: str, kind: str):
    """Exact top K_GT per query (own id left out) over the feature shards, block by block;
    the partial result is committed every `checkpoint_seconds`, so a kill costs little.
    `kind`: "" for the image queries, TEXT for those in words."""
    cfg, store = run.cfg, run.store
    feats = feature_markers(store)
    kk = K_GT + 1
    partial_file = _partial_file(kind)
    D, I, done = _resume_ground_truth(run, qids, (len(xq), kk), corpus, kind)
    if done:
        logger.info("evaluate: exact search resumes after %d of %d shards", len(done),
                    len(feats))
    last = time.monotonic()
    with Timeit(f"exact top {K_GT} of {len(xq):,} queries", logging.INFO), \
            tqdm(total=len(feats), initial=len(done), unit="shard", desc="exact search",
                 disable=not cfg.progress, mininterval=1.0) as bar:
        for unit in [u for u in feats if u not in done]:
            run.check_deadline()
            ids, x = fetch_features(store, feats[unit], run.work)
            keep = ~removed[ids]
            ids, x = (ids, x) if keep.all() else (ids[keep], x[keep])
            D, I = merge_topk(D, I, *exact_search(xq, [(ids, x)], kk), kk)
            done.append(unit)
            bar.update(1)
            if time.monotonic() - last >= cfg.checkpoint_seconds and len(done) < len(feats):
                run.lease.check()
                commit_npz(store, partial_file, f"groundtruth{kind}-partial", run.fp,
                           {"done": done, "corpus": corpus}, D=D, I=I, qids=qids)
                last = time.monotonic()
    return drop_ids(D, I, np.where(qids >= 0, qids, -2), K_GT)


def texts(cfg, store: Store, searcher: Searcher):
    """(texts, their class folders or "", where they came from) for a store whose model
    has a text tower; None where it has none, or has no class folders to make prompts
    of and no --text-queries."""
    if cfg.text_queries:
        require_text_tower(store)  # a clear refusal, naming the models that have one
        texts = read_text_queries(cfg.text_queries, "--text-queries")
        if not texts:
            raise WorkflowError(f"--text-queries {cfg.text_queries}: no queries in it (one "
                                "a line, blank lines are skipped)")
        return texts, [""] * len(texts), cfg.text_queries
    if not takes_text(store):
        return None
    labels = class_labels(searcher)
    if labels is None:
        return None
    if not labelled(labels):
        logger.warning("evaluate: the corpus has no class folders to make queries in words "
                       "of; pass --text-queries FILE to measure their recall")
        return None
    classes = sorted(set(labels))
    texts = [cfg.text_prompt.format(folder=c.replace("_", " ").replace("-", " "))
             for c in classes]
    return texts, classes, f"{cfg.text_prompt!r}, one per class folder"


def takes_text(store: Store) -> bool:
    """Whether the store's model has a text tower."""
    try:
        require_text_tower(store)
    except WorkflowError:
        return False
    return True


def text_queries(run: StageRun, searcher: Searcher, texts: list[str], labels: list[str],
                  source: str) -> dict:
    """The queries in words, embedded, and their exact top K_GT: from the store, or
    computed and committed (the corpus and the texts identify them)."""
    store = run.store
    corpus = f"{corpus_id(store)}/text-{sha(texts)}"
    if not of_corpus(store.marker(STAGE, f"groundtruth{TEXT}"), corpus):
        _, removed = searcher.removals()
        with Timeit(f"embedding {len(texts):,} queries in words", logging.INFO):
            xq = np.vstack([searcher.embedder.embed_text(texts[lo:lo + TEXT_BATCH])
                            for lo in range(0, len(texts), TEXT_BATCH)]).astype(np.float32)
        qids = np.full(len(texts), -1, np.int64)
        D, I = _ground_truth(run, xq, qids, removed, corpus, TEXT)
        commit_npz(store, f"{EVALUATION}/groundtruth{TEXT}.npz", f"groundtruth{TEXT}",
                   run.fp, {"n": len(texts), "corpus": corpus, "source": source},
                   query_ids=qids, query_keys=np.array(texts), labels=np.array(labels),
                   xq=xq, D=D, I=I)
    _drop_partial(store, TEXT)
    q = load_npz(store, store.marker(STAGE, f"groundtruth{TEXT}"))
    return {**q, "corpus": corpus, "source": source}


def class_labels(searcher: Searcher) -> list[str] | None:
    """The class folder of every corpus image, or None where the store's plan cannot be
    read (a store without one has no folders)."""
    try:
        return [class_label(k) for k in searcher.plan_info[0]]
    except Exception as e:  # noqa: BLE001 - any unreadable plan means: no labels
        logger.info("no class labels: %s", e)
        return None
