"""The duplicates stage on a small indexed store with planted near-duplicates: the groups
found, the outputs, a cheap regroup at another threshold, removed images left out, and
kill -9 at random moments giving the bytes of an uninterrupted run."""
import csv
import json
import shutil
import sys

import numpy as np
import pytest

from workflow.formats.layout import GROUPS_CSV, GROUPS_FILE, REMOVE_LIST
from workflow.stages import duplicates
from workflow.stages.remove import Selection, remove
from workflow.stages.status import stage_status
from workflow.storage.store import Store

from conftest import (
    ROOT,
    indexed_store,
    jpeg_bytes,
    kill_repeatedly,
    leftovers,
    structured_vectors,
)

N, D = 600, 32
CHAIN = list(range(300, 308))  # 10 degrees apart: neighbours link, the ends do not


def planted() -> np.ndarray:
    rng = np.random.default_rng(7)
    x = structured_vectors(N, D)
    for i in (250, 480):  # near-copies of 10
        v = x[10] + 0.02 * rng.normal(size=D)
        x[i] = v / np.linalg.norm(v)
    x[21] = x[20]  # the same picture twice
    u, w = np.linalg.qr(rng.normal(size=(D, 2)))[0].T
    for step, i in enumerate(CHAIN):
        t = np.radians(10 * step)
        x[i] = np.cos(t) * u + np.sin(t) * w
    return x.astype(np.float32)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dups")
    return indexed_store(tmp, n=N, d=D, shard_size=100, x=planted())


def _run(store, **kw):
    kw = {"threshold": 0.97, "slack": 0.02, **kw}
    return duplicates.run(duplicates.DuplicatesConfig(store=str(store), progress=False, **kw))


def _groups(store):
    return json.loads((store / GROUPS_FILE).read_text())


def test_planted_groups_are_found_and_chains_are_cut(built, tmp_path):
    store = tmp_path / "store"
    shutil.copytree(built, store)
    res = _run(store)
    assert res.complete and "duplicates complete" in res.summary()
    out = _groups(store)
    assert out["threshold"] == 0.97 and out["slack"] == 0.02 and out["k"] == 10
    assert out["threshold_from"] == "given" and out["corpus"] == "1.0"
    sets = {frozenset(g["ids"]) for g in out["groups"]}
    assert frozenset({10, 250, 480}) in sets and frozenset({20, 21}) in sets
    x = planted()
    for g in out["groups"]:
        assert g["ids"][0] == g["representative"] and g["scores"][0] == 1.0 and g["reason"]
        ids = np.array(g["ids"])
        assert np.allclose(g["scores"], x[ids] @ x[g["representative"]], atol=2e-3)
        assert (x[ids] @ x[g["centre"]] >= 0.95 - 2e-3).all()
        assert g["keys"] == [f"class{i % 5}/img{i:04d}.jpg" for i in g["ids"]] or g["keys"]
        chain = sorted(set(g["ids"]) & set(CHAIN))
        assert not chain or chain[-1] - chain[0] <= 2  # one step each side at most
    assert sum(len(set(g["ids"]) & set(CHAIN)) for g in out["groups"]) >= 6
    sizes = [len(g["ids"]) for g in out["groups"]]
    assert sizes == sorted(sizes, reverse=True)
    rows = list(csv.DictReader((store / GROUPS_CSV).open()))
    assert len(rows) == sum(sizes) and {r["group"] for r in rows} == {
        str(i) for i in range(len(sizes))}
    lines = [ln.split("\t") for ln in (store / REMOVE_LIST).read_text().splitlines()
             if not ln.startswith("#")]
    assert len(lines) == sum(sizes) - len(sizes)
    key_of = {i: k for g in out["groups"] for i, k in zip(g["ids"], g["keys"])}
    assert all(key_of[int(i)] == key for i, key in lines)
    reps = {g["representative"] for g in out["groups"]}
    assert not reps & {int(i) for i, _ in lines}
    assert stage_status(Store(store), "duplicates").startswith("complete")


