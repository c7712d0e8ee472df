"""The skeleton job's one operator (``jobs/skeleton_job.py``): the state accesses and
outputs of the job's keyed operators, without their model. In a module of its own so that
it is pickled by reference, as the job's operators are."""

from __future__ import annotations

import time
from typing import Iterable, Optional

from pyflink.common import Row
from pyflink.datastream.functions import KeyedProcessFunction, RuntimeContext
from pyflink.datastream.state import ValueStateDescriptor

from contracts.config import ValidationSettings
from contracts.messages import Event, ranking_record
from operators.codecs import pack_interaction
from operators.flink_metrics import OperatorMetrics
from operators.parse import EventParser, event_records
from operators.types import STATE_BYTES, TO_INTERACTIONS, TO_RANKINGS

STATE_SIZE = 2048  # bytes read and written per event and operator (a user state's order)


class StateTouch(KeyedProcessFunction):
    """One keyed value read and rewritten per element; ``emit`` says what goes on: a ranking
    record and an interaction (the ranker's outputs; the element then is an events record,
    parsed as the ranker does), or nothing."""

    def __init__(self, emit: str, validation: Optional[ValidationSettings] = None):
        self.emit = emit
        self.validation = validation

    def open(self, ctx: RuntimeContext) -> None:
        self.state = ctx.get_state(ValueStateDescriptor("skeleton", STATE_BYTES))
        if self.emit == "ranking":
            self.parser = EventParser(self.validation, OperatorMetrics(ctx))

    def process_element(self, element, ctx) -> Iterable:
        """``element``: a record, or a batch of one key's records (``flink.event_batch_ms``:
        one state read and write for all of them, as the ranker does)."""
        raw = self.state.value()
        self.state.update(raw if raw is not None else bytes(STATE_SIZE))
        if self.emit != "ranking":
            return
        for row in event_records(element):
            ev = self.parser.parse(row, row["routed_by"])
            if not isinstance(ev, Event):
                continue  # (the skeleton has no dead-letter sink)
            user = ev.user_id
            yield Row(user.encode("utf-8"), ranking_record(
                user_id=user, items=[], k=0, model="skeleton", event_ids=[ev.event_id],
                event_ts=ev.ts, emitted_ts=int(time.time() * 1000), catalog_size=0),
                TO_RANKINGS)
            yield Row(ev.item_id.encode("utf-8"), pack_interaction(
                ev.type, 1.0, ev.ts, []), TO_INTERACTIONS)
