"""The search service: `python -m workflow serve`, an HTTP API and a web page over one
open `Searcher` (FastAPI served by uvicorn)."""
