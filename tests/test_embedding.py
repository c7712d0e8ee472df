"""The embedding UDF with the real bundled model (all-MiniLM-L6-v2) and a real rocksdict."""

import dataclasses

import numpy as np
import pytest

from contracts.config import default_settings
from udfs.embedding import (
    BUNDLED,
    BUNDLED_MODEL_ID,
    CachedEmbedder,
    TextEmbedder,
    cache_key,
    model_id_for,
    resolve_model,
)
from udfs.warmup import warm_cache

pytestmark = pytest.mark.model

TEXTS = [
    "A haunted house horror film full of ghosts and terror.",
    "A terrifying horror movie about a demon possessing a child.",
    "A light romantic comedy about two friends falling in love in Paris.",
]


def test_bundled_model_embeds_meaningfully(tmp_path):
    assert resolve_model("bundled")[0] == BUNDLED_MODEL_ID
    emb = CachedEmbedder(cache_dir=tmp_path / "c", device="cpu")
    try:
        v = emb.embed(TEXTS)
    finally:
        emb.close()
    assert v.shape == (3, 384) and v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert v[0] @ v[1] > v[0] @ v[2] + 0.1  # two horror texts are closer than horror/romance


@pytest.mark.parametrize("precision,min_cosine", [("bf16", 0.99), ("int8", 0.9)])
def test_fast_cpu_paths_agree_with_fp32(precision, min_cosine):
    """The fast paths are approximations of fp32: unit rows that point the same way (their
    speed is measured by `streamrank bench`, not here). They are other model ids."""
    ref = TextEmbedder(BUNDLED, device="cpu").embed(TEXTS)
    fast = TextEmbedder(BUNDLED, device="cpu", precision=precision).embed(TEXTS)
    assert fast.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(fast, axis=1), 1.0, atol=1e-5)
    assert ((ref * fast).sum(axis=1) >= min_cosine).all()
    assert fast[0] @ fast[1] > fast[0] @ fast[2] + 0.1
    assert model_id_for(BUNDLED, precision) != model_id_for(BUNDLED, "fp32")


def test_second_catalog_load_embeds_nothing(tmp_path):
    cache = tmp_path / "cache"
    first = CachedEmbedder(cache_dir=cache, device="cpu")
    try:
        v1 = first.embed(TEXTS + TEXTS[:1])  # a repeated text is embedded once
        assert (first.stats.misses, first.stats.hits) == (3, 0)
    finally:
        first.close()
    # A new embedder (as after a restart) finds everything in the persistent cache and never
    # loads the model.
    second = CachedEmbedder(cache_dir=cache, device="cpu")
    try:
        v2 = second.embed(TEXTS)
        assert (second.stats.misses, second.stats.hits) == (0, 3)
        assert second._embedder is None
    finally:
        second.close()
    np.testing.assert_array_equal(v1[:3], v2)


def test_cache_is_keyed_by_model_and_text():
    assert cache_key("m1", "text") != cache_key("m2", "text")
    assert cache_key("m1", "text") != cache_key("m1", "text ")


def test_warm_cache_reports_and_skips_cached_items(tmp_path):
    model = dataclasses.replace(default_settings().model, cache_dir=str(tmp_path / "c"),
                                device="cpu")
    items = [{"item_id": str(i), "title": t, "ts": 0} for i, t in enumerate(TEXTS)]
    items.append({"item_id": "bad"})  # invalid records are skipped, not fatal
    first = warm_cache(items, model, progress=False)
    assert (first["items"], first["embedded"], first["cached"]) == (3, 3, 0)
    second = warm_cache(items, model, progress=False)
    assert (second["embedded"], second["cached"]) == (0, 3)


def _read_shared_cache(path, queue):
    from udfs.embedding import EmbeddingCache

    cache = EmbeddingCache(path)
    try:
        vec = cache.get("m", "t")
        cache.put("m", "new", np.ones(3))  # silently not persisted: read-only
        queue.put(None if vec is None else vec.tolist())
    finally:
        cache.close()


@pytest.mark.unit
def test_cache_held_by_another_process_opens_read_only(tmp_path):
    import multiprocessing as mp

    from udfs.embedding import EmbeddingCache

    holder = EmbeddingCache(tmp_path / "c")
    try:
        holder.put("m", "t", np.arange(3, dtype=np.float32))
        holder._db.flush()
        queue = mp.get_context("spawn").Queue()
        proc = mp.get_context("spawn").Process(target=_read_shared_cache,
                                               args=(str(tmp_path / "c"), queue))
        proc.start()
        proc.join(60)
        assert proc.exitcode == 0
        assert queue.get(timeout=5) == [0.0, 1.0, 2.0]
    finally:
        holder.close()


@pytest.mark.unit
@pytest.mark.parametrize("config", ["", '{"raw_mode":true,"prefix_extractors":{}}'])
def test_cache_opens_after_its_mode_file_was_clobbered(tmp_path, config):
    """Two processes opening the cache at once can leave rocksdict's mode file empty or
    naming raw mode (then rocksdict refuses the store): the cache repairs it and keeps its
    vectors."""
    from udfs.embedding import EmbeddingCache

    cache = EmbeddingCache(tmp_path / "c")
    cache.put("m", "t", np.arange(3, dtype=np.float32))
    cache.close()
    (tmp_path / "c" / "rocksdict-config.json").write_text(config)
    cache = EmbeddingCache(tmp_path / "c")
    try:
        assert cache.get("m", "t").tolist() == [0.0, 1.0, 2.0]
    finally:
        cache.close()


def test_a_model_that_cannot_be_loaded_gives_a_clear_error(tmp_path):
    (tmp_path / "not-a-model").mkdir()
    emb = CachedEmbedder(str(tmp_path / "not-a-model"), cache_dir=tmp_path / "c", device="cpu")
    try:
        with pytest.raises(RuntimeError, match="(?s)could not be loaded after 2 attempts.*"
                                               "model.name_or_path"):
            emb.load(attempts=2, backoff_s=0.01)
    finally:
        emb.close()


def test_failing_texts_and_broken_vectors_never_reach_the_catalog(tmp_path, monkeypatch):
    """One text the model raises on costs only that text; a non-finite vector is refused and
    not cached; a cached vector of the wrong shape is a miss."""
    emb = CachedEmbedder(cache_dir=tmp_path / "c", device="cpu")
    try:
        model = emb.load()
        real = model.embed

        def flaky(texts):
            if any("POISON" in t for t in texts):
                raise RuntimeError("tokenizer exploded")
            out = real(texts)
            out[[i for i, t in enumerate(texts) if "NAN" in t]] = np.nan
            return out

        monkeypatch.setattr(model, "embed", flaky)
        texts = [TEXTS[0], "POISON text", "a NAN text", TEXTS[2]]
        results = emb.embed_each(texts)
        assert [r[1].split(":")[0] for r in results] == ["", "embedding_failed", "bad_vector",
                                                         ""]
        assert results[0][0].shape == (384,) and results[1][0] is None
        assert emb.cache.get(emb.model_id, "a NAN text") is None, "never cache a NaN vector"
        emb.cache.put(emb.model_id, "short", np.ones(7, np.float32))
        assert emb.lookup("short") is None, "a cached vector of the wrong shape is a miss"
    finally:
        emb.close()
