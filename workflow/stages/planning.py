"""How the preprocess stage plans its work: the source list it freezes, the first plan
segment, and `--update`, which lists the sources again and commits the new images as the
next segment (`formats.plan`). Used by `stages.preprocess` only."""
from __future__ import annotations

import logging

import cv2
import numpy as np

from ..errors import ConfigError, FingerprintMismatch, SourceError
from ..formats.layout import PREPROCESS, plan_file, plan_unit
from ..formats.missing import commit_missing
from ..formats.plan import Plan, extend_plan, join, load_plan, make_plan, preprocess_complete
from ..formats.removed import load_removed
from ..inputs.sources import list_entries, resolve_sources
from ..storage.frozen import update_settings
from ..storage.store import Store
from .base import StageRun

logger = logging.getLogger(__name__)

STAGE = PREPROCESS


def settings_of(cfg, sources: list[str]) -> dict:
    """What determines the output bytes (and so the fingerprint)."""
    return {"sources": sources, "shard_size": cfg.shard_size, "image_size": cfg.image_size,
            "jpeg_quality": cfg.jpeg_quality, "max_pixels": cfg.max_pixels,
            "drop_duplicates": cfg.drop_duplicates, "shard_format": 1}


def versions() -> dict:
    """The library versions the output bytes depend on."""
    return {"opencv": cv2.__version__}


def source_urls(cfg, store: Store) -> list[str]:
    if cfg.sources:
        return [s.url for s in resolve_sources(cfg.sources)]
    if cfg.update:
        raise ConfigError("--update needs the complete --source list (old and new sources)")
    frozen = current_sources(store)
    if frozen is None:
        raise ConfigError("give at least one --source (a folder, list file, tar or zip)")
    logger.info("resuming with the frozen sources: %s", ", ".join(frozen))
    return frozen


def current_sources(store: Store) -> list[str] | None:
    """The source list of the latest plan segment (or of run.json before any plan)."""
    markers = store.markers(STAGE)
    for m in sorted((m for u, m in markers.items() if u.startswith("plan")),
                    key=lambda m: m.unit, reverse=True):
        if "sources" in m.extra:
            return m.extra["sources"]
    frozen = store.run_info()["stages"].get(STAGE)
    return None if frozen is None else frozen["settings"]["sources"]


def freeze(run: StageRun, sources: list[str]) -> str:
    """Freeze or check the settings. The source list may change only with --update (a
    list the latest plan segment already has is taken as frozen)."""
    cfg, store = run.cfg, run.store
    frozen = store.run_info()["stages"].get(STAGE)
    if frozen is None:
        return run.freeze(settings_of(cfg, sources), versions=versions())
    old = frozen["settings"]["sources"]
    latest = current_sources(store) if sources != old else old
    if sources != old and not cfg.update and sources != latest:
        raise FingerprintMismatch(
            f"the --source list differs from the one this store was built from ({', '.join(old)}). "
            "If your collection changed, re-run with --update and the complete list (old "
            "and new sources): the new images are added, nothing done is redone. Otherwise "
            "give the frozen list (or none) to resume.")
    fp = run.freeze(settings_of(cfg, old), versions=versions(),
                    pending=not preprocess_complete(store))
    if sources != old and sources == latest:
        update_settings(store, STAGE, sources=sources)
    return fp


def load_or_make_plan(run: StageRun, source_urls: list[str], fp: str) -> Plan:
    store, local = run.store, run.work / "plan.h5"
    if store.marker(STAGE, "plan") is not None:
        plan = load_plan(store, local)
        return update_plan(run, plan, source_urls, fp) if run.cfg.update else plan
    sources = resolve_sources(source_urls)
    plan = make_plan(sources, [list_entries(s) for s in sources], run.cfg.shard_size)
    if plan.n == 0:
        raise ConfigError(f"no images found in {', '.join(source_urls)} (looked for files "
                          "with image extensions such as .jpg, .png, .webp, any case)")
    for s in sources:
        if s.streaming and plan.n_shards > 1:
            logger.warning("%s is compressed: every shard re-reads it from the start. "
                           "Repack it as an uncompressed .tar (JPEGs do not compress) for "
                           "faster runs.", s.url)
    _commit_segment(store, plan, local, fp)
    return join([plan])


def _commit_segment(store: Store, seg: Plan, local, fp: str) -> None:
    seg.save(str(local))
    store.commit(local, plan_file(seg.segment), STAGE, plan_unit(seg.segment), fp,
                 {"n": seg.n, "shards": seg.n_shards, "first_id": seg.first_id,
                  "sources": [s.url for s in seg.sources]})


def update_plan(run: StageRun, plan: Plan, source_urls: list[str], fp: str) -> Plan:
    """--update: list the sources again; commit the new items as the next plan segment
    and record the planned items whose files are gone."""
    store = run.store
    sources = resolve_sources(source_urls)
    seg, missing = extend_plan(plan, sources, [list_entries(s) for s in sources],
                               run.cfg.shard_size)
    gone, problems = check_dropped(store, plan, source_urls)
    commit_missing(store, plan.keys, sorted(set(missing + gone)), plan.segment, fp)
    if problems:
        raise SourceError("--update leaves out source(s) whose images are still in the "
                          "index:\n  " + "\n  ".join(problems))
    if seg is None:
        logger.info("preprocess --update: no new images in the sources")
        return plan
    logger.info("preprocess --update: %d new images in %d new shards (corpus version %d)",
                seg.n, seg.n_shards, seg.segment)
    run.freeze(settings_of(run.cfg, store.run_info()["stages"][STAGE]["settings"]["sources"]),
               versions=versions(), pending=True, clean=False)
    _commit_segment(store, seg, run.work / f"{plan_unit(seg.segment)}.h5", fp)
    update_settings(store, STAGE, sources=source_urls)
    return load_plan(store, run.work / "plan.h5")


def check_dropped(store: Store, plan: Plan, source_urls: list[str]):
    """(ids of a dropped source that is gone, a problem line per dropped source whose
    images are still in the index)."""
    _, removed = load_removed(store)
    gone, problems = [], []
    for k, src in enumerate(plan.sources):
        if src.url in source_urls or src.url not in plan.current:
            continue
        left = np.setdiff1d(np.flatnonzero(plan.source_idx == k), removed)
        if not len(left):
            continue
        if _exists(src.url):
            problems.append(f"{src.url}: {len(left):,} images. Give it back with --source, "
                            f"or take them out first: `python -m workflow remove --store "
                            f"{store.url} --source {src.url}`")
        else:
            gone += left.tolist()
            problems.append(f"{src.url} is gone, with {len(left):,} images: `python -m "
                            f"workflow remove --store {store.url} --missing` takes them out "
                            "(they are recorded as missing), then re-run this --update")
    return gone, problems


def _exists(url: str) -> bool:
    import fsspec
    fs, path = fsspec.core.url_to_fs(url)
    return bool(fs.exists(path))
