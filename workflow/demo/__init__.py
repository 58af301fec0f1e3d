"""The offline demo corpus (`make_demo_corpus`) and the bad-input zoo (`make_bad_inputs`)."""
from .bad_inputs import make_bad_inputs
from .corpus import make_demo_corpus
from .images import SOURCE_FILES, exif_rotated_jpeg

__all__ = ["SOURCE_FILES", "exif_rotated_jpeg", "make_bad_inputs", "make_demo_corpus"]
