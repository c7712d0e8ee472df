"""The bench's in-process phases: the embedding model's speed at each precision, and the ranker
alone (the per-event step and ``recommender.rank``, no Kafka or Flink) on the catalog and on a
larger derived one."""

from __future__ import annotations

import json
import time
from typing import Optional

import numpy as np

from contracts.config import Settings
from streamrank.progress import say


def _say(msg: str) -> None:
    say("bench", msg)


def embedding_speed(settings: Settings, texts: list[str]) -> dict:
    """texts/s of the model at fp32 and at the CPU fast paths (bf16, int8) on the same texts,
    and each fast path's cosine agreement with fp32. ``fast_*`` names the faster of the two."""
    from udfs.embedding import TextEmbedder

    out, vecs = {}, {}
    for precision in ("fp32", "bf16", "int8"):
        emb = TextEmbedder(settings.model.name_or_path, device="cpu",
                           batch_size=settings.model.batch_size,
                           max_length=settings.model.max_length, precision=precision)
        emb.embed(texts[:settings.model.batch_size])  # warm up
        t0 = time.perf_counter()
        vecs[precision] = emb.embed(texts)
        out[f"{precision}_texts_per_s"] = round(len(texts) / (time.perf_counter() - t0), 1)
    for precision in ("bf16", "int8"):
        cos = (vecs["fp32"] * vecs[precision]).sum(axis=1)
        out[f"{precision}_speedup"] = round(out[f"{precision}_texts_per_s"]
                                            / out["fp32_texts_per_s"], 2)
        out[f"{precision}_mean_cosine"] = round(float(cos.mean()), 5)
        out[f"{precision}_min_cosine"] = round(float(cos.min()), 5)
    # The fast path: the fastest that keeps a mean cosine of 0.99 to fp32 (else the fastest),
    # if it is faster than fp32 at all on this CPU (bf16 needs AVX512-BF16 or AMX).
    faithful = [p for p in ("bf16", "int8") if out[f"{p}_mean_cosine"] >= 0.99]
    fast = max(faithful or ["bf16", "int8"], key=lambda p: out[f"{p}_texts_per_s"])
    if out[f"{fast}_speedup"] > 1.0:
        out.update(fast_precision=fast, fast_speedup=out[f"{fast}_speedup"],
                   fast_mean_cosine=out[f"{fast}_mean_cosine"])
    else:
        out.update(fast_precision="fp32", fast_speedup=1.0, fast_mean_cosine=1.0)
    out.update(texts=len(texts), cpu_native_bf16=_cpu_bf16())
    return out


def _cpu_bf16() -> bool:
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except Exception:  # noqa: BLE001 - an older torch without the probe
        return False


def _derived_catalog(parsed: list, vecs: np.ndarray, n: int, rng):
    """The dataset's catalog grown to ``n`` rows: each extra row a real item's embedding plus
    noise (cosine ~0.9 to it)."""
    from streamrank.offline import catalog_of

    cat = catalog_of(parsed, vecs, capacity=n)
    extra = n - len(parsed)
    if extra > 0:
        base = rng.integers(0, len(parsed), extra)
        noise = rng.standard_normal((extra, vecs.shape[1])).astype(np.float32)
        derived = vecs[base] + noise * np.float32(0.48 / np.sqrt(vecs.shape[1]))
        for j in range(extra):
            cat.upsert(f"derived-{j}", f"{parsed[base[j]].title} #{j}", derived[j])
    return cat


def _candidate_recall(st, cat, p, ts: int) -> tuple[int, int, int, int]:
    """(hits, total) of the candidate stage against exact scoring, and (hits, total) of the
    ANN index against each centroid's exact content top-10, for one user."""
    from recsys import recommender

    exact = recommender.rank(st, cat, p, ts, explain=False, exact=True)
    cand = set(recommender.candidate_rows(st, cat, p,
                                          recommender.cooc_scores(st, cat, p)).tolist())
    found = set(cat.ann_rows(st.centroids, p.ann_candidates, p.ann_nprobe).tolist())
    content = cat.live_matrix() @ st.centroids.T
    ann_hits = sum(len(set(np.argpartition(-content[:, c], 9)[:10].tolist()) & found)
                   for c in range(content.shape[1]))
    return len(set(exact.rows) & cand), len(exact.rows), ann_hits, 10 * content.shape[1]