def test_a_new_threshold_regroups_without_searching_again(built, tmp_path):
    store = tmp_path / "store"
    shutil.copytree(built, store)
    _run(store)
    knn = {p: p.stat().st_mtime_ns for p in (store / "duplicates" / "knn").iterdir()}
    groups = (store / GROUPS_FILE).stat().st_mtime_ns
    _run(store)  # the same settings: nothing to do
    assert (store / GROUPS_FILE).stat().st_mtime_ns == groups
    res = duplicates.run(duplicates.DuplicatesConfig(store=str(store), progress=False,
                                                     threshold=0.999, slack=0.0))
    assert {p: p.stat().st_mtime_ns for p in knn} == knn
    assert [set(g["ids"]) for g in _groups(store)["groups"]] == [{20, 21}]
    assert res.groups == 1


def test_removed_images_are_left_out(built, tmp_path):
    store = tmp_path / "store"
    shutil.copytree(built, store)
    _run(store)
    remove(Store(store), Selection(ids=(250, 21)))
    assert "re-run duplicates" in stage_status(Store(store), "duplicates")
    _run(store)
    sets = {frozenset(g["ids"]) for g in _groups(store)["groups"]}
    assert frozenset({10, 480}) in sets and not any({250, 21} & s for s in sets)


def test_bad_settings_name_the_flag(built):
    from workflow.errors import ConfigError
    with pytest.raises(ConfigError, match="--rerank must be at least --k"):
        duplicates.DuplicatesConfig(store=str(built), k=20, rerank=10).validate()


def test_sigkill_at_random_moments_gives_the_bytes_of_an_uninterrupted_run(built, tmp_path):
    ref, crashed = tmp_path / "ref", tmp_path / "crashed"
    shutil.copytree(built, ref)
    shutil.copytree(built, crashed)
    _run(ref)
    cmd = [sys.executable, "-m", "workflow", "duplicates", "--store", str(crashed),
           "--threshold", "0.97", "--slack", "0.02", "--no-progress"]
    done = crashed / "_done" / "duplicates"
    kills = kill_repeatedly(cmd, lambda: len(list(done.glob("*.json"))) if done.exists()
                            else 0, seed=3)
    assert kills >= 1
    files = sorted(p.relative_to(ref) for p in (ref / "duplicates").rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(crashed) for p in (crashed / "duplicates").rglob("*")
                           if p.is_file())
    for rel in files:
        assert (ref / rel).read_bytes() == (crashed / rel).read_bytes(), rel
    assert leftovers(crashed) == []


def test_search_collapses_each_group_to_its_best_image(built, tmp_path):
    import subprocess

    from workflow.errors import ConfigError
    from workflow.search.searcher import Searcher
    store = tmp_path / "store"
    shutil.copytree(built, store)
    with pytest.raises(ConfigError, match="run scripts/08_duplicates.py first"):
        Searcher(store).search([10], k=5, mode="exact", collapse_duplicates=True)
    _run(store)
    s = Searcher(store)
    plain = s.search([10], k=5, mode="exact")[0]
    assert {10, 250, 480} <= set(plain.ids)
    one = s.search([10], k=5, mode="exact", collapse_duplicates=True)[0]
    rep = s.duplicate_groups
    assert one.ids[0] == 10 and not {250, 480} & set(one.ids) and len(one.ids) == 5
    assert len({int(rep[i]) for i in one.ids}) == 5  # one image per group
    out = subprocess.run([sys.executable, "scripts/06_search.py", "--store", str(store),
                          "--id", "10", "--k", "5", "--mode", "exact", "--json",
                          "--collapse-duplicates"], capture_output=True, text=True,
                         cwd=ROOT, check=True).stdout
    assert [r["id"] for r in json.loads(out)["results"]] == one.ids


def test_the_calibrated_threshold_lets_85_percent_of_edits_through():
    from workflow.stages.calibration import REACHED_BY, _choose
    assert REACHED_BY == 0.85
    rng = np.random.default_rng(0)
    kinds = np.array(["jpeg", "crop"] * 500)
    sims = np.where(kinds == "jpeg", rng.uniform(0.93, 0.99, 1000),
                    rng.uniform(0.80, 0.95, 1000)).astype(np.float32)
    got = _choose(sims, kinds, rng.uniform(0.1, 0.7, 4950), 100)
    assert got["calibrated"] and got["separable"] and got["sample"] == 100
    assert got["threshold"] == np.floor(np.quantile(sims, 0.15) * 100) / 100
    assert (sims >= got["threshold"]).mean() >= 0.85
    assert got["by_kind"]["crop"]["median"] < got["by_kind"]["jpeg"]["median"]


