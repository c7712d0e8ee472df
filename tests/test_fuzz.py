"""Property-based fuzzing of the parsing/validation layer: whatever bytes arrive, parsing
either returns a valid record or raises InvalidRecord (never anything else), and the dead
letter of a rejected record is valid JSON that gives the raw bytes back."""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from contracts.messages import (
    CONTROL_TYPES,
    EVENT_TYPES,
    Event,
    InvalidRecord,
    Item,
    dlq_record,
    parse_event,
    parse_item,
)

pytestmark = pytest.mark.unit

NOW = 1_700_000_000_000
LIMITS = dict(max_id_length=64, max_future_skew_ms=86_400_000, max_record_bytes=4096)

json_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True),
                         st.text(max_size=80))
json_values = st.recursive(json_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=10), inner, max_size=4)),
    max_leaves=12)
field_values = st.one_of(json_values, st.sampled_from(sorted(EVENT_TYPES | CONTROL_TYPES)),
                         st.integers(-10**13, 10**13), st.text(min_size=0, max_size=100))
# Objects that look like events or items, with any subset of fields of any type.
record_like = st.dictionaries(
    st.sampled_from(["event_id", "user_id", "item_id", "type", "value", "ts", "title",
                     "description", "categories", "deleted", "extra"]),
    field_values, max_size=9)
raw_inputs = st.one_of(
    st.binary(max_size=300),
    record_like.map(lambda d: json.dumps(d, allow_nan=True).encode()),
    json_values.map(lambda v: json.dumps(v, allow_nan=True).encode()),
    record_like.map(lambda d: json.dumps(d).encode()[: max(1, len(json.dumps(d)) // 2)]),
    st.none(),
)


def check_dlq(err: InvalidRecord, raw) -> None:
    rec = json.loads(dlq_record(err, raw, "events", 3, 42, NOW))
    assert rec["reason"] == err.reason and rec["reason"]
    assert (rec["topic"], rec["partition"], rec["offset"]) == ("events", 3, 42)
    if raw is None:
        assert rec["raw"] is None
    elif rec["raw_encoding"] == "utf-8":
        assert rec["raw"].encode("utf-8") == raw
    else:
        assert base64.b64decode(rec["raw"]) == raw


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw_inputs)
def test_parse_event_accepts_or_rejects_cleanly(raw):
    try:
        ev = parse_event(raw, now_ms=NOW, **LIMITS)
    except InvalidRecord as err:
        check_dlq(err, raw)
        return
    assert isinstance(ev, Event)
    assert ev.type in EVENT_TYPES | CONTROL_TYPES
    assert ev.user_id.strip() and len(ev.user_id) <= LIMITS["max_id_length"]
    assert 0 <= ev.ts <= NOW + LIMITS["max_future_skew_ms"]
    if not ev.is_control:
        assert ev.item_id.strip() and len(ev.item_id) <= LIMITS["max_id_length"]
    assert ev.value is None or (isinstance(ev.value, float) and ev.value == ev.value)


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw_inputs)
def test_parse_item_accepts_or_rejects_cleanly(raw):
    try:
        item = parse_item(raw, now_ms=NOW, max_text_chars=500, **LIMITS)
    except InvalidRecord as err:
        check_dlq(err, raw)
        return
    assert isinstance(item, Item)
    assert item.item_id.strip() and len(item.item_id) <= LIMITS["max_id_length"]
    assert item.deleted or (item.title and len(item.text()) <= 500 + 200)


@settings(max_examples=300, deadline=None)
@given(raw_inputs.filter(lambda r: r is not None), st.integers(1, 64))
def test_oversized_records_are_rejected_before_parsing(head, extra):
    raw = head + b" " * (LIMITS["max_record_bytes"] + extra - len(head))
    with pytest.raises(InvalidRecord) as err:
        parse_event(raw, now_ms=NOW, **LIMITS)
    assert err.value.reason == "too_large"
