"""The decoding pipeline: every decoding mode (batch target) gives the batches that
decoding each JPEG directly gives, in order, with short last batches."""
import cv2
import numpy as np
import pytest

import workflow.execution.decoding as dec
from workflow.inputs.imaging import model_input

from conftest import jpeg_bytes


def _jpegs(n: int) -> list[bytes]:
    out = []
    for i in range(n):
        img = cv2.imdecode(np.frombuffer(jpeg_bytes(40 + i % 7, 30, seed=i), np.uint8),
                           cv2.IMREAD_COLOR)
        out.append(cv2.imencode(".jpg", img)[1].tobytes())
    return out


@pytest.mark.parametrize("executor,target", [("local", dec.CopyBack), ("thread", dec.InPlace),
                                             ("process", dec.Shared)])
def test_every_mode_gives_the_directly_decoded_batches(executor, target):
    jpegs = _jpegs(45)
    want = np.stack([model_input(j, 24) for j in jpegs])
    t = {"decode wait": 0.0}
    with dec.DecodePipeline(executor, 2, 24, batch_size=20) as pipe:
        assert type(pipe.target) is target
        for _ in range(2):  # batches (and shared slots) are reused across shards
            got = []
            for k, batch, release in pipe.batches(jpegs, "shard-x", t):
                got.append((k, batch.copy()))
                release()
            assert [k for k, _ in got] == [0, 1, 2]
            assert [len(b) for _, b in got] == [20, 20, 5]
            assert np.array_equal(np.concatenate([b for _, b in got]), want)


def test_processes_fall_back_to_pipes_where_shared_memory_is_too_small(monkeypatch, caplog):
    monkeypatch.setattr(dec, "shared_memory_free", lambda: 1 << 10)
    with dec.DecodePipeline("process", 2, 24, batch_size=8) as pipe:
        assert type(pipe.target) is dec.CopyBack
        got = np.concatenate([b for _, b, _ in pipe.batches(_jpegs(10), "s", {"decode wait": 0})])
    assert got.shape == (10, 24, 24, 3) and "--shm-size" in caplog.text


def test_the_shared_ring_holds_the_batches_being_computed_filled_and_decoded():
    pipe = dec.DecodePipeline("process", workers=15, size=224, batch_size=256)
    assert pipe.shared_slots() == 4 + 2  # 15 workers over 8 jobs per batch
    assert dec.DecodePipeline("process", 1, 224, batch_size=32).shared_slots() == 5
