"""Faiss's OpenBLAS runs a kernel made for the CPU: chosen from its flags, checked against
NumPy in a child process, left to the user where they chose, and used in fact by a
process that imports the package (the check that fails on a CPU where the bundled
OpenBLAS falls back to its generic kernel)."""
import json
import os
import subprocess
import sys

import pytest

from workflow.execution import blas

from conftest import ROOT

REPORT = """
import json, workflow, faiss, threadpoolctl
from workflow.execution import blas
libs = [i for i in threadpoolctl.threadpool_info()
        if i.get("internal_api") == "openblas" and "faiss" in i["filepath"]]
print(json.dumps({"faiss": [i.get("architecture") for i in libs], "state": blas.state}))
"""


def _child(env: dict) -> dict:
    out = subprocess.run([sys.executable, "-c", REPORT], cwd=ROOT, env=env, check=True,
                         capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("flags, kernel", [
    ({"sse2", "avx", "avx2", "fma", "avx512f", "avx512cd", "avx512bw", "avx512dq",
      "avx512vl"}, "SkylakeX"),
    ({"sse2", "avx", "avx2", "fma", "avx512f"}, "Haswell"),  # AVX-512 in part: not enough
    ({"sse2", "avx"}, "Sandybridge"),
    ({"sse2", "sse4_2"}, None),
])
def test_the_kernel_follows_the_cpu_flags(flags, kernel):
    assert blas.choose(frozenset(flags)) == kernel


def test_faiss_runs_a_kernel_made_for_this_cpu(tmp_path):
    _, flags = blas.cpu_flags()
    if not {"avx2", "fma"} <= flags:
        pytest.skip("no AVX2 here: OpenBLAS's generic kernels are what the CPU runs")
    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_CORETYPE",
                                                              "WORKFLOW_BLAS")}
    env["XDG_CACHE_HOME"] = str(tmp_path)
    got = _child(env)
    assert got["faiss"], "no OpenBLAS in Faiss's wheel: nothing to check"
    arch = got["faiss"][0].lower()
    assert arch not in blas.GENERIC, got
    assert got["state"]["kernel"] == blas.choose(flags), got
    cached = json.loads((tmp_path / "image-index-workflow" / "blas.json").read_text())
    assert list(cached.values()) == [True]  # checked once, remembered


def test_the_users_own_choice_and_the_opt_out_are_left_alone(tmp_path):
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path), "OPENBLAS_CORETYPE": "Haswell"}
    got = _child(env)
    assert got["state"] == {"kernel": "Haswell", "why": "OPENBLAS_CORETYPE as set"}
    env = {k: v for k, v in env.items() if k != "OPENBLAS_CORETYPE"}
    got = _child({**env, "WORKFLOW_BLAS": "shipped"})
    assert got["state"]["kernel"] is None and "shipped" in got["state"]["why"]
    assert not (tmp_path / "image-index-workflow").exists()  # no check was made


def test_a_kernel_that_computes_wrong_is_not_used(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(blas, "CHECK", "print('different')")
    assert not blas.verified("Haswell", "a CPU", frozenset({"avx2"}))
    monkeypatch.setattr(blas, "CHECK", "raise SystemExit(1)")  # no answer: not remembered
    assert not blas.verified("Haswell", "another CPU", frozenset({"avx2"}))
    cached = json.loads((tmp_path / "image-index-workflow" / "blas.json").read_text())
    assert list(cached.values()) == [False]
