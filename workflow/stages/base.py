"""The scaffold every stage shares: its run-control settings (`StageConfig`) and the
context it runs in (`StageRun`: store, lease, frozen fingerprint, cleanup, deadline).

    with StageRun(STAGE, cfg) as run:
        fp = run.freeze(settings, parent)   # settings frozen, leftovers removed
        for unit in pending:
            run.check_deadline(expected_seconds)
            ...
            run.lease.check()

`--max-minutes` means the same in every stage: a stage with many units stops before a
unit that would not finish in time (`DeadlineReached`, exit status 3, resumable); a
single-unit stage (train, prefilter) does not start its one unit when its estimate does
not fit (`fits`).
"""
from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from functools import cached_property

from ..errors import DeadlineReached, check_settings
from ..formats.layout import PREPROCESS, REMOVE, REMOVED, STAGES, stage_folders
from ..options import DEFAULT_STORE, flag_of, opt
from ..storage.lease import LEASE_DIR, Lease
from ..storage.options import STORAGE_OPTIONS_HELP, use_storage_options
from ..storage.store import DONE_DIR, Store

logger = logging.getLogger(__name__)

RUN_CONTROL = "store and run control"


@dataclass(frozen=True)
class StageConfig:
    """The settings every stage has, then the stage's own (subclasses add fields)."""
    store: str = opt(DEFAULT_STORE, "store root: a local folder (e.g. a mounted Drive "
                     "folder) or an fsspec URL (gs://, s3://, memory://)", group=RUN_CONTROL)
    storage_options: str | None = opt(None, STORAGE_OPTIONS_HELP, metavar="JSON",
                                      group=RUN_CONTROL)
    scratch: str | None = opt(None, "local scratch folder for work in progress (default: "
                              "$WORKFLOW_SCRATCH or a folder under /tmp)", group=RUN_CONTROL)
    max_minutes: float | None = opt(None, "stop cleanly after about this many minutes (exit "
                                    "status 3); re-running resumes", type=float,
                                    group=RUN_CONTROL)
    takeover: bool = opt(False, "take the stage's lease even if another run seems to hold "
                         "it", action="store_true", group=RUN_CONTROL)
    wait_minutes: float = opt(0.0, "if another run holds the stage, wait up to this long for "
                              "it to finish instead of stopping at once", type=float,
                              group=RUN_CONTROL)
    accept_new_versions: bool = opt(False, "go on with work a stage started under other "
                                    "library versions (e.g. OpenCV upgraded by the runtime); "
                                    "recorded in the store", action="store_true",
                                    group=RUN_CONTROL)
    progress: bool = opt(True, "no progress bar", flag="--no-progress", action="store_false",
                         group=RUN_CONTROL)

    def checks(self) -> list[tuple[bool, str]]:
        """The stage's own (ok, message) checks; subclasses extend this list."""
        return [(self.max_minutes is None or self.max_minutes > 0,
                 "--max-minutes must be positive"),
                (self.wait_minutes >= 0, "--wait-minutes must be >= 0")]

    def urls(self) -> tuple[str, ...]:
        """Where the stage reads and writes: the store, then its sources (if any)."""
        return (self.store,)

    def require(self, name: str, ok: bool, what: str) -> tuple[bool, str]:
        """A check whose message names the field's flag: `require("workers", w >= 1,
        "must be at least 1")`."""
        return ok, f"{flag_of(self, name)} {what}"

    def validate(self):
        check_settings(self.checks())
        return self


class StageRun:
    """The context of one run of a stage: validated settings, the store, the lease held,
    the deadline. `freeze` records (or checks) the settings and removes the leftovers of
    interrupted commits in every folder the stage commits into."""

    def __init__(self, stage: str, cfg: StageConfig):
        self.stage, self.cfg = stage, cfg.validate()
        self.t0 = time.monotonic()
        self.deadline = self.t0 + cfg.max_minutes * 60 if cfg.max_minutes else None
        use_storage_options(cfg.storage_options, cfg.urls())
        self.store = Store(cfg.store, cfg.scratch)
        # the store as an absolute path: a Spark executor runs in a folder of its own
        self.cfg = dataclasses.replace(self.cfg, store=self.store.url)
        self.lease = Lease(self.store, stage, takeover=cfg.takeover,
                           wait=cfg.wait_minutes * 60)
        self.fp: str | None = None

    def __enter__(self) -> StageRun:
        self.lease.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.lease.__exit__(*exc)

    @property
    def seconds(self) -> float:
        return time.monotonic() - self.t0

    @cached_property
    def work(self):
        """This stage's folder in local scratch (created)."""
        path = self.store.scratch / self.stage
        path.mkdir(parents=True, exist_ok=True)
        return path

    def frozen_fingerprint(self, stage: str) -> str | None:
        frozen = self.store.run_info()["stages"].get(stage)
        return None if frozen is None else frozen["fingerprint"]

    def freeze(self, settings: dict, parent: str | None = None, clean: bool = True,
               versions: dict | None = None, pending: bool = True) -> str:
        """Freeze (or check) the stage's settings; then remove leftovers. Library
        `versions` are held to the frozen ones only where work is `pending`. Returns the
        stage fingerprint."""
        self.fp = self.store.freeze_stage(self.stage, settings, parent, versions=versions,
                                          pending=pending,
                                          accept_new_versions=self.cfg.accept_new_versions)
        if clean:
            self.cleanup()
        return self.fp

    def cleanup(self) -> list[str]:
        """Leftovers of interrupted commits in every folder the stage commits into."""
        return self.store.cleanup(self.stage, stage_folders(self.stage))

    def check_deadline(self, expected: float = 0.0) -> None:
        """Raise DeadlineReached when a unit expected to take `expected` seconds would end
        past --max-minutes."""
        if self.deadline is not None and time.monotonic() + expected > self.deadline:
            raise DeadlineReached()

    def fits(self, estimate: float) -> bool:
        """Whether a single unit estimated at `estimate` seconds fits in --max-minutes."""
        if self.deadline is None or time.monotonic() + estimate <= self.deadline:
            return True
        logger.warning("%s: the estimated %.0f s do not fit in --max-minutes %g; run it "
                       "when there is more time", self.stage, estimate, self.cfg.max_minutes)
        return False

    def stopped_early(self) -> None:
        logger.warning("%s: --max-minutes reached; re-run the same command to resume",
                       self.stage)


def task_store(cfg: StageConfig, scratch: str) -> Store:
    """The store, opened by a task in a worker process or on a Spark executor, with the
    stage's --storage-options applied there first."""
    use_storage_options(cfg.storage_options, cfg.urls())
    return Store(cfg.store, scratch)


def reset_stage(store: Store, stage: str, keep_lease: bool = False) -> list[str]:
    """Delete a stage's outputs, markers and frozen settings, and its lease unless
    `keep_lease` (the stage resetting itself holds it); returns what was removed.
    Resetting preprocess deletes the removal list too: its ids named the old plan's."""
    info = next(s for s in STAGES if s.name == stage)
    removed = []
    also = (REMOVED, f"{DONE_DIR}/{REMOVE}") if stage == PREPROCESS else ()
    lease = () if keep_lease else (f"{LEASE_DIR}/{stage}.json",)
    for rel in (info.folders[0], f"{DONE_DIR}/{stage}", *lease, *also):
        if store.exists(rel):
            store.remove(rel)
            removed.append(rel)
    store.forget_stage(stage)
    return removed
