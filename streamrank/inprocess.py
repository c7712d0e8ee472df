"""The ranker's per-user step without Flink, for the tools that replay a stream in one
process (``chaos``'s failure-free reference, ``bench``'s plain consumer loop): the same
forget / create / observe-or-hold sequence as ``RankUsers.process_element``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from recsys import recommender
from recsys.catalog import CatalogIndex
from recsys.recommender import ModelParams
from recsys.user_state import PendingEvent, UserState
from contracts.messages import Event


@dataclass
class Step:
    state: Optional[UserState]  # None after forget_user
    applied: bool  # the event moved the state (its item is known): rank now
    weight: float = 0.0
    prev_history: tuple = ()  # the user's recent items before the event


class InProcessUsers:
    def __init__(self, cat: CatalogIndex, p: ModelParams, model_id: str = ""):
        self.cat, self.p, self.model_id = cat, p, model_id
        self.users: dict[str, UserState] = {}

    def handle(self, ev: Event) -> Step:
        if ev.type == "forget_user":
            self.users.pop(ev.user_id, None)
            return Step(None, False)
        st = self.users.get(ev.user_id)
        if st is None:
            st = self.users[ev.user_id] = UserState.empty(self.cat.dim or 384)
            st.model = self.model_id
        prev = tuple(st.history)
        w = self.p.weight(ev.type, ev.value)
        if recommender.observe(st, self.cat, self.p, ev.item_id, w, ev.ts):
            return Step(st, True, w, prev)
        st.add_pending(PendingEvent(ev.item_id, w, ev.ts, ev.event_id), self.p.max_pending)
        return Step(st, False, w, prev)
