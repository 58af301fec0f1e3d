"""In a notebook (Jupyter, Colab): open a store once and show results inline.

    from workflow.notebook import open_store
    idx = open_store("/content/drive/MyDrive/image-index")
    idx.show("query.jpg", k=12)        # an image file or bytes, an id, or a vector
    idx.show([17, 42], mode="exact")   # several queries: one row each
    idx.show("a red bicycle")          # words (a store of CLIP or SigLIP)

`show` returns the results (`QueryResult`s) and displays them as a grid of thumbnails
with scores and keys (the same page `06_search.py --out page.html` writes). The
`Searcher` stays open between calls, so a query costs milliseconds once the index (and,
for image queries, the model) is loaded.
"""
from __future__ import annotations

import os

from .report.gallery import results_html
from .search.query import IMAGE_EXTS, TextQuery
from .search.searcher import Searcher


def as_query(q):
    """A notebook query as `Searcher.search` takes it. A plain string is an image where it
    names an existing file or ends in an image file's extension ("photo.jpg": a missing
    one is an error that names it, not a search by words); any other string is words
    (`TextQuery`). A `pathlib.Path` is always an image and a `TextQuery` always words,
    whatever exists on disk."""
    if type(q) is str and not os.path.isfile(q) and \
            os.path.splitext(q)[1].lower() not in IMAGE_EXTS:
        return TextQuery(q)
    return q


class Notebook:
    """A `Searcher` with `show` for notebooks; `searcher` is the Searcher itself."""

    def __init__(self, searcher: Searcher):
        self.searcher = searcher

    def html(self, queries, k: int = 10, **options) -> tuple[str, list]:
        """(an HTML grid of the results, the results) of `Searcher.search`; a plain string
        that is not an existing file is a query in words (`as_query`)."""
        qs = [as_query(q) for q in (queries if isinstance(queries, list) else [queries])]
        results = self.searcher.search(qs, k=k, **options)
        ids = [i for r in results for i in r.ids] + [int(r.query[3:]) for r in results
                                                      if r.query.startswith("id:")]
        words = all(isinstance(q, TextQuery) for q in qs)
        title = f"top {k}, {options.get('mode') or self.searcher.mode_for(words)}"
        return results_html(results, self.searcher.thumbnails(ids), title), results

    def show(self, queries, k: int = 10, **options) -> list:
        """Search and display the results inline; returns them. Queries: ids, images
        (a path to an existing file, a `Path`, bytes), words (any other string, or a
        `TextQuery`: "a red bicycle"; a store of an image-text model) or vectors."""
        from IPython.display import HTML, display
        page, results = self.html(queries, k, **options)
        display(HTML(page))
        return results


def open_store(store: str, scratch: str | None = None, cache_size: int = 1024) -> Notebook:
    """Open a finished store for searching from a notebook."""
    return Notebook(Searcher(store, scratch, cache_size=cache_size))
