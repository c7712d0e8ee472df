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
import time
from pathlib import Path
from typing import Optional

import numpy as np

from contracts.config import Settings
from contracts.messages import Event
from recsys import metrics, ranking, recommender
from recsys.catalog import CatalogIndex
from recsys.item_stats import InlineItemStats
from recsys.params import ModelParams
from recsys.user_step import LocalUsers, StepConfig, show
from streamrank.offline import catalog_of, embed_items
from streamrank.replay import read_events, read_items

METHODS = ("streamrank", "popularity", "embedding", "cooc")
METRICS = ("hr@10", "ndcg@10", "mrr@10", "coverage", "ild")


def _progress(total: int):
    from tqdm import tqdm

    return tqdm(total=total, desc="eval", unit="ev", mininterval=1.0)


class Prequential:
    """The replay: per event, score every method's list for the user (positive events of
    catalog items), then apply the event to the users (the job's per-event step,
    :class:`LocalUsers`), to the embedding baseline and to the item statistics."""

    def __init__(self, settings: Settings, cat: CatalogIndex, model: str, methods: tuple,
                 mirror_job: bool):
        self.p = p = ModelParams.from_settings(settings.ranking)
        self.cat, self.methods, self.mirror_job = cat, methods, mirror_job
        self.mat = cat.live_matrix()
        # Mirroring the job: rank after every event, as the job does with one ranking per
        # event; otherwise the list before each event is what is scored and shown.
        self.users = LocalUsers(cat, p, StepConfig.from_settings(settings.ranking).per_event(),
                                model, explain=False, rank=mirror_job)
        self.stats = InlineItemStats(cat, p, settings.ranking.max_neighbours)
        self.single: dict[str, np.ndarray] = {}  # the embedding baseline's one vector per user
        self.last_ts: dict[str, int] = {}
        self.sums = {m: dict.fromkeys(("hr@10", "ndcg@10", "mrr@10", "ild"), 0.0)
                     for m in methods}
        self.recommended = {m: set() for m in methods}
        self.n_eval = 0

    def event(self, ev: dict) -> None:
        p, cat = self.p, self.cat
        user, item, ts = ev["user_id"], ev["item_id"], ev["ts"]
        weight = p.weight(ev["type"], ev.get("value"))
        st = self.users.state_of(user)
        target = cat.row.get(item)
        positive = (ev.get("value") or 0) >= 4 if ev["type"] == "rating" else weight > 0
        cooc, sr_rows = None, []
        if target is not None and (positive or weight > 0):
            cooc = recommender.cooc_scores(st, cat, p)
        if "streamrank" in self.methods and target is not None and (positive or weight > 0):
            if not self.mirror_job:
                # What the user was shown before this event: the job emitted it after the
                # user's previous event. Both the evaluated list and the learner's negatives.
                ranked = recommender.rank(st, cat, p, ts, explain=False)
                sr_rows = ranked.rows
                show(st, ranked, cat)
            elif positive:
                sr_rows = [cat.row[x] for x in st.shown if x in cat.row]
        if positive and target is not None:
            self._score(user, st, target, sr_rows, cooc)
        if target is not None:
            vec = self.single.get(user)
            base = vec if vec is not None else np.zeros(cat.dim, np.float32)
            self.single[user] = ranking.update_interest(
                base, cat.vector(item), weight, ts - self.last_ts.get(user, ts), p.alpha,
                p.half_life_ms)
        # Apply the event to the user, then to the item statistics (with the user's history
        # before this event): in the job the statistics reach the ranker by broadcast, after
        # the ranker has handled the event itself.
        self.users.event(Event(user, item, ev["type"], ts, ev.get("value"),
                               ev.get("event_id") or ""), now_ms=0,
                         cooc=None if self.mirror_job else cooc, stats=self.stats)
        self.last_ts[user] = ts

    def _score(self, user: str, st, target: int, sr_rows: list[int], cooc) -> None:
        cat, k = self.cat, self.p.k
        self.n_eval += 1
        exclude = cat.exclusion_mask(st.seen)
        for m in self.methods:
            if m == "streamrank":
                rows = sr_rows
            elif m == "popularity":
                rows = ranking.top_k(cat.counts().astype(float), k, exclude).tolist()
            elif m == "embedding":
                vec = self.single.get(user)
                s = (ranking.cosine_scores(vec, self.mat) if vec is not None
                     else cat.counts().astype(float))
                rows = ranking.top_k(s, k, exclude).tolist()
            else:  # cooc alone, popularity only to break ties
                rows = ranking.top_k(cooc + 1e-9 * cat.counts(), k, exclude).tolist()
            acc = self.sums[m]
            acc["hr@10"] += metrics.hit_at_k(rows, target, k)
            acc["ndcg@10"] += metrics.ndcg_at_k(rows, target, k)
            acc["mrr@10"] += metrics.reciprocal_rank(rows, target, k)
            acc["ild"] += metrics.intra_list_diversity(self.mat[rows])
            self.recommended[m].update(rows)

    def hit_rate(self, m: str) -> float:
        return self.sums[m]["hr@10"] / max(self.n_eval, 1)

    def summary(self) -> dict:
        out = {}
        for m in self.methods:
            s, n = self.sums[m], max(self.n_eval, 1)
            out[m] = {"hr@10": round(s["hr@10"] / n, 4), "ndcg@10": round(s["ndcg@10"] / n, 4),
                      "mrr@10": round(s["mrr@10"] / n, 4),
                      "coverage": round(metrics.catalog_coverage(self.recommended[m],
                                                                 self.cat.size), 4),
                      "ild": round(s["ild"] / n, 4)}
        return out


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

    items = read_items(data_dir)
    events = read_events(data_dir, limit=limit)
    warm_cache(items, settings.model, progress=progress)
    parsed, vectors, model = embed_items(settings, items)
    replay = Prequential(settings, catalog_of(parsed, vectors), model, methods, mirror_job)
    curve = {m: [] for m in methods}
    mark_every = max(1, len(events) // checkpoints)
    bar = _progress(len(events)) if progress else None
    t0 = time.perf_counter()
    for idx, ev in enumerate(events):
        replay.event(ev)
        if (idx + 1) % mark_every == 0 and replay.n_eval:
            for m in methods:
                curve[m].append((idx + 1, replay.hit_rate(m)))
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    result = {"dataset": str(data_dir), "events": len(events), "evaluated": replay.n_eval,
              "seconds": round(time.perf_counter() - t0, 1), "methods": replay.summary()}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval.json").write_text(json.dumps({**result, "curve": curve}, indent=2))
    _plot(curve, out / "eval.png", result)
    result["json"], result["plot"] = str(out / "eval.json"), str(out / "eval.png")
    if mirror_job:
        result["final_rankings"] = {u: list(st.shown) for u, st in replay.users.states.items()}
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
