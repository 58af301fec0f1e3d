"""`workflow.notebook`: one call to open a store, one to show results inline."""
import pytest

from workflow.errors import BadQuery, WorkflowError
from workflow.notebook import open_store
from workflow.search.query import TextQuery

from clip_store import clip_store
from conftest import indexed_store


def test_show_displays_a_grid_of_the_results(tmp_path, monkeypatch):
    store = indexed_store(tmp_path, n=300, shard_size=100)
    idx = open_store(str(store))
    page, results = idx.html([5, 9], k=4, mode="exact")
    assert [r.ids[0] for r in results] == [5, 9]
    assert page.count("<figure") == 2 * (1 + 4) and page.count("data:image/jpeg") == 10
    assert "top 4, exact" in page
    # words for a store whose model has no text tower: the models that have one are named
    with pytest.raises(BadQuery, match="no text tower.*clip-vit-b32, clip-vit-b16"):
        idx.html("a red bicycle")
    display = pytest.importorskip("IPython.display")
    shown = []
    monkeypatch.setattr(display, "display", shown.append)
    out = idx.show(5, k=3)
    assert len(out) == 1 and len(out[0].ids) == 3
    assert isinstance(shown[0], display.HTML) and shown[0].data.count("<figure") == 4


@pytest.mark.timeout(300)
def test_a_string_that_names_no_file_is_a_query_in_words(tmp_path, monkeypatch):
    idx = open_store(str(clip_store(tmp_path)))
    want = idx.searcher.search([TextQuery("a red bicycle")], k=3, mode="exact")[0]
    page, [got] = idx.html("a red bicycle", k=3, mode="exact")
    assert (got.query, got.ids, got.scores) == ("text:a red bicycle", want.ids, want.scores)
    assert page.count("<figure") == 1 + 3 and "text:a red bicycle" in page
    # the path of an existing file is an image (it finds itself); a TextQuery is words
    # even where a file of that name exists; a missing "photo.jpg" is a missing image
    image = sorted((tmp_path / "src").rglob("*.jpg"))[2]
    _, [found] = idx.html(str(image), k=1, mode="exact")
    assert found.query == str(image) and found.keys == [str(image.relative_to(tmp_path / "src"))]
    _, [words] = idx.html(TextQuery(str(image)), k=1, mode="exact")
    assert words.query == f"text:{image}"
    with pytest.raises(WorkflowError, match="cannot read query image nope/photo.jpg"):
        idx.html("nope/photo.jpg")
    display = pytest.importorskip("IPython.display")
    shown = []
    monkeypatch.setattr(display, "display", shown.append)
    [r] = idx.show("a red bicycle", k=3, mode="exact")
    assert r.ids == want.ids and shown[0].data.count("<figure") == 4