def test_a_model_that_cannot_tell_pictures_apart_gets_a_strict_threshold(caplog):
    from workflow.stages.calibration import _choose
    rng = np.random.default_rng(0)
    sims = rng.uniform(0.990, 1.0, 600).astype(np.float32)
    unrelated = rng.uniform(0.95, 0.9995, 4950)  # random weights: everything is close
    got = _choose(sims, np.array(["jpeg"] * 600), unrelated, 100)
    assert not got["separable"] and got["threshold"] >= np.quantile(unrelated, 0.95)
    assert "cannot tell near-copies apart" in caplog.text


def test_groups_a_model_cannot_measure_are_for_review_only_with_no_remove_list(
        built, tmp_path, monkeypatch):
    from workflow.stages import calibration
    from workflow.stages.status import stage_status
    store = tmp_path / "store"
    shutil.copytree(built, store)
    _run(store)  # a trusted run first: its remove-list must not survive the next
    assert (store / REMOVE_LIST).exists()
    rng = np.random.default_rng(0)
    unseparable = calibration._choose(  # what random weights give (the demo offline)
        rng.uniform(0.990, 1.0, 600).astype(np.float32), np.array(["jpeg"] * 600),
        rng.uniform(0.95, 0.9995, 4950), 100)
    monkeypatch.setattr(duplicates, "calibrate", lambda searcher, **kw: unseparable)
    res = duplicates.run(duplicates.DuplicatesConfig(store=str(store), progress=False))
    why = "the model cannot tell near-copies from unrelated images in this store"
    assert res.complete and "FOR REVIEW ONLY: " + why in res.summary()
    assert f"(and {GROUPS_CSV})" in res.summary()
    assert not (store / REMOVE_LIST).exists()
    assert Store(store).marker("duplicates", "remove-list") is None
    assert _groups(store)["review_only"].startswith(why)
    page = (store / "duplicates" / "report.html").read_text()
    assert "For review only." in page and "random weights?" in page
    line = stage_status(Store(store), "duplicates")
    assert line.startswith("complete") and "for review only, no remove-list" in line
    _run(store)  # a threshold given by the user: trusted again, the list comes back
    assert (store / REMOVE_LIST).exists() and _groups(store)["review_only"] is None


def test_features_of_another_origin_fall_back_to_a_fixed_threshold(built, tmp_path):
    store = tmp_path / "store"
    shutil.copytree(built, store)
    res = duplicates.run(duplicates.DuplicatesConfig(store=str(store), progress=False))
    cal = json.loads((store / "duplicates" / "calibration.json").read_text())
    assert cal == {"threshold": 0.9, "calibrated": False, "why": cal["why"]}
    out = _groups(store)
    assert out["threshold"] == 0.9 and out["threshold_from"] == "fallback" and res.complete


def test_review_pages_and_histogram_follow_the_groups(built, tmp_path, monkeypatch):
    import workflow.report.duplicates as pages
    import workflow.stages.review as review
    monkeypatch.setattr(pages, "GROUPS_PER_PAGE", 10)
    monkeypatch.setattr(review, "GROUPS_PER_PAGE", 10)
    store = tmp_path / "store"
    shutil.copytree(built, store)
    _run(store, report_groups=35)
    n = len(_groups(store)["groups"])
    assert n > 35
    first = (store / "duplicates" / "report.html").read_text()
    assert "page 1 of 4" in first and "group 1 &middot;" in first and "threshold 0.97" in first
    assert first.count("<section>") == 10 and "data:image/png;base64," in first
    assert first.count('src="data:image/jpeg') == sum(
        len(g["ids"]) for g in _groups(store)["groups"][:10])
    last = (store / "duplicates" / "report" / "page-0004.html").read_text()
    assert last.count("<section>") == 5 and f"{n - 35:,} more groups are not shown" in last
    assert 'href="../report/page-0003.html"' in last and 'href="../report.html"' in last
    assert (store / "duplicates" / "nearest.png").read_bytes()[:4] == b"\x89PNG"
    _run(store, report_groups=35, threshold=0.999, slack=0.0)  # one group: one page
    assert not (store / "duplicates" / "report").exists() or \
        not list((store / "duplicates" / "report").iterdir())
    assert "page 1 of 1" in (store / "duplicates" / "report.html").read_text()


