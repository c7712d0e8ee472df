"""``streamrank eval``: prequential (test-then-train) evaluation on a MovieLens-layout dataset.

Events are replayed in time order. For every positive event (a rating >= 4, or a positive
interaction type) each method's current top-k for that user — seen items excluded — is
checked against the item *before* the event is applied; then the event is applied to every
method. Item statistics (interaction counts, trending, co-occurrence) are updated with the same
functions as the streaming job's item branch, and the streamrank method ranks with the same
model functions as the job's ranker.

Methods: ``streamrank`` (fused, learned, diversified), ``streamrank-no-content`` (the same
with the content signal ablated: ``ranking.content_signal`` false), ``popularity``
(interaction counts), ``embedding`` (the seeds' single decayed interest vector, cosine),
``cooc`` (co-occurrence alone).

Every metric is reported over all evaluated events and per slice (:data:`SLICES`): cold items
(the target had fewer than ``cold_items`` earlier interactions when ranked; only content can
place an item nobody has touched) and cold users (fewer than ``cold_users`` earlier events).
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections import defaultdict
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

METHODS = ("streamrank", "streamrank-no-content", "popularity", "embedding", "cooc")
METRICS = ("hr@10", "ndcg@10", "mrr@10", "coverage", "ild")
SLICES = ("all", "cold_items", "cold_users")
SLICE_METRICS = ("hr@10", "ndcg@10")


def _progress(total: int):
    from tqdm import tqdm

    return tqdm(total=total, desc="eval", unit="ev", mininterval=1.0)


class Prequential:
    """The replay: per event, score every method's list for the user (positive events of
    catalog items), then apply the event to the users (the job's per-event step,
    :class:`LocalUsers`), to the embedding baseline and to the item statistics."""

    def __init__(self, settings: Settings, cat: CatalogIndex, model: str, methods: tuple,
                 mirror_job: bool, cold_items: int = 5, cold_users: int = 5):
        self.p = p = ModelParams.from_settings(settings.ranking)
        self.cat, self.methods, self.mirror_job = cat, methods, mirror_job
        self.cold_items, self.cold_users = cold_items, cold_users
        self.mat = cat.live_matrix()
        # Mirroring the job: rank after every event, as the job does with one ranking per
        # event; otherwise the list before each event is what is scored and shown.
        step = StepConfig.from_settings(settings.ranking).per_event()
        variants = {"streamrank": p,
                    "streamrank-no-content": dataclasses.replace(p, content_signal=False)}
        # The streamrank users always run: their history is every method's co-occurrence
        # context.
        self.variants = {m: LocalUsers(cat, vp, step, model, explain=False, rank=mirror_job)
                         for m, vp in variants.items() if m in methods or m == "streamrank"}
        self.stats = InlineItemStats(cat, p, settings.ranking.max_neighbours)
        self.single: dict[str, np.ndarray] = {}  # the embedding baseline's one vector per user
        self.last_ts: dict[str, int] = {}
        self.item_events: dict[str, int] = defaultdict(int)  # earlier events per item / user
        self.user_events: dict[str, int] = defaultdict(int)
        self.sums = {m: {sl: dict.fromkeys(("hr@10", "ndcg@10", "mrr@10", "ild"), 0.0)
                         for sl in SLICES} for m in methods}
        self.counts = dict.fromkeys(SLICES, 0)
        self.recommended = {m: set() for m in methods}
        self.n_eval = 0

    def event(self, ev: dict) -> None:
        p, cat = self.p, self.cat
        user, item, ts = ev["user_id"], ev["item_id"], ev["ts"]
        weight = p.weight(ev["type"], ev.get("value"))
        target = cat.row.get(item)
        positive = (ev.get("value") or 0) >= 4 if ev["type"] == "rating" else weight > 0
        st, cooc, lists = None, None, {}
        if target is not None and (positive or weight > 0):
            st = self.variants["streamrank"].state_of(user)
            cooc = recommender.cooc_scores(st, cat, p)
            lists = {m: self._shown(users, user, ts, positive)
                     for m, users in self.variants.items() if m in self.methods}
        if positive and target is not None:
            self._score(user, st, target, lists, cooc, ts)
        if target is not None:
            vec = self.single.get(user)
            base = vec if vec is not None else np.zeros(cat.dim, np.float32)
            self.single[user] = ranking.update_interest(
                base, cat.vector(item), weight, ts - self.last_ts.get(user, ts), p.alpha,
                p.half_life_ms)
        # Apply the event to the users, then to the item statistics (with the user's history
        # before this event): in the job the statistics reach the ranker by broadcast, after
        # the ranker has handled the event itself. Every variant keeps the same history, so
        # one of them feeds the statistics.
        event = Event(user, item, ev["type"], ts, ev.get("value"), ev.get("event_id") or "")
        stats = self.stats
        for users in self.variants.values():
            users.event(event, now_ms=0, cooc=None if self.mirror_job else cooc, stats=stats)
            stats = None
        self.last_ts[user] = ts
        self.item_events[item] += 1
        self.user_events[user] += 1

    def _shown(self, users: LocalUsers, user: str, ts: int, positive: bool) -> list[int]:
        """What the user was shown before this event (the evaluated list, and the learner's
        negatives): in the job, the ranking emitted after the user's previous event."""
        st = users.state_of(user)
        if not self.mirror_job:
            ranked = recommender.rank(st, self.cat, users.p, ts, explain=False)
            show(st, ranked, self.cat)
            return ranked.rows
        return [self.cat.row[x] for x in st.shown if x in self.cat.row] if positive else []

    def _score(self, user: str, st, target: int, lists: dict, cooc, ts: int) -> None:
        cat, k = self.cat, self.p.k
        self.n_eval += 1
        slices = ["all"]
        if self.item_events[cat.ids[target]] < self.cold_items:
            slices.append("cold_items")
        if self.user_events[user] < self.cold_users:
            slices.append("cold_users")
        for sl in slices:
            self.counts[sl] += 1
        exclude = cat.exclusion_mask(st.seen, ts)  # (items not yet published too)
        for m in self.methods:
            if m in lists:
                rows = lists[m]
            elif m == "popularity":
                rows = ranking.top_k(cat.counts().astype(float), k, exclude).tolist()
            elif m == "embedding":
                vec = self.single.get(user)
                s = (ranking.cosine_scores(vec, self.mat) if vec is not None
                     else cat.counts().astype(float))
                rows = ranking.top_k(s, k, exclude).tolist()
            else:  # cooc alone, popularity only to break ties
                rows = ranking.top_k(cooc + 1e-9 * cat.counts(), k, exclude).tolist()
            hit = {"hr@10": metrics.hit_at_k(rows, target, k),
                   "ndcg@10": metrics.ndcg_at_k(rows, target, k),
                   "mrr@10": metrics.reciprocal_rank(rows, target, k),
                   "ild": metrics.intra_list_diversity(self.mat[rows])}
            for sl in slices:
                acc = self.sums[m][sl]
                for key, v in hit.items():
                    acc[key] += v
            self.recommended[m].update(rows)

    def hit_rate(self, m: str) -> float:
        return self.sums[m]["all"]["hr@10"] / max(self.n_eval, 1)

    def summary(self) -> dict:
        out = {}
        for m in self.methods:
            s, n = self.sums[m]["all"], max(self.n_eval, 1)
            out[m] = {"hr@10": round(s["hr@10"] / n, 4), "ndcg@10": round(s["ndcg@10"] / n, 4),
                      "mrr@10": round(s["mrr@10"] / n, 4),
                      "coverage": round(metrics.catalog_coverage(self.recommended[m],
                                                                 self.cat.size), 4),
                      "ild": round(s["ild"] / n, 4)}
        return out

    def slices(self) -> dict:
        """HR@10 and NDCG@10 of every method per slice, with the slice's size."""
        out = {}
        for sl in SLICES:
            n = max(self.counts[sl], 1)
            out[sl] = {"evaluated": self.counts[sl],
                       **{m: {key: round(self.sums[m][sl][key] / n, 4) for key in SLICE_METRICS}
                          for m in self.methods}}
        return out


