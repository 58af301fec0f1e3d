"""The Keras embedder on the JAX and PyTorch backends (what a GPU machine without
TensorFlow runs): same features as the model called directly, whatever the batch size.

Each backend runs in its own process, since Keras fixes its backend at import."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT

REPO = ROOT

SCRIPT = r"""
import json, sys
import keras
import numpy as np
from workflow.models.keras import KerasEmbedder, select_backend
from workflow.models.registry import ModelSpec, apply_preprocessing

spec = ModelSpec("mobilenetv3-small", "none", input_size=64, preprocessing="tf")
e = KerasEmbedder(spec, mixed_precision=False)
rng = np.random.default_rng(0)
out = {"backend": select_backend(), "dim": e.dim, "errors": []}
e.warm_up(4)  # as the stage does before its first batch
# 3 is padded to 4 (compiled by warm_up); 6 to 8; 5 to 8 again; 4 as it is.
for n in (3, 6, 5, 4):
    x = rng.integers(0, 256, (n, 64, 64, 3), dtype=np.uint8)
    got = e(x)
    ref = keras.ops.convert_to_numpy(e.model(apply_preprocessing(x, "tf"), training=False))
    ref = np.asarray(ref, np.float32)
    ref = ref.reshape(n, -1)
    assert got.shape == (n, e.dim), got.shape
    out["errors"].append(float(np.abs(got - ref).max() / (np.abs(ref).max() + 1e-9)))
    # launch() returns at once and is waited for later, in any order
    a, b = e.launch(x[:2]), e.launch(x[2:])
    both = np.concatenate([a(), b()]) if n > 2 else a()
    out["errors"].append(float(np.abs(both - got).max() / (np.abs(got).max() + 1e-9)))
print("RESULT " + json.dumps(out))
"""


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_embedder_on_backend(backend, tmp_path):
    if importlib.util.find_spec(backend) is None:
        pytest.skip(f"{backend} is not installed")
    env = {**os.environ, "KERAS_BACKEND": backend, "PYTHONPATH": str(REPO),
           "CUDA_VISIBLE_DEVICES": "", "TF_CPP_MIN_LOG_LEVEL": "3"}
    p = subprocess.run([sys.executable, "-c", SCRIPT], env=env, cwd=tmp_path,
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    line = next(x for x in p.stdout.splitlines() if x.startswith("RESULT "))
    out = json.loads(line[len("RESULT "):])
    assert out["backend"] == backend
    assert out["dim"] == 576
    assert max(out["errors"]) < 1e-4, out