def _replay_ranker(settings: Settings, cat, evs: list, check_recall: bool,
                   recall_sample: int = 200, keep: Optional[list] = None) -> dict:
    """Replay ``evs`` through the per-event step (each event ranked on its own) and time the
    rankings; optionally the candidate stage's recall; ``keep`` collects each ranking's
    input (a copy of the state, and its clock)."""
    from recsys import recommender
    from recsys.item_stats import InlineItemStats
    from recsys.params import ModelParams
    from recsys.user_state import UserState
    from recsys.user_step import Emit, LocalUsers, StepConfig, show

    p = ModelParams.from_settings(settings.ranking)
    stats = InlineItemStats(cat, p, settings.ranking.max_neighbours)
    users = LocalUsers(cat, p, StepConfig.from_settings(settings.ranking).per_event(),
                       rank=False)
    spent, ranked, recall = 0.0, 0, np.zeros(4, np.int64)
    every = max(1, len(evs) // recall_sample)
    for i, ev in enumerate(evs):
        for user, out, _ in users.event(ev, 0, stats=stats):
            if not isinstance(out, Emit):
                continue
            st = users.states[user]
            if keep is not None:
                keep.append((UserState.from_bytes(st.to_bytes()), out.due.ts))
            t0 = time.perf_counter()
            show(st, recommender.rank(st, cat, p, out.due.ts), cat)
            spent += time.perf_counter() - t0
            ranked += 1
            if check_recall and i % every == 0 and st.has_interest:
                recall += _candidate_recall(st, cat, p, out.due.ts)
    res = {"catalog": cat.size, "rankings": ranked,
           "rankings_per_s": round(ranked / spent, 1) if spent else None,
           "ms_per_ranking": round(1000 * spent / max(ranked, 1), 3),
           "exact": cat.size <= p.exact_max_items}
    if check_recall:
        res["candidate_recall_at_10"] = round(recall[0] / recall[1], 4) if recall[1] else None
        res["ann_recall_at_10"] = round(recall[2] / recall[3], 4) if recall[3] else None
        res["recall_checks"] = int(recall[1]) // max(p.k, 1)
    return res


def _one_by_one_vs_batched(settings: Settings, cat, requests: list) -> dict:
    """The same rankings (each user's state after each event, the final catalog statistics)
    one at a time and in batches of ``ranking.batch_max_users``, as a window ranks them."""
    from recsys import recommender
    from recsys.params import ModelParams

    p, batch = ModelParams.from_settings(settings.ranking), max(1, settings.ranking.batch_max_users)
    t0 = time.perf_counter()
    for st, ts in requests:
        recommender.rank(st, cat, p, ts)
    one = time.perf_counter() - t0
    t0 = time.perf_counter()
    for start in range(0, len(requests), batch):
        recommender.rank_batch(requests[start:start + batch], cat, p, chunk=batch)
    many = time.perf_counter() - t0
    return {"one_by_one_rankings_per_s": round(len(requests) / one, 1) if one else None,
            "batched_rankings_per_s": round(len(requests) / many, 1) if many else None,
            "batch_users": batch}


def catalog_scale(settings: Settings, items: list[dict], events: list[dict],
                  scale_items: int = 100_000, n_events: int = 2000, seed: int = 0) -> dict:
    """The ranker in one process (the code the job runs, no Kafka or Flink) on the MovieLens
    catalog, scored exactly, and on a MovieLens-derived catalog of ``scale_items`` rows,
    scored through candidate retrieval. Rankings/s over the same ``n_events`` events, and the
    recall@10 of the candidate stage against exact scoring of the large catalog: the share of
    the exact top-10 that the candidates contain; ``ann_recall_at_10``: the share of the
    exact content top-10 (per centroid) that the ANN index returns."""
    from contracts.messages import parse_event
    from streamrank.offline import embed_items

    parsed, vecs, _ = embed_items(settings, items)
    now = int(time.time() * 1000)
    evs = [parse_event(json.dumps(e).encode(), now_ms=now) for e in events[:n_events]]
    rng = np.random.default_rng(seed)
    requests: list = []
    small_cat = _derived_catalog(parsed, vecs, len(parsed), rng)
    small = _replay_ranker(settings, small_cat, evs, check_recall=False, keep=requests)
    _say(f"ranker, {small['catalog']} items, exact: {small['rankings_per_s']} rankings/s")
    small.update(_one_by_one_vs_batched(settings, small_cat, requests))
    _say(f"ranker, {small['catalog']} items, same {len(requests)} rankings: "
         f"{small['one_by_one_rankings_per_s']}/s one by one, "
         f"{small['batched_rankings_per_s']}/s in batches of {small['batch_users']} users")
    t0 = time.perf_counter()
    big_cat = _derived_catalog(parsed, vecs, scale_items, rng)
    big_cat.ann_rows(vecs[:1], 1, settings.ranking.ann_nprobe)  # build the index before timing
    build_s = round(time.perf_counter() - t0, 1)
    big = _replay_ranker(settings, big_cat, evs, check_recall=True)
    big["catalog_and_index_build_s"] = build_s
    _say(f"ranker, {big['catalog']} items, candidates + ANN: {big['rankings_per_s']} "
         f"rankings/s, candidate recall@10 {big['candidate_recall_at_10']}, "
         f"ANN recall@10 {big['ann_recall_at_10']}")
    return {"small": small, "large": big,
            "large_vs_small": round(big["rankings_per_s"] / small["rankings_per_s"], 3)
            if small["rankings_per_s"] and big["rankings_per_s"] else None}
