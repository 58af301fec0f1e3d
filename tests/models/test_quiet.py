"""TensorFlow imported without its C++ start-up log lines, and nothing else lost."""
import os
import subprocess
import sys

import pytest

from workflow.models.quiet import NOISE, native_stderr_filtered

from conftest import ROOT

TF_LINES = (b"WARNING: All log messages before absl::InitializeLog() is called are written "
            b"to STDERR\n"
            b"I0000 00:00:1795990449.779665   13375 port.cc:153] oneDNN custom operations "
            b"are on.\n"
            b"E0000 00:00:1795990449.779975   13375 cuda_dnn.cc:8310] Unable to register "
            b"cuDNN factory\n"
            b"To enable the following instructions: AVX2 FMA, in other operations, rebuild "
            b"TensorFlow with the appropriate compiler flags.\n")


def test_only_tensorflows_log_lines_are_left_out(capfd):
    with native_stderr_filtered():
        os.write(2, TF_LINES + b"a warning of our own\n")
    assert capfd.readouterr().err == "a warning of our own\n"
    with native_stderr_filtered(show_all=True):  # --log-level DEBUG
        os.write(2, TF_LINES)
    assert capfd.readouterr().err == TF_LINES.decode()


def test_everything_is_shown_when_the_block_fails(capfd):
    with pytest.raises(ImportError), native_stderr_filtered():
        os.write(2, TF_LINES)
        raise ImportError("no tensorflow")
    assert capfd.readouterr().err == TF_LINES.decode()


def _stderr(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, check=True).stderr


def test_importing_tensorflow_through_the_workflow_prints_none_of_them():
    pytest.importorskip("tensorflow")
    raw = _stderr("import tensorflow")
    if not any(NOISE.match(line) for line in raw.splitlines()):
        pytest.skip("this TensorFlow prints no start-up log lines here")
    quiet = _stderr("from workflow.models.quiet import import_tensorflow\n"
                    "assert import_tensorflow().constant(1).numpy() == 1")
    assert not [line for line in quiet.splitlines() if NOISE.match(line)], quiet
