"""Image-text models (CLIP and SigLIP from KerasHub): the image tower in the extract stage,
the text tower for queries in words. No network: a tiny CLIP (and SigLIP) with random
weights and a tokenizer vocabulary written here, saved as a KerasHub preset folder and
loaded through `--weights FOLDER`, the path users take with a downloaded preset."""
from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from workflow.errors import BadQuery, ConfigError
from workflow.models import converted
from workflow.models.registry import HUB_MODELS, ModelSpec, OfflineWeightsError, l2_normalize

from conftest import ROOT, indexed_store, write_corpus

WORDS = ("red", "bicycle", "blue", "car", "dog", "cat")
SIZE, DIM = 32, 8  # the tiny model's input size and embedding dimension
OPENVINO = pytest.mark.skipif(not converted.openvino_installed(),
                              reason="openvino is not installed")


def tiny_vocabulary(words=WORDS) -> tuple[dict[str, int], list[str]]:
    """A byte-pair vocabulary and merges in which each word is one token; the special
    tokens last, so that the end token has the highest id (CLIP pools the text there)."""
    chars = sorted(set("".join(words)))
    tokens = [*chars, *(c + "</w>" for c in chars), "a</w>"]
    merges = []
    for w in words:
        cur = w[0]
        for i, c in enumerate(w[1:], 1):
            nxt = c + "</w>" if i == len(w) - 1 else c
            merges.append(f"{cur} {nxt}")
            cur += nxt
            tokens.append(cur)
    tokens = [*dict.fromkeys(tokens), "<|startoftext|>", "<|endoftext|>"]
    return {t: i for i, t in enumerate(tokens)}, list(dict.fromkeys(merges))


def save_tiny_clip(folder: Path, seed: int = 0) -> Path:
    """A CLIP of a few thousand random weights, 32 px images, saved as a preset folder."""
    from workflow.models.keras import select_backend
    select_backend()
    import keras
    import keras_hub
    keras.utils.set_random_seed(seed)
    vocabulary, merges = tiny_vocabulary()
    vision = keras_hub.models.CLIPVisionEncoder(
        patch_size=16, hidden_dim=16, num_layers=1, num_heads=2, intermediate_dim=32,
        image_shape=(SIZE, SIZE, 3))
    text = keras_hub.models.CLIPTextEncoder(
        vocabulary_size=len(vocabulary), embedding_dim=16, hidden_dim=16, num_layers=1,
        num_heads=2, intermediate_dim=32, max_sequence_length=16)
    backbone = keras_hub.models.CLIPBackbone(vision_encoder=vision, text_encoder=text,
                                             projection_dim=DIM)
    converter = keras_hub.layers.CLIPImageConverter(  # CLIP's own mean and std
        image_size=(SIZE, SIZE), scale=[1 / (255 * s) for s in (0.2686, 0.2613, 0.2758)],
        offset=[-m / s for m, s in ((0.4815, 0.2686), (0.4578, 0.2613), (0.4082, 0.2758))])
    preprocessor = keras_hub.models.CLIPPreprocessor(
        keras_hub.models.CLIPTokenizer(vocabulary=vocabulary, merges=merges), converter,
        sequence_length=16)
    backbone.save_to_preset(str(folder))
    preprocessor.save_to_preset(str(folder))
    return folder


def save_tiny_siglip(folder: Path, seed: int = 0) -> Path:
    """A SigLIP of a few thousand random weights, 32 px images, with a word-level
    SentencePiece vocabulary trained here, saved as a preset folder."""
    from workflow.models.keras import select_backend
    select_backend()
    import keras
    import keras_hub
    import sentencepiece
    keras.utils.set_random_seed(seed)
    proto = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(["a red bicycle", "a blue car", "a dog and a cat"]),
        model_writer=proto, vocab_size=12, model_type="WORD", pad_id=0, bos_id=1, eos_id=2,
        unk_id=3, unk_piece="<unk>", minloglevel=2)
    vision = keras_hub.models.SigLIPVisionEncoder(
        patch_size=16, hidden_dim=16, num_layers=1, num_heads=2, intermediate_dim=32,
        image_shape=(SIZE, SIZE, 3))
    text = keras_hub.models.SigLIPTextEncoder(
        vocabulary_size=12, embedding_dim=16, hidden_dim=16, num_layers=1, num_heads=2,
        intermediate_dim=32, max_sequence_length=16)
    keras_hub.models.SigLIPBackbone(vision, text).save_to_preset(str(folder))
    keras_hub.models.SigLIPPreprocessor(
        keras_hub.models.SigLIPTokenizer(proto=proto.getvalue()),
        keras_hub.layers.SigLIPImageConverter(image_size=(SIZE, SIZE), scale=1 / 127.5,
                                              offset=-1.0),
        sequence_length=16).save_to_preset(str(folder))
    return folder


