"""In a notebook (Jupyter, Colab): open a store once and show results inline.

    from workflow.notebook import open_store
    idx = open_store("/content/drive/MyDrive/image-index")
    idx.show("query.jpg", k=12)        # an image file or bytes, an id, or a vector
    idx.show([17, 42], mode="exact")   # several queries: one row each

`show` returns the results (`QueryResult`s) and displays them as a grid of thumbnails
with scores and keys (the same page `06_search.py --out page.html` writes). The
`Searcher` stays open between calls, so a query costs milliseconds once the index (and,
for image queries, the model) is loaded.
"""
from __future__ import annotations

from .report.gallery import results_html
from .search.searcher import Searcher


class Notebook:
    """A `Searcher` with `show` for notebooks; `searcher` is the Searcher itself."""

    def __init__(self, searcher: Searcher):
        self.searcher = searcher

    def html(self, queries, k: int = 10, **options) -> tuple[str, list]:
        """(an HTML grid of the results, the results) of `Searcher.search`."""
        qs = queries if isinstance(queries, list) else [queries]
        results = self.searcher.search(qs, k=k, **options)
        ids = [i for r in results for i in r.ids] + [int(r.query[3:]) for r in results
                                                      if r.query.startswith("id:")]
        title = f"top {k}, {options.get('mode') or self.searcher.default_mode}"
        return results_html(results, self.searcher.thumbnails(ids), title), results

    def show(self, queries, k: int = 10, **options) -> list:
        """Search and display the results inline; returns them."""
        from IPython.display import HTML, display
        page, results = self.html(queries, k, **options)
        display(HTML(page))
        return results


def open_store(store: str, scratch: str | None = None, cache_size: int = 1024) -> Notebook:
    """Open a finished store for searching from a notebook."""
    return Notebook(Searcher(store, scratch, cache_size=cache_size))
