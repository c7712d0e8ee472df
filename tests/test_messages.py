import base64
import json

import pytest

from contracts.messages import InvalidRecord, dlq_record, parse_event, parse_item

pytestmark = pytest.mark.unit

NOW = 1_700_000_000_000


def ev(**fields):
    base = {"event_id": "e1", "user_id": "u1", "item_id": "i1", "type": "click", "ts": NOW}
    base.update(fields)
    return json.dumps({k: v for k, v in base.items() if v is not ...}).encode()


def test_valid_event():
    e = parse_event(ev(type="rating", value=4.5), now_ms=NOW)
    assert (e.user_id, e.item_id, e.type, e.value, e.ts, e.event_id) == \
        ("u1", "i1", "rating", 4.5, NOW, "e1")
    assert parse_event(ev(user_id=42, event_id=...), now_ms=NOW).user_id == "42"


def test_forget_user_needs_no_item_or_ts():
    e = parse_event(b'{"type": "forget_user", "user_id": "u9"}', now_ms=NOW)
    assert e.is_control and e.user_id == "u9" and e.ts == NOW


@pytest.mark.parametrize("raw,reason", [
    (None, "empty"),
    (b"\xff\xfe{", "invalid_utf8"),
    (b'{"user_id": "u1", ', "not_json"),
    (b"[1, 2]", "not_object"),
    (ev(type="teleport"), "unknown_type"),
    (ev(type=...), "missing_field"),
    (ev(user_id=...), "missing_field"),
    (ev(user_id="  "), "empty_id"),
    (ev(user_id="x" * 300), "id_too_long"),
    (ev(item_id="a\nb"), "bad_id"),
    (ev(item_id=["a"]), "bad_type"),
    (ev(ts=...), "missing_field"),
    (ev(ts="yesterday"), "bad_type"),
    (ev(ts=-1), "ts_out_of_range"),
    (ev(ts=NOW + 10 * 86_400_000), "ts_out_of_range"),
    (ev(type="rating"), "missing_field"),
    (ev(value="5"), "bad_type"),
    (ev(value=True), "bad_type"),
])
def test_invalid_events_have_reasons(raw, reason):
    with pytest.raises(InvalidRecord) as err:
        parse_event(raw, now_ms=NOW)
    assert err.value.reason == reason


def test_item_text_and_validation():
    it = parse_item(json.dumps({"item_id": 7, "title": " Alien (1979) ",
                                "categories": ["Horror", "Sci-Fi"],
                                "description": "Tags: space, monster."}).encode(), now_ms=NOW)
    assert it.item_id == "7" and it.title == "Alien (1979)"
    assert it.text() == "Alien (1979)\nCategories: Horror, Sci-Fi.\nTags: space, monster."
    assert parse_item(b'{"item_id": "7", "deleted": true}', now_ms=NOW).deleted
    with pytest.raises(InvalidRecord, match="title"):
        parse_item(b'{"item_id": "7"}', now_ms=NOW)
    with pytest.raises(InvalidRecord) as err:
        parse_item(json.dumps({"item_id": "7", "title": "x" * 50}).encode(), now_ms=NOW,
                   max_text_chars=10)
    assert err.value.reason == "text_too_long"


@pytest.mark.parametrize("value,reason", [
    (None, None), (0, None), (NOW + 10 ** 12, None),  # (a future publication is an embargo)
    (1.5e12, None), (-631_152_000_000, None),  # (1950: before 1970 is negative)
    ("2020", "bad_type"), (True, "bad_type"), (-62_135_596_800_001, "ts_out_of_range"),
    (10 ** 30, "ts_out_of_range"), (253_402_300_800_000, "ts_out_of_range"),
])
def test_an_items_publication_time_is_optional_and_checked(value, reason):
    record = {"item_id": "7", "title": "Alien (1979)"}
    if value is not None:
        record["published_ts"] = value
    raw = json.dumps(record).encode()
    if reason is None:
        assert parse_item(raw, now_ms=NOW).published_ts == int(value or 0)
    else:
        with pytest.raises(InvalidRecord) as err:
            parse_item(raw, now_ms=NOW)
        assert err.value.reason == reason and "published_ts" in str(err.value)


def test_dlq_record_keeps_raw_bytes_and_source_position():
    rec = json.loads(dlq_record(InvalidRecord("not_json", "oops"), b"{bad", "events", 2, 41, 5))
    assert rec["reason"] == "not_json" and rec["error"].startswith("not_json")
    assert (rec["raw"], rec["raw_encoding"]) == ("{bad", "utf-8")
    assert (rec["topic"], rec["partition"], rec["offset"], rec["ts"]) == ("events", 2, 41, 5)
    binary = json.loads(dlq_record(InvalidRecord("invalid_utf8", "x"), b"\xff\x00", "e", 0, 0, 0))
    assert binary["raw_encoding"] == "base64"
    assert base64.b64decode(binary["raw"]) == b"\xff\x00"