@pytest.fixture(scope="module")
def preset(tmp_path_factory) -> Path:
    return save_tiny_clip(tmp_path_factory.mktemp("clip") / "tiny-clip")


def test_a_preset_folder_gives_both_towers_in_one_space(preset):
    import keras
    import keras_hub

    from workflow.models.loading import make_embedder
    e = make_embedder(ModelSpec("clip-vit-b32", str(preset)), runtime="keras")
    assert (e.input_size, e.dim, e.has_text_tower) == (SIZE, DIM, True)
    assert e.info["weights"] == "folder" and e.info["preset"] == "clip_vit_base_patch32"
    assert "runtime" not in e.info  # Keras itself, not a converted copy
    x = np.random.default_rng(0).integers(0, 256, (3, SIZE, SIZE, 3), dtype=np.uint8)
    got = e(x)
    # the same as the preset's backbone on the input scaled as its image converter says
    backbone = keras_hub.models.Backbone.from_preset(str(preset))
    conv = keras_hub.layers.ImageConverter.from_preset(str(preset))
    scaled = x.astype(np.float32) * np.float32(conv.scale) + np.float32(conv.offset)
    ref = keras.ops.convert_to_numpy(backbone.get_vision_embeddings(scaled))
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)
    assert got.shape == (3, DIM) and np.allclose(np.linalg.norm(l2_normalize(got), axis=1), 1)
    texts = ["a red bicycle", "A Red Bicycle", "a blue car"]
    t1 = e.embed_text(texts)
    assert t1.shape == (3, DIM) and t1.dtype == np.float32
    np.testing.assert_array_equal(t1[0], t1[1])  # lower-cased, as CLIP was trained
    eager = backbone.get_text_embeddings(e.hub._token_ids(texts))  # traced: the same
    np.testing.assert_allclose(t1, keras.ops.convert_to_numpy(eager), rtol=1e-5, atol=1e-6)
    assert not np.allclose(t1[0], t1[2])
    again = make_embedder(ModelSpec("clip-vit-b32", str(preset))).embed_text(texts[::-1])
    np.testing.assert_allclose(again[::-1], t1, rtol=1e-5, atol=1e-6)  # deterministic
    assert e.info["weights_sha256"] == make_embedder(
        ModelSpec("clip-vit-b32", str(preset))).info["weights_sha256"]


def test_a_siglip_preset_folder_gives_both_towers_too(tmp_path):
    import keras

    from workflow.models.loading import make_embedder
    folder = save_tiny_siglip(tmp_path / "tiny-siglip")
    e = make_embedder(ModelSpec("siglip-base-224", str(folder)), runtime="keras")
    assert (e.input_size, e.dim, e.info["preset"]) == (SIZE, 16, "siglip_base_patch16_224")
    x = np.random.default_rng(1).integers(0, 256, (2, SIZE, SIZE, 3), dtype=np.uint8)
    ref = e.hub.backbone.get_vision_embeddings(x.astype(np.float32) / 127.5 - 1)
    np.testing.assert_allclose(e(x), keras.ops.convert_to_numpy(ref), rtol=1e-4, atol=1e-5)
    t = e.embed_text(["a red bicycle", "A red bicycle!", "a dog"])
    assert t.shape == (3, 16)
    np.testing.assert_array_equal(t[0], t[1])  # canonicalised: case and punctuation
    assert not np.allclose(t[0], t[2])
    with pytest.raises(ConfigError, match="not a KerasHub preset folder of a clip model"):
        make_embedder(ModelSpec("clip-vit-b32", str(folder)))


def test_the_name_fixes_the_family_and_bad_settings_are_refused(preset, tmp_path):
    from workflow.models.loading import make_embedder
    with pytest.raises(ConfigError, match="not a KerasHub preset folder of a siglip model"):
        make_embedder(ModelSpec("siglip-base-224", str(preset)))
    with pytest.raises(ConfigError, match="no such folder.*local preset folder"):
        make_embedder(ModelSpec("clip-vit-b16", str(tmp_path / "nope")))
    with pytest.raises(ConfigError, match="takes 32 px"):
        make_embedder(ModelSpec("clip-vit-b32", str(preset), input_size=64))
    with pytest.raises(ConfigError, match="--runtime onnx"):
        make_embedder(ModelSpec("clip-vit-b32", str(preset)), runtime="onnx")