def run_eval(settings: Settings, data_dir: str, limit: Optional[int] = None,
             out_dir: str = ".run/eval", methods: tuple = METHODS, progress: bool = True,
             checkpoints: int = 20, mirror_job: bool = False, cold_items: int = 5,
             cold_users: int = 5) -> dict:
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
    replay = Prequential(settings, catalog_of(parsed, vectors), model, methods, mirror_job,
                         cold_items=cold_items, cold_users=cold_users)
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
              "seconds": round(time.perf_counter() - t0, 1), "methods": replay.summary(),
              "slices": {"thresholds": {"cold_items": cold_items, "cold_users": cold_users},
                         **replay.slices()}}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval.json").write_text(json.dumps({**result, "curve": curve}, indent=2))
    _plot(curve, out / "eval.png", result)
    result["json"], result["plot"] = str(out / "eval.json"), str(out / "eval.png")
    if mirror_job:
        users = replay.variants["streamrank"].states
        result["final_rankings"] = {u: list(st.shown) for u, st in users.items()}
    return result


def _plot(curve: dict, path: Path, result: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bars) = plt.subplots(1, 2, figsize=(13, 4.8), dpi=110,
                                   gridspec_kw={"width_ratios": [1.4, 1]})
    for m, points in curve.items():
        if points:
            xs, ys = zip(*points)
            ax.plot(xs, ys, label=f"{m} (HR@10 {result['methods'][m]['hr@10']:.3f})",
                    linewidth=2.2 if m == "streamrank" else 1.4)
    ax.set_xlabel("events seen")
    ax.set_ylabel("cumulative HR@10")
    ax.set_title(f"Prequential evaluation on {Path(result['dataset']).name}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _plot_slices(bars, result)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _plot_slices(ax, result: dict) -> None:
    """HR@10 of every method per slice, as grouped bars."""
    sl = result["slices"]
    methods = list(result["methods"])
    width = 0.8 / max(len(methods), 1)
    for j, m in enumerate(methods):
        ys = [sl[name][m]["hr@10"] for name in SLICES]
        ax.bar(np.arange(len(SLICES)) + j * width, ys, width, label=m)
    ax.set_xticks(np.arange(len(SLICES)) + width * (len(methods) - 1) / 2)
    ax.set_xticklabels([f"{name.replace('_', ' ')}\n({sl[name]['evaluated']:,} events)"
                        for name in SLICES])
    ax.set_ylabel("HR@10")
    th = sl["thresholds"]
    ax.set_title(f"By slice (cold: < {th['cold_items']} earlier interactions of the item, "
                 f"< {th['cold_users']} events of the user)", fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=7)


def table(result: dict) -> str:
    """The slice table as Markdown: HR@10 / NDCG@10 per method and slice."""
    sl = result["slices"]
    head = "| method | " + " | ".join(
        f"{name.replace('_', ' ')} ({sl[name]['evaluated']:,})" for name in SLICES) + " |"
    lines = [head, "|---" * (len(SLICES) + 1) + "|"]
    for m in result["methods"]:
        cells = [f"{sl[name][m]['hr@10']:.4f} / {sl[name][m]['ndcg@10']:.4f}"
                 for name in SLICES]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
