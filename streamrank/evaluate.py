"""``streamrank eval``: prequential (test-then-train) evaluation on a MovieLens-layout dataset.

Events are replayed in time order. For every positive event (a rating >= 4, or a positive
interaction type) each method's current top-k for that user — seen items excluded — is
checked against the item *before* the event is applied; then the event is applied to every
method. Item statistics (interaction counts, trending, co-occurrence) are updated with the same
functions as the streaming job's item branch, and the streamrank method ranks with the same
model functions as the job's ranker.

Methods: ``streamrank`` (fused, learned, diversified), ``popularity`` (interaction counts),
``embedding`` (the seeds' single decayed interest vector, cosine), ``cooc`` (co-occurrence
alone).
"""

from __future__ import annotations

import json
import math
import time
from collections import defaultdict
from pathlib import Path
from typing import Optional

import numpy as np

from recsys import metrics, ranking, recommender
from recsys.catalog import CatalogIndex
from recsys.item_stats import cooc_context, record_interaction
from recsys.recommender import ModelParams
from recsys.user_state import UserState
from contracts.config import Settings
from contracts.messages import parse_item
from streamrank.replay import read_events, read_items

METHODS = ("streamrank", "popularity", "embedding", "cooc")
METRICS = ("hr@10", "ndcg@10", "mrr@10", "coverage", "ild")


class ItemStatistics:
    """What the job's keyed-by-item branch computes (``item_stats.record_interaction``),
    applied synchronously."""

    def __init__(self, cat: CatalogIndex, p: ModelParams, max_neighbours: int):
        self.cat, self.p = cat, p
        self.max_neighbours = max_neighbours
        self.counts: dict[str, float] = defaultdict(float)
        self.log_pop: dict[str, float] = defaultdict(lambda: -math.inf)
        self.cooc: dict[str, dict[str, float]] = defaultdict(dict)

    def apply(self, history: list[str], item_id: str, event_type: str, weight: float,
              ts: int) -> None:
        earlier = self.cooc[item_id]
        updated = record_interaction(self.log_pop[item_id], self.counts[item_id], earlier,
                                     event_type, weight, ts, cooc_context(history, item_id),
                                     self.p, self.max_neighbours)
        if updated is None:
            return
        self.log_pop[item_id], self.counts[item_id], changed = updated
        self.cat.set_popularity(item_id, self.log_pop[item_id], self.counts[item_id])
        if changed:
            self.cat.set_cooccurrence(item_id, earlier, changed=changed,
                                      max_neighbours=self.max_neighbours)


def embed_items(settings: Settings, items: list[dict]) -> tuple[list, np.ndarray]:
    """The dataset's items parsed as the job parses them, and their vectors (through the
    embedding cache: the model runs only for texts not cached yet)."""
    from udfs.embedding import CachedEmbedder

    now = int(time.time() * 1000)
    parsed = [parse_item(json.dumps(it).encode(), now_ms=now) for it in items]
    emb = CachedEmbedder.from_settings(settings.model)
    try:
        return parsed, emb.embed([it.text() for it in parsed])
    finally:
        emb.close()


def _progress(total: int):
    from tqdm import tqdm

    return tqdm(total=total, desc="eval", unit="ev", mininterval=1.0)


