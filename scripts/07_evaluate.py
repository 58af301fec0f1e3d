#!/usr/bin/env python
"""Stage 7: recall of every search mode against exact search; tunes the search defaults.
See --help."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from workflow.cli import run_command  # noqa: E402

if __name__ == "__main__":
    sys.exit(run_command("evaluate", sys.argv[1:]))