def test_pairs_a_phash_confirms_let_the_threshold_stay_high():
    """The recompressed copies (pHash links them) sit lower than the crops here: without
    pHash, 85% of all edits set the threshold among them; with it, the crops do."""
    from workflow.stages.calibration import _choose
    kinds = np.array(["jpeg"] * 500 + ["crop"] * 500)
    sims = np.concatenate([np.linspace(0.80, 0.88, 500), np.linspace(0.93, 0.99, 500)])
    hashed = kinds == "jpeg"  # the recompressed copies are within pHash distance
    unrelated = np.linspace(0.1, 0.7, 4950)
    plain = _choose(sims.astype(np.float32), kinds, unrelated, 100)
    got = _choose(sims.astype(np.float32), kinds, unrelated, 100, hashed)
    from workflow.inputs.hashing import HASH_MARGIN

    def linked(t):
        return np.mean((sims >= t) | (hashed & (sims >= t - HASH_MARGIN)))
    assert plain["threshold"] == 0.82 and got["threshold"] == 0.94
    assert linked(got["threshold"]) >= 0.85 > linked(got["threshold"] + 0.01)
    assert got["linked_by_phash"] == 0.5 and got["separable"]


def _picture(seed: int, w: int = 240, h: int = 180) -> bytes:
    """A seeded picture of texture at several scales (keypoints of its own: copies match
    by the hundred, different pictures by a handful), as JPEG bytes."""
    import cv2
    rng = np.random.default_rng(seed)
    img = np.zeros((h, w, 3), np.float32)
    for cells, amp in ((3, 90), (6, 60), (12, 45), (24, 35), (48, 25)):
        small = rng.normal(0, amp, (cells * h // w + 1, cells, 3)).astype(np.float32)
        img += cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
    img = np.clip(img + 128, 0, 255).astype(np.uint8)
    return cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 92])[1].tobytes()


def test_the_hardest_negative_is_the_closest_neighbour_that_is_not_a_copy():
    """Copies (a crop, a turn, a mirror image, a re-exposure) are passed over, by
    keypoints or pHash; the first different picture is the hardest negative; a row of
    copies only has none; removed images are not looked at."""
    from workflow.inputs.edits import edited_jpeg
    from workflow.stages.calibration import hardest_negatives
    rng = np.random.default_rng(1)
    jpegs = {0: _picture(0), 5: _picture(5), 6: _picture(6), 7: _picture(7)}
    for i, kind in zip((1, 2, 3, 4), ("crop", "rotate", "flip", "light")):
        jpegs[i] = edited_jpeg(jpegs[0], kind, rng)
    ids = np.array([0, 1, 7])
    nbrs = np.array([[1, 2, 3, 6, 4, 5], [0, 2, 3, 4, -1, -1], [6, 5, 0, 1, 2, 3]])
    sims = np.array([[0.99, 0.98, 0.97, 0.96, 0.95, 0.90], [0.99, 0.98, 0.97, 0.96, -1, -1],
                     [0.93, 0.91, 0.80, 0.80, 0.80, 0.80]], np.float32)
    read = lambda wanted: {i: jpegs[i] for i in wanted}  # noqa: E731
    got = hardest_negatives(read, ids, nbrs, sims, np.array([], np.int64), 10, 0)
    assert got.tolist() == pytest.approx([0.96, 0.93])  # row 1: copies of 0 only
    removed = np.array([6])
    got = hardest_negatives(read, ids, nbrs, sims, removed, 10, 0)
    assert got.tolist() == pytest.approx([0.90, 0.91])


