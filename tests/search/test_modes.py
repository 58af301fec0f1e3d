"""Search modes and their parameters."""
import pytest

from workflow.errors import ConfigError
from workflow.search.modes import SearchParams


def test_search_params_are_validated():
    with pytest.raises(ConfigError, match="nprobe=0"):
        SearchParams(nprobe=0).validate()
    assert SearchParams(annoy=0).validate().for_mode("hierarchical")["annoy"] == 0
