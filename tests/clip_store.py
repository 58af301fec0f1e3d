"""A finished store extracted with the tiny CLIP of `tests/models/test_clip.py` (random
weights saved as a local preset folder, no network), for the tests of search by words in
the service, the page and the notebook."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent / "models"))  # as pytest imports test_clip
from test_clip import _store_with_clip, save_tiny_clip  # noqa: E402


def clip_store(root: Path, n: int = 12) -> Path:
    """n small images through preprocess, extract (the tiny CLIP from a preset folder
    under `root`), train, add and prefilter; the store (`root/store`, corpus `root/src`)."""
    return _store_with_clip(root, save_tiny_clip(root / "tiny-clip"), n)
