"""Per-subtask memory of streamrank's state, measured on the real data structures.

Replays ml-latest-small's interactions through the item-branch update (the job's own
``record_interaction``) into a ranker's ``CatalogIndex`` with random 384-d vectors (memory does
not depend on the values), and builds user states from the same replay; reports bytes per
item (ranker heap, measured with tracemalloc; broadcast and item-branch state, from their
byte layouts) and per user (keyed state bytes), then scales to 10k/100k/1M.

    .venv/bin/python scripts/memory_estimate.py ../shared/data/ml-latest-small
"""

from __future__ import annotations

import json
import sys
import tracemalloc
from collections import defaultdict

import numpy as np

from recsys.catalog import CatalogIndex
from recsys.item_stats import ItemRecord, cooc_context, record_interaction
from recsys.params import ModelParams
from recsys.user_state import UserState
from contracts.config import load_settings
from streamrank.replay import read_events, read_items


def replay(settings, p: ModelParams, items: list, events: list):
    """The dataset through the item branch's and the ranker's state (random vectors):
    the catalog, the item records, the users, and the catalog's Python heap in bytes."""
    rng = np.random.default_rng(0)
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    cat = CatalogIndex(dim=384, capacity=len(items))
    for it in items:
        cat.upsert(str(it["item_id"]), it["title"], rng.normal(size=384).astype(np.float32))
    records: dict[str, ItemRecord] = defaultdict(ItemRecord)
    histories: dict[str, list[str]] = defaultdict(list)
    users: dict[str, UserState] = {}
    for ev in events:
        item, user = ev["item_id"], ev["user_id"]
        w = p.weight(ev["type"], ev.get("value"))
        rec = records[item]
        out = record_interaction(rec.log_pop, rec.count, rec.earlier, ev["type"], w, ev["ts"],
                                 cooc_context(histories[user], item, p.cooc_context_size), p,
                                 settings.ranking.max_neighbours)
        if out is not None:
            rec.log_pop, rec.count, changed = out
            cat.set_popularity(item, rec.log_pop, rec.count)
            if changed:
                cat.set_cooccurrence(item, rec.earlier, changed=changed,
                                     max_neighbours=settings.ranking.max_neighbours)
        h = histories[user]
        if item in h:
            h.remove(item)
        h.append(item)
        del h[:-p.history_size]
        st = users.get(user) or UserState.empty(384)
        st.mark_seen(item, p.max_seen, p.history_size)
        users[user] = st
    heap = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    return cat, records, users, heap


def main(data_dir: str) -> None:
    settings = load_settings(environ={})
    p = ModelParams.from_settings(settings.ranking)
    events = read_events(data_dir)
    cat, records, users, heap = replay(settings, p, read_items(data_dir), events)
    n_items = len(cat)
    for st in users.values():  # a typical interest state: 4 centroids, learned weights
        st.centroids = np.ones((4, 384), np.float32)
        st.masses = np.ones(4, np.float32)
        st.weights = np.ones(4)
        st.shown = st.history[: p.k]
    user_bytes = np.array([len(st.to_bytes()) for st in users.values()])
    item_branch = np.array([len(r.to_bytes()) for r in records.values()])
    broadcast = 4 + 40 + 384 * 4 + 16 + float(np.mean([len(r.earlier) for r in
                                                       records.values()])) * 12 + 4
    per_item = {"ranker_heap_bytes": round(heap / n_items),
                "broadcast_state_bytes": round(broadcast),
                "item_branch_state_bytes": round(float(item_branch.mean()))}
    per_user = {"ranker_state_bytes_mean": round(float(user_bytes.mean())),
                "ranker_state_bytes_max": int(user_bytes.max()),
                "history_state_bytes": p.history_size * 8 + 2}
    report = {"items": n_items, "users": len(users), "events": len(events),
              "per_item": per_item, "per_user": per_user}
    for n in (10_000, 100_000, 1_000_000):
        report[f"{n}_items_MiB"] = round(n * sum(per_item.values()) / 2**20, 1)
        report[f"{n}_users_MiB"] = round(
            n * (per_user["ranker_state_bytes_mean"] + per_user["history_state_bytes"])
            / 2**20, 1)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "../shared/data/ml-latest-small")