@pytest.fixture(scope="module")
def siglip_preset(tmp_path_factory) -> Path:
    return save_tiny_siglip(tmp_path_factory.mktemp("siglip") / "tiny-siglip")


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.mark.parametrize("runtime", ["tflite", pytest.param("openvino", marks=OPENVINO)])
@pytest.mark.parametrize("model", ["clip-vit-b32", "siglip-base-224"])
def test_the_image_tower_on_a_cpu_runtime_matches_keras_and_words_still_work(
        preset, siglip_preset, model, runtime):
    from workflow.models.keras import ConvertedHubEmbedder
    from workflow.models.loading import make_embedder
    folder = str(preset if model.startswith("clip") else siglip_preset)
    keras_e = make_embedder(ModelSpec(model, folder), "off", runtime="keras")
    fast = make_embedder(ModelSpec(model, folder), "off", runtime=runtime)
    assert isinstance(fast, ConvertedHubEmbedder) and fast.has_text_tower
    assert fast.info == {**keras_e.info, "runtime": runtime, "precision": "f32"}
    x = np.random.default_rng(2).integers(0, 256, (5, SIZE, SIZE, 3), dtype=np.uint8)
    want = keras_e(x)
    got = np.concatenate([fast(x[:2]), fast(x[2:])])  # two batch sizes
    assert got.shape == want.shape and got.dtype == np.float32
    assert _cosines(got, want).min() >= 0.9999
    texts = ["a red bicycle", "a dog"]
    np.testing.assert_allclose(fast.embed_text(texts), keras_e.embed_text(texts),
                               rtol=1e-5, atol=1e-6)  # the text tower: Keras's


@pytest.mark.parametrize("model,keras_only", [*((m, None) for m in HUB_MODELS),
                                              ("siglip-base-224", "a reason")])
def test_auto_puts_an_image_tower_where_it_was_measured_faster(preset, siglip_preset,
                                                               model, keras_only, caplog,
                                                               monkeypatch):
    """As measured (`HUB_KERAS_ONLY`, bench/bench_clip.py), and a model kept on Keras
    says so, and why, in one line at load."""
    from workflow.models.keras import HUB_KERAS_ONLY
    from workflow.models.loading import make_embedder
    if keras_only:
        monkeypatch.setitem(HUB_KERAS_ONLY, model, keras_only)
    folder = str(siglip_preset if model.startswith("siglip") else preset)
    with caplog.at_level(logging.INFO, logger="workflow.models.loading"):
        e = make_embedder(ModelSpec(model, folder), "off")
    if model in HUB_KERAS_ONLY:
        assert "runtime" not in e.info and not e.convertible
        assert [r.getMessage() for r in caplog.records] == [
            f"{model}: the image tower runs on Keras, not a CPU runtime "
            f"({HUB_KERAS_ONLY[model]})"]
    else:
        want = "openvino" if converted.openvino_installed() else "tflite"
        assert e.info["runtime"] == want and e.keras.convertible
        assert not caplog.records
    assert e.embed_text(["a red bicycle"]).shape == (1, e.dim)


@pytest.mark.parametrize("model", ["clip-vit-b32", "siglip-base-224"])
def test_a_text_beyond_the_context_is_cut_with_a_warning(preset, siglip_preset, model,
                                                         caplog):
    from workflow.models.loading import make_embedder
    folder = str(preset if model.startswith("clip") else siglip_preset)
    e = make_embedder(ModelSpec(model, folder), "off", runtime="keras")
    hub = e.hub
    clip = model.startswith("clip")
    context = hub.preprocessor.sequence_length  # 16 in the tiny models
    specials = 2 if clip else 1  # CLIP: start and end tokens; SigLIP: an end token
    words = ["red", "bicycle", "blue", "car"]
    fits = " ".join((words * 8)[:context - specials])  # a word a token
    longer = " ".join((words * 8)[:context - specials + 5])
    with caplog.at_level(logging.WARNING, logger="workflow.models.keras"):
        ids = hub._token_ids([fits, longer, "a dog"])
        t = e.embed_text([fits, longer])
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 2  # once for the long text in each of the two calls
    want = (f"is {context - specials + 5} tokens long; the text tower of {model} reads "
            f"{context - specials} (its context of {context} tokens, less its "
            f"{'start and end tokens' if clip else 'end token'}): the last 5 were dropped")
    assert all(want in w for w in warnings), warnings
    # cut as KerasHub cuts it (the end token kept): the same ids and embedding as the
    # text that fits, which is the longer one's first context - specials tokens
    assert ids.shape == (3, context)
    np.testing.assert_array_equal(ids[0], ids[1])
    np.testing.assert_array_equal(t[0], t[1])
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="workflow.models.keras"):
        e.embed_text([fits, "a dog"])
    assert not caplog.records  # nothing to say when every text fits


@pytest.mark.parametrize("weights", ["imagenet", "none"])
def test_offline_the_preset_download_names_the_remedies(monkeypatch, weights):
    import kagglehub
    import requests

    def no_network(*a, **kw):
        raise requests.exceptions.ConnectionError(
            "Failed to resolve 'api.kaggle.com' ([Errno -2] Name or service not known)")
    monkeypatch.setattr(kagglehub, "model_download", no_network)
    from workflow.models.loading import make_embedder
    with pytest.raises(OfflineWeightsError, match="clip_vit_base_patch16.*--weights PATH to "
                       "a local preset folder"):
        make_embedder(ModelSpec("clip-vit-b16", weights))