@pytest.mark.parametrize("reached, hard_p99, threshold, to_negatives, to_edits", [
    (0.96, 0.935, 0.95, 0.015, 0.01),  # flowers12, MobileNet v1: a narrow gap
    (0.95, 0.80, 0.88, 0.08, 0.07),    # few look-alikes: the threshold comes down
    (0.95, 0.97, 0.98, 0.01, -0.03),   # non-copies as close as the edits: above them
])
def test_the_threshold_goes_in_the_middle_of_the_gap(reached, hard_p99, threshold,
                                                     to_negatives, to_edits):
    from workflow.stages.calibration import _gap
    hard = np.full(200, hard_p99 - 0.1, np.float32)
    hard[-3:] = hard_p99  # the 99th percentile
    got = _gap(reached, hard)
    assert got["threshold"] == threshold
    assert got["hard_negatives"]["p99"] == pytest.approx(hard_p99, abs=1e-4)
    assert got["margin"] == pytest.approx({"to_negatives_p99": to_negatives,
                                           "to_edits": to_edits}, abs=1e-4)


def test_the_calibration_uses_the_gap_to_the_hardest_negatives():
    """The edits alone set 0.95 here; the nearest non-copies stop at 0.80, so the
    threshold comes down to 0.88 and catches the crops 0.95 missed."""
    from workflow.stages.calibration import _choose
    rng = np.random.default_rng(0)
    kinds = np.array(["jpeg", "crop"] * 300)
    sims = np.where(kinds == "jpeg", rng.uniform(0.96, 0.99, 600),
                    rng.uniform(0.89, 0.97, 600)).astype(np.float32)
    unrelated = rng.uniform(0.1, 0.7, 4950)
    alone = _choose(sims, kinds, unrelated, 100)
    hard = rng.uniform(0.6, 0.8, 400).astype(np.float32)
    got = _choose(sims, kinds, unrelated, 100, hard=hard)
    assert alone["threshold"] >= 0.9 and got["edits_allow"] == alone["threshold"]
    assert got["threshold"] == np.ceil((np.quantile(hard, 0.99) + alone["threshold"]) * 50) / 100
    assert (sims[kinds == "crop"] >= got["threshold"]).mean() == 1.0
    assert got["margin"]["to_negatives_p99"] > 0 and got["margin"]["to_edits"] > 0
    few = _choose(sims, kinds, unrelated, 100, hard=hard[:10])  # too few to trust
    assert few["threshold"] == alone["threshold"] and "hard_negatives" not in few


def test_the_review_page_states_both_sides_of_the_threshold():
    from workflow.report.duplicates import summary_html
    from workflow.stages.calibration import _gap
    cal = {"by_kind": {"crop": {"median": 0.95, "reached_by_90%": 0.93}},
           "unrelated_p95": 0.74, **_gap(0.96, np.linspace(0.7, 0.94, 300))}
    cal.pop("threshold")
    page = summary_html({"threshold": 0.95, "threshold_from": "measured", "slack": 0.02},
                        3, 9, cal, b"")
    assert "The closest neighbours that are not copies (of 300 sampled images)" in page
    assert "The edits allow 0.96; the threshold lies +0.012 from the negatives and +0.010" \
        " from the edits" in page


def test_the_copy_test_is_checked_on_the_stores_own_edits():
    """Pictures with detail: every crop and turn recognised. Pictures without (smooth,
    as CIFAR-10 scaled up): crops missed, so its "not a copy" cannot be trusted there."""
    from workflow.inputs.edits import edited_jpeg
    from workflow.inputs.hashing import phash
    from workflow.stages.calibration import MIN_RECOGNISED, _near, copy_test_check

    def check(pictures: dict[int, bytes]) -> dict[str, float]:
        owners, edits, kinds = [], [], []
        for i, data in pictures.items():
            for j, kind in enumerate(("crop", "rotate", "jpeg")):
                owners.append(i)
                kinds.append(kind)
                edits.append(edited_jpeg(data, kind, np.random.default_rng([i, j])))
        hashed = np.array([_near(phash(pictures[o]), phash(e)) for o, e in zip(owners, edits)])
        return copy_test_check(pictures, owners, edits, kinds, hashed)

    detailed = check({i: _picture(i) for i in range(10)})
    assert min(detailed.values()) >= MIN_RECOGNISED, detailed
    smooth = check({i: jpeg_bytes(240, 180, seed=i) for i in range(10)})
    assert smooth["crop"] < MIN_RECOGNISED and smooth["jpeg"] == 1.0, smooth
