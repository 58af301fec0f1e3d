#!/usr/bin/env python
"""Stage 8: near-duplicate groups over the whole corpus. See --help."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from workflow.cli import run_command  # noqa: E402

if __name__ == "__main__":
    sys.exit(run_command("duplicates", sys.argv[1:]))
