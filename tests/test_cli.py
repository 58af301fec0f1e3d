"""The command line, derived from the config fields: every option once, with the config's
default; validation messages that name the flag; run_all's configs built stage by stage."""
from __future__ import annotations

import dataclasses
import re
import subprocess
import sys

import pytest

from workflow import cli
from workflow.options import config_from, dest_of, flag_of
from workflow.pipeline import all_parser, stage_configs
from workflow.stages.add import AddConfig
from workflow.stages.evaluate import EvaluateConfig
from workflow.stages.extract import ExtractConfig
from workflow.stages.prefilter import PrefilterConfig
from workflow.stages.preprocess import PreprocessConfig
from workflow.stages.train import TrainConfig

from conftest import ROOT

STAGE_CONFIGS = {"preprocess": PreprocessConfig, "extract": ExtractConfig,
                 "train": TrainConfig, "add": AddConfig, "prefilter": PrefilterConfig,
                 "evaluate": EvaluateConfig}


def _options(cls) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(cls) if "cli" in f.metadata]


@pytest.mark.parametrize("stage", STAGE_CONFIGS)
def test_a_parser_offers_every_option_of_its_config_with_the_config_default(stage):
    cls = STAGE_CONFIGS[stage]
    parser = cli.COMMANDS[stage][0]()
    flags = {s for a in parser._actions for s in a.option_strings}
    for f in _options(cls):
        assert flag_of(cls, f.name) in flags, f.name
    given = ["--source", "x"] if stage == "preprocess" else []
    cfg = config_from(cls, parser.parse_args(given))
    default = cls(**({"sources": ("x",)} if stage == "preprocess" else {}))
    assert cfg == default


@pytest.mark.parametrize("stage,args,message", [
    ("preprocess", ["--source", "x", "--shard-size", "0"], "--shard-size must be at least 1"),
    ("extract", ["--input-size", "8"], "--input-size must be >= 32"),
    ("train", ["--nlist", "0"], "--nlist must be at least 1"),
    ("add", ["--workers", "0"], "--workers must be at least 1"),
    ("prefilter", ["--trees", "0"], "--trees must be >= 1"),
    ("evaluate", ["--target-recall", "1.5"], "--target-recall must be in (0, 1]"),
    ("train", ["--max-minutes", "-1"], "--max-minutes must be positive"),
])
def test_a_bad_value_is_refused_naming_its_flag(stage, args, message):
    cls = STAGE_CONFIGS[stage]
    with pytest.raises(Exception, match=re.escape(message)):
        config_from(cls, cli.COMMANDS[stage][0]().parse_args(args)).validate()


def test_run_all_builds_one_config_per_stage_from_one_command_line():
    a = all_parser().parse_args(["--source", "s", "--store", "st", "--workers", "4",
                                 "--seed", "3", "--annoy-seed", "5", "--queries", "7",
                                 "--memory-budget", "2G", "--batch-size", "16"])
    c = stage_configs(a)
    assert {type(v) for v in c.values()} == set(STAGE_CONFIGS.values())
    assert all(cfg.store == "st" for cfg in c.values())
    assert c["preprocess"].workers == 4 and c["preprocess"].executor == "process"
    assert c["extract"].workers == 3 and c["extract"].executor == "auto"
    assert (c["extract"].model, c["extract"].weights) == ("efficientnet-b0", "imagenet")
    assert c["extract"].batch_size == 16 and c["evaluate"].batch_size == 256
    assert c["train"].seed == 3 and c["prefilter"].seed == 5 and c["evaluate"].seed == 0
    assert c["train"].memory_budget == c["add"].memory_budget == 2 << 30
    assert c["add"].executor == "local" and c["evaluate"].queries == 7
    spark = stage_configs(all_parser().parse_args(["--executor", "spark"]), weights="none")
    assert spark["add"].executor == spark["extract"].executor == "spark"
    assert spark["extract"].weights == "none"


def test_the_same_field_under_two_flags_keeps_two_destinations():
    assert dest_of(PrefilterConfig, "seed") == "annoy_seed"
    assert dest_of(EvaluateConfig, "seed") == "eval_seed"
    assert dest_of(TrainConfig, "seed") == "seed"


@pytest.mark.parametrize("script", ["01_preprocess", "02_extract", "03_train", "04_add",
                                    "05_prefilter", "06_search", "07_evaluate", "run_all"])
def test_help_explains_every_option_and_quotes_no_measurements(script):
    r = subprocess.run([sys.executable, f"scripts/{script}.py", "--help"], cwd=ROOT,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    text = r.stdout
    assert "--store" in text and "--log-level" in text
    # figures go stale: they belong in BENCHMARKS.md, not in --help
    assert not re.search(r"\d[\d,.]*\s*(images/s|queries/s|ms\b)|\d(\.\d+)?x\b", text), text
