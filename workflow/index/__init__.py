"""Index mechanics without I/O: estimators, the numeric kNN core, retrieval metrics."""
