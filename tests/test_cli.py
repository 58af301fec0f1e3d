"""The command line, derived from the config fields: every option once, with the config's
default; validation messages that name the flag; run_all's configs built stage by stage,
under one --max-minutes deadline for the whole job."""
from __future__ import annotations

import dataclasses
import logging
import re
import subprocess
import sys
from types import SimpleNamespace

import pytest

from workflow import cli, pipeline
from workflow.options import EXIT_OK, EXIT_RESUMABLE, config_from, dest_of, flag_of
from workflow.pipeline import all_parser, run_all, stage_configs
from workflow.stages.add import AddConfig
from workflow.stages.duplicates import DuplicatesConfig
from workflow.stages.evaluate import EvaluateConfig
from workflow.stages.extract import ExtractConfig
from workflow.stages.prefilter import PrefilterConfig
from workflow.stages.preprocess import PreprocessConfig
from workflow.stages.train import TrainConfig

from conftest import ROOT

STAGE_CONFIGS = {"preprocess": PreprocessConfig, "extract": ExtractConfig,
                 "train": TrainConfig, "add": AddConfig, "prefilter": PrefilterConfig,
                 "evaluate": EvaluateConfig, "duplicates": DuplicatesConfig}


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
    ("duplicates", ["--threshold", "0.9", "--slack", "0.95"], "--slack must be in [0, "),
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
    assert c["duplicates"].threshold is None and c["duplicates"].k == 10
    spark = stage_configs(all_parser().parse_args(["--executor", "spark"]), weights="none")
    assert spark["add"].executor == spark["extract"].executor == "spark"
    assert spark["extract"].weights == "none"


def _fake_stages(monkeypatch, takes: dict[str, float], stops_early: str | None = None):
    """Stages that take `takes[stage]` seconds of a fake clock (`stops_early` stops early
    for its deadline) and record the max_minutes each was given."""
    import workflow.report.gallery
    import workflow.stages.status
    clock, given = [1000.0], []
    monkeypatch.setattr(pipeline, "time", SimpleNamespace(monotonic=lambda: clock[0]))

    def fake(stage):
        def run(cfg):
            given.append((stage, cfg.max_minutes))
            clock[0] += takes.get(stage, 1.0)
            return SimpleNamespace(complete=stage != stops_early,
                                   summary=lambda: f"{stage} done")
        return run
    for stage in pipeline.STAGE_NAMES:
        monkeypatch.setattr(f"workflow.stages.{stage}.run", fake(stage))
    monkeypatch.setattr(workflow.stages.status, "status_report", lambda store: "status")
    monkeypatch.setattr(workflow.report.gallery, "commit_results_page", lambda store: "page")
    return given


def _run_all(tmp_path, *args) -> int:
    return run_all(all_parser().parse_args(["--source", "s", "--store", str(tmp_path / "st"),
                                            "--scratch", str(tmp_path / "sc"), *args]))


def test_run_all_max_minutes_is_one_deadline_for_the_whole_job(tmp_path, monkeypatch):
    given = _fake_stages(monkeypatch, {"preprocess": 240}, stops_early="extract")
    assert _run_all(tmp_path, "--max-minutes", "10") == EXIT_RESUMABLE
    # extract got what preprocess left, stopped early, and nothing after it started
    assert given == [("preprocess", 10), ("extract", 6)]
    given = _fake_stages(monkeypatch, {})
    assert _run_all(tmp_path) == EXIT_OK  # no deadline: every stage, none given one
    assert given == [(stage, None) for stage in pipeline.STAGE_NAMES]


def test_run_all_stops_before_a_stage_when_no_time_is_left(tmp_path, monkeypatch, caplog):
    given = _fake_stages(monkeypatch, {"preprocess": 120, "extract": 190})  # 5 min in all
    with caplog.at_level(logging.WARNING, logger="workflow"):
        assert _run_all(tmp_path, "--max-minutes", "5") == EXIT_RESUMABLE
    assert given == [("preprocess", 5), ("extract", 3)]  # both complete; train never starts
    assert "--max-minutes 5 used up before the train stage" in caplog.text
    assert "re-run the same command (python scripts/run_all.py" in caplog.text


def test_an_object_store_client_network_error_is_exit_2_with_a_message(monkeypatch, caplog):
    """Where a network error of the object store's client (botocore's, no OSError)
    escapes the store's retries (a source being listed), it is exit status 2 and one
    message, not a traceback."""
    botocore = pytest.importorskip("botocore.exceptions")

    def refused(_args):
        raise botocore.EndpointConnectionError(endpoint_url="http://127.0.0.1:9/src")
    monkeypatch.setitem(cli.COMMANDS, "status", (cli.status_parser, refused))
    with caplog.at_level(logging.ERROR, logger="workflow"):
        assert cli.main(["status", "--store", "s3://b/x"]) == 2
    assert "the connection to the object store failed (EndpointConnectionError: " \
        "Could not connect to the endpoint URL: \"http://127.0.0.1:9/src\")" in caplog.text
    monkeypatch.setitem(cli.COMMANDS, "status", (cli.status_parser, lambda a: 1 / 0))
    with pytest.raises(ZeroDivisionError):  # any other error is a bug: its traceback
        cli.main(["status", "--store", "s3://b/x"])


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
