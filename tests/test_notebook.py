"""`workflow.notebook`: one call to open a store, one to show results inline."""
import pytest

from workflow.notebook import open_store

from conftest import indexed_store


def test_show_displays_a_grid_of_the_results(tmp_path, monkeypatch):
    store = indexed_store(tmp_path, n=300, shard_size=100)
    idx = open_store(str(store))
    page, results = idx.html([5, 9], k=4, mode="exact")
    assert [r.ids[0] for r in results] == [5, 9]
    assert page.count("<figure") == 2 * (1 + 4) and page.count("data:image/jpeg") == 10
    assert "top 4, exact" in page
    display = pytest.importorskip("IPython.display")
    shown = []
    monkeypatch.setattr(display, "display", shown.append)
    out = idx.show(5, k=3)
    assert len(out) == 1 and len(out[0].ids) == 3
    assert isinstance(shown[0], display.HTML) and shown[0].data.count("<figure") == 4