def _store_with_clip(tmp_path: Path, preset: Path, n: int = 8) -> Path:
    from workflow.stages import add, extract, prefilter, train
    from workflow.stages.preprocess import PreprocessConfig
    from workflow.stages.preprocess import run as preprocess
    write_corpus(tmp_path / "src", n, size=(64, 48))
    store = tmp_path / "store"
    preprocess(PreprocessConfig(store=str(store), sources=(str(tmp_path / "src"),),
                                workers=1, shard_size=4, progress=False))
    res = extract.run(extract.ExtractConfig(store=str(store), model="clip-vit-b32",
                                            weights=str(preset), batch_size=4, workers=1,
                                            progress=False))
    assert (res.complete, res.n_features, res.dim) == (True, n, DIM)
    train.run(train.TrainConfig(store=str(store), progress=False))
    add.run(add.AddConfig(store=str(store), progress=False))
    prefilter.run(prefilter.PrefilterConfig(store=str(store), progress=False))
    return store


def _stored_features(store: Path) -> np.ndarray:
    from workflow.formats.features import read_feature_shard
    rows = {}
    for p in sorted((store / "features").glob("shard-*.h5")):
        ids, feats, attrs = read_feature_shard(str(p))
        info = json.loads(attrs["model_info"])  # what the CNNs record, and the preset
        assert (attrs["model"], info["weights"], info["input_size"], info["preset"]) == \
            ("clip-vit-b32", "folder", SIZE, "clip_vit_base_patch32")
        rows.update(zip(ids.tolist(), feats.astype(np.float32)))
    return np.stack([rows[i] for i in range(len(rows))])


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_words_find_the_images_their_embedding_is_closest_to(preset, tmp_path):
    from workflow.models.loading import make_embedder
    from workflow.search.modes import MODES
    from workflow.search.query import TextQuery
    from workflow.search.searcher import Searcher
    store = _store_with_clip(tmp_path, preset)
    xb = _stored_features(store)
    assert np.allclose(np.linalg.norm(xb, axis=1), 1, atol=1e-2)
    texts = ["a red bicycle", "a dog", "blue car"]
    xq = l2_normalize(make_embedder(ModelSpec("clip-vit-b32", str(preset))).embed_text(texts))
    exact = xq @ xb.T
    s = Searcher(store)
    for mode in MODES:
        for t, r, row in zip(texts, s.search([TextQuery(t) for t in texts], k=3, mode=mode),
                             exact):
            assert r.query == f"text:{t}" and len(r.ids) == 3
            if mode != "ivfpq":  # PQ estimates there; exact scores everywhere else
                np.testing.assert_allclose(r.scores, row[r.ids], atol=2e-3)
            if mode == "exact":
                assert r.ids == np.argsort(-row, kind="stable")[:3].tolist()
    # the CLI: --text, several, and --text-file, printed as other queries are
    (tmp_path / "queries.txt").write_text("a dog\n\nblue car\n")
    p = subprocess.run([sys.executable, "scripts/06_search.py", "--store", str(store),
                        "--text", texts[0], "--text-file", str(tmp_path / "queries.txt"),
                        "--mode", "exact", "--k", "4", "--json"],
                       cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert p.returncode == 0, p.stderr[-3000:]
    out = [json.loads(line) for line in p.stdout.splitlines()]
    assert [o["query"] for o in out] == [f"text:{t}" for t in texts]
    for o, row in zip(out, exact):
        ids = [h["id"] for h in o["results"]]
        assert ids == np.argsort(-row, kind="stable")[:4].tolist()
        np.testing.assert_allclose([h["score"] for h in o["results"]], row[ids], atol=2e-3)
        assert all(h["key"].endswith(".jpg") for h in o["results"])


@pytest.mark.timeout(300)
def test_a_store_without_a_text_tower_refuses_words(tmp_path):
    from workflow.search.query import TextQuery
    from workflow.search.searcher import Searcher
    store = indexed_store(tmp_path, n=300, d=16, shard_size=100)
    with pytest.raises(BadQuery, match="synthetic, which has no text tower.*"
                       + ", ".join(HUB_MODELS)):
        Searcher(store).search([TextQuery("a red bicycle")])
    p = subprocess.run([sys.executable, "scripts/06_search.py", "--store", str(store),
                        "--text", "a red bicycle"], cwd=ROOT, capture_output=True, text=True,
                       timeout=240)
    assert p.returncode == 2 and "clip-vit-b32, clip-vit-b16, siglip-base-224" in p.stderr, \
        p.stderr[-2000:]
