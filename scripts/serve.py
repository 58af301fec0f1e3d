#!/usr/bin/env python
"""The search service: a page and a JSON API over a finished store. See --help."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from workflow.cli import run_command  # noqa: E402

if __name__ == "__main__":
    sys.exit(run_command("serve", sys.argv[1:]))
