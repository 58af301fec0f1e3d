"""The workflow on a flaky drive: I/O errors, stalls and copies cut half-way, injected
with seeded probabilities into every store operation; the outputs must equal a clean
run's."""
import logging

import pytest

from workflow.stages import add, evaluate, extract, prefilter, preprocess, train

from campaign import check_clean, compare_stores, reference_run
from conftest import write_corpus
from flaky import register


def run_all_stages(store: str, corpus, scratch) -> None:
    common = dict(store=store, scratch=str(scratch), progress=False)
    assert preprocess.run(preprocess.PreprocessConfig(
        sources=(str(corpus),), shard_size=5, workers=2, **common)).complete
    assert extract.run(extract.ExtractConfig(weights="none", input_size=32, batch_size=4,
                                             **common)).complete
    assert train.run(train.TrainConfig(**common)).complete
    assert add.run(add.AddConfig(**common)).complete
    assert prefilter.run(prefilter.PrefilterConfig(**common)).complete
    assert evaluate.run(evaluate.EvaluateConfig(queries=30, latency_queries=3,
                                                checkpoint_seconds=0, **common)).complete


@pytest.mark.slow
def test_the_workflow_finishes_on_a_flaky_drive_with_the_same_outputs(tmp_path, caplog):
    corpus = tmp_path / "corpus"
    write_corpus(corpus, 30, size=(40, 32))
    reference_run(tmp_path / "reference", corpus, 5)
    fs = register(p_error=0.04, p_stall=0.02, p_partial=0.04, seed=5)
    caplog.set_level(logging.WARNING, logger="workflow")
    run_all_stages(f"flaky://{tmp_path / 'flaky'}", corpus, tmp_path / "scratch")
    faults = sum(fs.injected.values())
    print(f"\ninjected {faults} faults: {dict(fs.injected)}")
    assert faults >= 20 and fs.injected["cut:upload"] and fs.injected["error:rename"]
    retries = [r.getMessage() for r in caplog.records if "; retry " in r.getMessage()]
    errors = sum(v for k, v in fs.injected.items() if k != "stall")
    assert len(retries) >= 0.7 * errors, (len(retries), errors)  # each retry is said
    register(p_error=0, p_stall=0, p_partial=0)
    compare_stores(tmp_path / "reference", tmp_path / "flaky")
    check_clean(tmp_path / "flaky")