def run_eval(settings: Settings, data_dir: str, limit: Optional[int] = None,
             out_dir: str = ".run/eval", methods: tuple = METHODS, progress: bool = True,
             checkpoints: int = 20, mirror_job: bool = False) -> dict:
    """Evaluate; returns the summary (also written to ``out_dir``/eval.json with the curve).

    With ``mirror_job`` the streamrank method also does what the job does after every event
    (rank, remember the list as shown) and the result carries ``final_rankings``: each user's
    list after their last event, as the job emitted it. Slower; used to check the job against
    this evaluation.
    """
    from udfs.warmup import warm_cache

    p = ModelParams.from_settings(settings.ranking)
    k = p.k
    items = read_items(data_dir)
    events = read_events(data_dir, limit=limit)
    warm_cache(items, settings.model, progress=progress)
    parsed, vectors = embed_items(settings, items)
    cat = CatalogIndex(dim=vectors.shape[1], capacity=len(parsed))
    for it, vec in zip(parsed, vectors):
        cat.upsert(it.item_id, it.title, vec)
    mat = cat.live_matrix()

    stats = ItemStatistics(cat, p, settings.ranking.max_neighbours)
    users: dict[str, UserState] = {}
    single: dict[str, np.ndarray] = {}  # the embedding baseline's one vector per user
    last_ts: dict[str, int] = {}
    sums = {m: dict.fromkeys(("hr@10", "ndcg@10", "mrr@10", "ild"), 0.0) for m in methods}
    recommended = {m: set() for m in methods}
    curve = {m: [] for m in methods}
    n_eval = 0
    last_index = {ev["user_id"]: i for i, ev in enumerate(events)} if mirror_job else {}
    final_rankings: dict[str, list[str]] = {}
    mark_every = max(1, len(events) // checkpoints)
    bar = _progress(len(events)) if progress else None
    t0 = time.perf_counter()
    for idx, ev in enumerate(events):
        user, item, ts = ev["user_id"], ev["item_id"], ev["ts"]
        weight = p.weight(ev["type"], ev.get("value"))
        st = users.get(user) or UserState.empty(cat.dim)
        target_row = cat.row.get(item)
        positive = (ev.get("value") or 0) >= 4 if ev["type"] == "rating" else weight > 0
        sr_rows: list[int] = []
        cooc = None
        if target_row is not None and (positive or weight > 0):
            cooc = recommender.cooc_scores(st, cat, p)
        if ("streamrank" in methods and target_row is not None and (positive or weight > 0)
                and not mirror_job):
            # What the user was shown before this event: the job emitted it after the user's
            # previous event. It is both the evaluated list and the learner's negatives.
            sr_rows = recommender.rank(st, cat, p, ts, explain=False, cooc=cooc).rows
            st.shown = [cat.ids[r] for r in sr_rows]
        elif positive and target_row is not None and "streamrank" in methods:
            sr_rows = [cat.row[x] for x in st.shown if x in cat.row]
        if positive and target_row is not None:
            n_eval += 1
            exclude = cat.exclusion_mask(st.seen)
            for m in methods:
                if m == "streamrank":
                    rows = sr_rows
                elif m == "popularity":
                    rows = ranking.top_k(cat.counts().astype(float), k, exclude).tolist()
                elif m == "embedding":
                    vec = single.get(user)
                    s = (ranking.cosine_scores(vec, mat) if vec is not None
                         else cat.counts().astype(float))
                    rows = ranking.top_k(s, k, exclude).tolist()
                else:  # cooc alone, popularity only to break ties
                    s = cooc + 1e-9 * cat.counts()
                    rows = ranking.top_k(s, k, exclude).tolist()
                acc = sums[m]
                acc["hr@10"] += metrics.hit_at_k(rows, target_row, k)
                acc["ndcg@10"] += metrics.ndcg_at_k(rows, target_row, k)
                acc["mrr@10"] += metrics.reciprocal_rank(rows, target_row, k)
                acc["ild"] += metrics.intra_list_diversity(mat[rows])
                recommended[m].update(rows)
        # Apply the event to the user, then to the item statistics (with the user's history
        # before this event): in the job the statistics reach the ranker by broadcast, after
        # the ranker has handled the event itself.
        prev_history = list(st.history)
        if target_row is not None:
            if "streamrank" in methods:
                recommender.apply_event(st, cat, p, item, weight, ts,
                                        cooc=None if mirror_job else cooc)
            vec = single.get(user)
            base = vec if vec is not None else np.zeros(cat.dim, np.float32)
            single[user] = ranking.update_interest(
                base, cat.vector(item), weight, ts - last_ts.get(user, ts), p.alpha,
                p.half_life_ms)
        st.mark_seen(item, p.max_seen, p.history_size)
        if mirror_job and "streamrank" in methods:
            st.shown = [cat.ids[r] for r in recommender.rank(st, cat, p, ts, explain=False).rows]
            if last_index[user] == idx:
                final_rankings[user] = list(st.shown)
        stats.apply(prev_history, item, ev["type"], weight, ts)
        users[user] = st
        last_ts[user] = ts
        if (idx + 1) % mark_every == 0 and n_eval:
            for m in methods:
                curve[m].append((idx + 1, sums[m]["hr@10"] / n_eval))
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    seconds = time.perf_counter() - t0

    result = {"dataset": str(data_dir), "events": len(events), "evaluated": n_eval,
              "seconds": round(seconds, 1), "methods": {}}
    for m in methods:
        s = sums[m]
        result["methods"][m] = {
            "hr@10": round(s["hr@10"] / max(n_eval, 1), 4),
            "ndcg@10": round(s["ndcg@10"] / max(n_eval, 1), 4),
            "mrr@10": round(s["mrr@10"] / max(n_eval, 1), 4),
            "coverage": round(metrics.catalog_coverage(recommended[m], cat.size), 4),
            "ild": round(s["ild"] / max(n_eval, 1), 4),
        }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval.json").write_text(json.dumps({**result, "curve": curve}, indent=2))
    _plot(curve, out / "eval.png", result)
    result["json"], result["plot"] = str(out / "eval.json"), str(out / "eval.png")
    if mirror_job:
        result["final_rankings"] = final_rankings
    return result


def _plot(curve: dict, path: Path, result: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=110)
    for m, points in curve.items():
        if points:
            xs, ys = zip(*points)
            ax.plot(xs, ys, label=f"{m} (HR@10 {result['methods'][m]['hr@10']:.3f})",
                    linewidth=2.2 if m == "streamrank" else 1.4)
    ax.set_xlabel("events seen")
    ax.set_ylabel("cumulative HR@10")
    ax.set_title(f"Prequential evaluation on {Path(result['dataset']).name}")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
