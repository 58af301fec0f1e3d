"""Resumable workflow that turns millions of images into a searchable index."""

from .execution.blas import configure as _configure_blas

__version__ = "0.1.0"

_configure_blas()  # before anything loads Faiss: its OpenBLAS reads the kernel at load
