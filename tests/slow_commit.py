"""Runs a workflow command whose commit of one file is held at its worst moment: the
temporary copy is in the store, complete and verified, and not yet renamed. A flag file
says when that moment has come; the process then waits to be killed.

    python tests/slow_commit.py STORE_RELATIVE_PATH FLAG_FILE COMMAND [OPTIONS...]
"""
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from workflow.cli import main  # noqa: E402
from workflow.storage import store  # noqa: E402


def hold(target: str, flag: Path) -> None:
    """Make commits of `target` stop before the rename, after writing `flag`."""
    rename = store.Store._rename

    def held(self, src: str, dst: str) -> None:
        if dst == target:
            flag.write_text(src)
            time.sleep(3600)
        rename(self, src, dst)
    store.Store._rename = held


if __name__ == "__main__":  # worker processes (spawned) import this file again
    hold(sys.argv[1], Path(sys.argv[2]))
    sys.exit(main(sys.argv[3:]))
