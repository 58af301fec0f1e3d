"""Where everything lives in a store: the stages in order, the folders each commits
into, and the names of the public files. Store internals (`run.json`, `_done/`,
`_leases/`) are named in `workflow.storage`."""
from __future__ import annotations

from typing import NamedTuple

PREPROCESS, EXTRACT, TRAIN, ADD, PREFILTER, EVALUATE, DUPLICATES = (
    "preprocess", "extract", "train", "add", "prefilter", "evaluate", "duplicates")

# preprocess
IMAGES = "images"
PLAN_FILE = f"{IMAGES}/plan.h5"
REPORT_FILE = f"{IMAGES}/report.json"
MISSING_FILE = f"{IMAGES}/missing.json"
# extract
FEATURES = "features"
# train
TRAINED = "trained"
TRAINED_INDEX_FILE = f"{TRAINED}/index.faiss"
PCA_FILE = f"{TRAINED}/pca.faiss"
# add
INDEX = "index"
PARTS = f"{INDEX}/parts"
INDEX_FILE = f"{INDEX}/index.faiss"
IVFDATA_FILE = f"{INDEX}/index.ivfdata"
RERANK_FILE = f"{INDEX}/rerank.npy"
# prefilter
PREFILTER_DIR = "prefilter"
ANNOY_FILE = f"{PREFILTER_DIR}/annoy.ann"
# evaluate
EVALUATION = "evaluation"
GT_FILE = f"{EVALUATION}/groundtruth.npz"
GT_PARTIAL_FILE = f"{EVALUATION}/groundtruth-partial.npz"
REPORT_JSON = f"{EVALUATION}/report.json"
REPORT_MD = f"{EVALUATION}/report.md"
PLOT_FILE = f"{EVALUATION}/recall_vs_qps.png"
DEFAULTS_FILE = f"{EVALUATION}/search_defaults.json"
RESULTS_PAGE = f"{EVALUATION}/results.html"
# duplicates
DUP_DIR = "duplicates"
DUP_KNN = f"{DUP_DIR}/knn"
GROUPS_FILE = f"{DUP_DIR}/groups.json"
GROUPS_CSV = f"{DUP_DIR}/groups.csv"
REMOVE_LIST = f"{DUP_DIR}/remove-list.txt"
CALIBRATION_FILE = f"{DUP_DIR}/calibration.json"
NEAREST_PNG = f"{DUP_DIR}/nearest.png"
DUP_PAGES = f"{DUP_DIR}/report"
# remove (a command, not a stage: the removal list is kept beside the stages' outputs)
REMOVE = "remove"
REMOVED = "removed"


class StageInfo(NamedTuple):
    """A stage and every folder it commits into (its first folder holds the others)."""
    name: str
    folders: tuple[str, ...]


STAGES = (
    StageInfo(PREPROCESS, (IMAGES,)),
    StageInfo(EXTRACT, (FEATURES,)),
    StageInfo(TRAIN, (TRAINED,)),
    StageInfo(ADD, (INDEX, PARTS)),
    StageInfo(PREFILTER, (PREFILTER_DIR,)),
    StageInfo(EVALUATE, (EVALUATION,)),
    StageInfo(DUPLICATES, (DUP_DIR, DUP_KNN, DUP_PAGES)),
)
STAGE_NAMES = tuple(s.name for s in STAGES)


def stage_folders(stage: str) -> tuple[str, ...]:
    return next(s.folders for s in STAGES if s.name == stage)


def plan_unit(version: int) -> str:
    """The unit of plan segment `version`: `plan` for the first, `plan-000002` after."""
    return "plan" if version == 1 else f"plan-{version:06d}"


def plan_file(version: int) -> str:
    return PLAN_FILE if version == 1 else f"{IMAGES}/{plan_unit(version)}.h5"


def shard_name(i: int) -> str:
    """The unit name of shard i, used by every stage: `shard-00042`."""
    return f"shard-{i:05d}"


def is_shard(unit: str) -> bool:
    return unit.startswith("shard-")


def sweep_file(mode: str) -> str:
    return f"{EVALUATION}/sweep-{mode}.npz"
