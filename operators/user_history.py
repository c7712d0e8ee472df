"""The user-history operator: events keyed by user -> each interaction with the user's recent
items, for the keyed-by-item branch (``operators/item_branch.py``). The recent items are kept
newline-joined (read and written at every event: no JSON on this path)."""

from __future__ import annotations

import json
from typing import Iterable, Optional

from pyflink.common import Row, Types
from pyflink.datastream.functions import KeyedProcessFunction, RuntimeContext
from pyflink.datastream.state import ValueStateDescriptor

from operators.common import LoggedOpen, user_ttl
from recsys.item_stats import cooc_context
from recsys.recommender import ModelParams
from recsys.user_state import push_recent
from contracts.config import RankingSettings


_FORGOTTEN = "\x00"  # marks a forgotten user's value (ids never hold control characters)


def _read(raw: Optional[str]) -> tuple[list[str], Optional[dict]]:
    """The user's recent items (newline-joined) or their forgotten marker
    (``{"ts", "expires"}`` as JSON after ``_FORGOTTEN``). Values written before, a JSON list
    or a bare JSON marker, are read too."""
    if not raw:
        return [], None
    if raw[0] == _FORGOTTEN:
        return [], json.loads(raw[1:])
    if raw[0] == "{":
        return [], json.loads(raw)
    if raw[0] == "[":
        return json.loads(raw), None
    return raw.split("\n"), None


class UserHistory(KeyedProcessFunction, LoggedOpen):
    """Events keyed by user -> the interaction for the item branch, with the user's recent
    items (its co-occurrence context).

    Keeps the same recent-items list as the ranker (``ranking.history_size``) so the
    collaborative signal needs no cycle back from the ranker.
    """

    def __init__(self, ranking_cfg: RankingSettings):
        self.cfg = ranking_cfg

    def open(self, ctx: RuntimeContext) -> None:
        self._log_open(ctx, "user-history")
        self.p = ModelParams.from_settings(self.cfg)
        descriptor = ValueStateDescriptor("recent", Types.STRING())
        if self.cfg.user_ttl_hours > 0:
            descriptor.enable_time_to_live(user_ttl(self.cfg.user_ttl_hours))
        self.history = ctx.get_state(descriptor)

    def process_element(self, ev, ctx) -> Iterable:
        recent, forgotten = _read(self.history.value())
        forgot_ts = -1
        if forgotten is not None:  # the user was forgotten (see recsys.user_step.forget)
            forgot_ts = forgotten["ts"]
            if ev["type"] != "forget_user" and ev["ts"] <= forgot_ts:
                return  # the ranker dead-letters it
        if ev["type"] == "forget_user":
            memory_ms = int(self.cfg.forget_memory_hours * 3_600_000)
            if memory_ms > 0:
                expires = ctx.timer_service().current_processing_time() + memory_ms
                self.history.update(_FORGOTTEN + json.dumps(
                    {"ts": max(ev["ts"], forgot_ts), "expires": expires}))
                ctx.timer_service().register_processing_time_timer(expires)
            else:
                self.history.clear()
            return
        w = self.p.weight(ev["type"], ev["value"])
        if self.p.counts_as_consumption(ev["type"], w):
            # One record per event: the item's statistics, and its pairs with the user's
            # recent items, counted under this item only.
            yield Row(ev["item_id"], ev["type"], w, ev["ts"],
                      "\n".join(cooc_context(recent, ev["item_id"])))
        push_recent(recent, ev["item_id"], self.p.history_size)
        self.history.update("\n".join(recent))

    def on_timer(self, timestamp: int, ctx) -> Iterable:
        _, forgotten = _read(self.history.value())
        if forgotten is not None and timestamp >= forgotten["expires"]:
            self.history.clear()
        return ()
