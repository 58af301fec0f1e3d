"""The whole workflow under SIGKILL: a short crash campaign on every run (the long one,
30 kills or more, is `python bench/crash_campaign.py`)."""
import pytest
from campaign import check_clean, compare_stores, crash_campaign
from conftest import write_corpus


@pytest.mark.slow
def test_the_workflow_survives_kills_at_random_moments(tmp_path):
    corpus = tmp_path / "corpus"
    write_corpus(corpus, 30, size=(40, 32))
    camp, ref, store = crash_campaign(tmp_path, corpus, kills=12, seed=11)
    print("\n" + camp.summary())
    assert camp.kills >= 8, camp.summary()  # a stage may finish before its kill comes
    compare_stores(ref, store)
    check_clean(store)
    check_clean(ref)
