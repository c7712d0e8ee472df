"""Message schemas of the topics, and their parsing/validation (pure Python, no Flink).

Every parse function takes the raw Kafka value (``bytes`` or ``None``) and returns either a
typed record or raises :class:`InvalidRecord` with a machine-readable ``reason`` code and a
human-readable detail; nothing else escapes them, whatever the bytes (an unexpected exception
becomes ``parser_error`` naming its type). Every string they accept encodes as strict UTF-8
(no lone surrogates); ids also hold no control, line/paragraph-separator or bidi-control
characters. Callers turn the error into a dead-letter record with :func:`dlq_record`, which is
bounded in size whatever the raw record was.
"""

from __future__ import annotations

import base64
import functools
import json
import math
import re
from dataclasses import dataclass
from typing import Any, Optional

EVENT_TYPES = frozenset(
    {"view", "click", "like", "purchase", "rating", "skip", "dislike"}
)
CONTROL_TYPES = frozenset({"forget_user"})


class InvalidRecord(ValueError):
    """A record that cannot be accepted. ``reason`` is a stable code, ``detail`` explains."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Event:
    """One interaction (or a control event when ``type`` is in CONTROL_TYPES); ``partition``
    and ``offset`` locate the record it was read from, when known (for dead letters raised
    after parsing)."""

    user_id: str
    item_id: str
    type: str
    ts: int
    value: Optional[float] = None
    event_id: str = ""
    partition: int = -1
    offset: int = -1

    @property
    def is_control(self) -> bool:
        return self.type in CONTROL_TYPES


@dataclass(frozen=True)
class Item:
    item_id: str
    title: str
    description: str
    categories: tuple[str, ...]
    ts: int
    deleted: bool = False
    published_ts: int = 0  # epoch ms; 0 = not given (rankable at once, never "fresh")

    def text(self) -> str:
        """The text that is embedded: title, then categories, then description."""
        parts = [self.title]
        if self.categories:
            parts.append("Categories: " + ", ".join(self.categories) + ".")
        if self.description:
            parts.append(self.description)
        return "\n".join(p for p in parts if p)


def _decode(raw: Optional[bytes], max_bytes: int) -> dict:
    if raw is None:
        raise InvalidRecord("empty", "record has no value")
    if len(raw) > max_bytes:
        raise InvalidRecord("too_large", f"record has {len(raw)} bytes > {max_bytes}")
    try:
        text = bytes(raw).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidRecord("invalid_utf8", str(exc)) from exc
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError) as exc:  # ValueError: also ints over 4,300 digits
        raise InvalidRecord("not_json", str(exc)[:200]) from exc
    if not isinstance(obj, dict):
        raise InvalidRecord("not_object", f"expected a JSON object, got {type(obj).__name__}")
    return obj


# Ids are keys of Kafka records and of Flink state, and "\n" separates them in compact state
# layouts: no C0/C1 controls, no line/paragraph separators, no bidi controls (they make an id
# display as another one), no lone surrogates (they cannot be encoded as UTF-8).
_BAD_ID_CHARS = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029"
                           "\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
# JSON "\ud800" escapes decode to lone surrogates: valid JSON, not encodable as UTF-8.
_SURROGATE = re.compile("[\ud800-\udfff]")


def _text(value: str, name: str) -> str:
    """``value`` when it encodes as strict UTF-8."""
    if _SURROGATE.search(value):
        raise InvalidRecord("invalid_unicode", f"{name} holds a lone surrogate "
                            "(not encodable as UTF-8)")
    return value


def _id(obj: dict, name: str, max_len: int, required: bool = True) -> str:
    value = obj.get(name)
    if value is None:
        if required:
            raise InvalidRecord("missing_field", f"{name} is required")
        return ""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise InvalidRecord("bad_type", f"{name} must be a string or integer")
    text = str(value)
    if required and not text.strip():
        raise InvalidRecord("empty_id", f"{name} is empty")
    if len(text) > max_len:
        raise InvalidRecord("id_too_long", f"{name} has {len(text)} chars > {max_len}")
    _text(text, name)
    if _BAD_ID_CHARS.search(text):
        raise InvalidRecord("bad_id", f"{name} contains control, separator, bidi or "
                            "surrogate characters")
    return text


# Magnitudes past this are rejected before any float arithmetic (a JSON integer may have
# thousands of digits; ``float()`` of it overflows).
_MAX_ABS_NUMBER = 1e18


def _number(value: Any) -> Optional[float]:
    """A finite JSON number as float, else None (booleans, huge integers, NaN, inf)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if isinstance(value, int):
        return float(value) if -_MAX_ABS_NUMBER <= value <= _MAX_ABS_NUMBER else None
    return value if math.isfinite(value) and abs(value) <= _MAX_ABS_NUMBER else None


def _ts(obj: dict, now_ms: int, max_future_skew_ms: int, min_ts_ms: int = 0) -> int:
    value = obj.get("ts")
    if value is None:
        raise InvalidRecord("missing_field", "ts is required (epoch milliseconds)")
    number = _number(value)
    if number is None:
        if isinstance(value, (int, float)) and not isinstance(value, bool) \
                and not (isinstance(value, float) and math.isnan(value)):
            raise InvalidRecord("ts_out_of_range", "ts is out of any valid range")
        raise InvalidRecord("bad_type", "ts must be a number (epoch milliseconds)")
    ts = int(number)
    if ts < min_ts_ms:
        raise InvalidRecord("ts_out_of_range", f"ts {ts} is before the earliest accepted "
                            f"{min_ts_ms} (validation.min_ts_ms)" if min_ts_ms > 0
                            else f"ts {ts} is before 1970")
    if ts > now_ms + max_future_skew_ms:
        raise InvalidRecord("ts_out_of_range", f"ts {ts} is more than "
                            f"{max_future_skew_ms} ms in the future")
    return ts


# Publication times accepted: years 1 to 9999 (anything else is a mistake).
_MIN_PUBLISHED_MS = -62_135_596_800_000
_MAX_PUBLISHED_MS = 253_402_300_799_999


def _published(obj: dict) -> int:
    """An item's optional ``published_ts`` (epoch ms): when it may first be ranked, and
    from when it counts as fresh (``ranking.freshness_*``). Any time in years 1 to 9999, the
    future included (an embargo); 0 when absent (the one value that means none)."""
    value = obj.get("published_ts")
    if value is None:
        return 0
    number = _number(value)
    if number is None:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            raise InvalidRecord("ts_out_of_range", "published_ts is out of any valid range")
        raise InvalidRecord("bad_type", "published_ts must be a number (epoch milliseconds)")
    if not _MIN_PUBLISHED_MS <= number <= _MAX_PUBLISHED_MS:
        raise InvalidRecord("ts_out_of_range", f"published_ts {int(number)} is not in years 1 "
                            "to 9999")
    return int(number)


def _never_raises(parse):
    """Anything but :class:`InvalidRecord` escaping a parser becomes a ``parser_error``
    naming the exception's type: no record can fail the operator that parses it."""

    @functools.wraps(parse)
    def guarded(*args, **kwargs):
        try:
            return parse(*args, **kwargs)
        except InvalidRecord:
            raise
        except Exception as exc:  # noqa: BLE001 - the point: nothing escapes
            raise InvalidRecord("parser_error", f"{type(exc).__name__}: {exc}"[:300]) from exc

    return guarded


@_never_raises
def parse_event(raw: Optional[bytes], *, now_ms: int, max_id_length: int = 256,
                max_future_skew_ms: int = 86_400_000, max_record_bytes: int = 1 << 20,
                min_ts_ms: int = 0) -> Event:
    """Parse and validate one ``events`` record."""
    obj = _decode(raw, max_record_bytes)
    etype = obj.get("type")
    if not isinstance(etype, str):
        raise InvalidRecord("missing_field" if etype is None else "bad_type",
                            "type must be a string")
    if etype not in EVENT_TYPES and etype not in CONTROL_TYPES:
        raise InvalidRecord("unknown_type", f"unknown event type {etype!r}; expected one of "
                            f"{sorted(EVENT_TYPES | CONTROL_TYPES)}")
    user_id = _id(obj, "user_id", max_id_length)
    event_id = _id(obj, "event_id", max_id_length, required=False)
    if etype in CONTROL_TYPES:
        ts = obj.get("ts")
        ts = _ts(obj, now_ms, max_future_skew_ms, min_ts_ms) if ts is not None else now_ms
        return Event(user_id=user_id, item_id="", type=etype, ts=ts, event_id=event_id)
    item_id = _id(obj, "item_id", max_id_length)
    ts = _ts(obj, now_ms, max_future_skew_ms, min_ts_ms)
    value = obj.get("value")
    if value is not None:
        value = _number(value)
        if value is None:
            raise InvalidRecord("bad_type", f"value must be a finite number of magnitude at "
                                f"most {_MAX_ABS_NUMBER:g}")
        value = float(value)
    if etype == "rating" and value is None:
        raise InvalidRecord("missing_field", "a rating event needs a numeric value")
    return Event(user_id=user_id, item_id=item_id, type=etype, ts=ts, value=value,
                 event_id=event_id)


@_never_raises
def tombstone_item_id(key: bytes, max_id_length: int = 256) -> str:
    """The item id of a tombstone (a null value on ``items``): its key, validated like any
    item id."""
    try:
        text = bytes(key).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidRecord("invalid_utf8", str(exc)) from exc
    return _id({"item_id": text}, "item_id", max_id_length)


@_never_raises
def parse_item(raw: Optional[bytes], *, now_ms: int, max_id_length: int = 256,
               max_text_chars: int = 20_000, max_future_skew_ms: int = 86_400_000,
               max_record_bytes: int = 1 << 20, min_ts_ms: int = 0) -> Item:
    """Parse and validate one ``items`` record."""
    obj = _decode(raw, max_record_bytes)
    item_id = _id(obj, "item_id", max_id_length)
    deleted = obj.get("deleted", False)
    if not isinstance(deleted, bool):
        raise InvalidRecord("bad_type", "deleted must be a boolean")
    ts = obj.get("ts")
    ts = _ts(obj, now_ms, max_future_skew_ms, min_ts_ms) if ts is not None else now_ms
    if deleted:
        return Item(item_id=item_id, title="", description="", categories=(), ts=ts,
                    deleted=True)
    title = obj.get("title")
    if not isinstance(title, str) or not title.strip():
        raise InvalidRecord("missing_field" if title is None else "bad_type",
                            "title must be a non-empty string")
    description = obj.get("description") or ""
    if not isinstance(description, str):
        raise InvalidRecord("bad_type", "description must be a string")
    categories = obj.get("categories") or []
    if not isinstance(categories, list) or not all(isinstance(c, str) for c in categories):
        raise InvalidRecord("bad_type", "categories must be a list of strings")
    size = len(title) + len(description) + sum(len(c) for c in categories)
    if size > max_text_chars:
        raise InvalidRecord("text_too_long", f"item text has {size} chars > {max_text_chars}")
    _text(title, "title")
    _text(description, "description")
    for c in categories:
        _text(c, "categories")
    return Item(item_id=item_id, title=title.strip(), description=description.strip(),
                categories=tuple(c.strip() for c in categories if c.strip()), ts=ts,
                published_ts=_published(obj))


DLQ_MAX_RAW_BYTES = 65_536


def _json_size(text: str) -> int:
    return len(json.dumps(text, ensure_ascii=False).encode("utf-8", "backslashreplace"))


def _bounded_raw(raw: bytes, max_raw_bytes: int) -> dict[str, Any]:
    """The raw bytes for a dead letter: as text when valid UTF-8, else base64, in at most
    ``max_raw_bytes`` once JSON-encoded. A longer payload is cut, and its full length and
    SHA-256 are given so the original can still be found and checked."""
    try:
        text: Optional[str] = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is not None and _json_size(text) <= max_raw_bytes:
        return {"raw": text, "raw_encoding": "utf-8"}
    if text is None and 4 * ((len(raw) + 2) // 3) + 2 <= max_raw_bytes:
        return {"raw": base64.b64encode(raw).decode("ascii"), "raw_encoding": "base64"}
    import hashlib  # lazily: see recsys/user_state.py digest()

    out: dict[str, Any] = {"raw_truncated": True, "raw_bytes": len(raw),
                           "raw_sha256": hashlib.sha256(raw).hexdigest()}
    if text is not None:
        # Escaping can grow a character to 6 bytes (\u0001): shrink until it fits.
        keep = max_raw_bytes * len(text) // max(_json_size(text), 1)
        while keep > 0 and _json_size(text[:keep]) > max_raw_bytes:
            keep = keep * 9 // 10
        out.update(raw=text[:keep], raw_encoding="utf-8")
    else:
        cut = max(0, (max_raw_bytes - 2) // 4 * 3)
        out.update(raw=base64.b64encode(raw[:cut]).decode("ascii"), raw_encoding="base64")
    return out


def dlq_record(error: InvalidRecord | str, raw: Optional[bytes], topic: str, partition: int,
               offset: int, ts: int, max_raw_bytes: int = DLQ_MAX_RAW_BYTES) -> bytes:
    """The ``*-dlq`` value for a rejected record: the reason, where the record was read, and
    its raw bytes (UTF-8 text, or base64; ``raw_encoding`` says which), cut to
    ``max_raw_bytes`` (``raw_truncated``, ``raw_bytes`` and ``raw_sha256`` then describe the
    whole). The record is at most ``max_raw_bytes`` + ~1 KiB, whatever came in."""
    if isinstance(error, InvalidRecord):
        reason, detail = error.reason, error.detail
    else:
        reason, detail = "error", str(error)
    reason, detail = reason[:64], detail[:500]
    rec: dict[str, Any] = {"error": f"{reason}: {detail}", "reason": reason}
    if raw is None:
        rec["raw"], rec["raw_encoding"] = None, "null"
    else:
        rec.update(_bounded_raw(bytes(raw), max_raw_bytes))
    rec.update(topic=str(topic)[:256], partition=partition, offset=offset, ts=ts)
    # backslashreplace: a lone surrogate in a detail becomes its JSON escape, never an error.
    return json.dumps(rec, ensure_ascii=False).encode("utf-8", "backslashreplace")


def ranking_record(*, user_id: str, items: list[dict], k: int, model: str,
                   event_ids: list[str], event_ts: int, emitted_ts: int, catalog_size: int,
                   state_digest: Optional[str] = None) -> bytes:
    """The ``rankings`` value: a user's re-ranked top-k after their events ``event_ids`` (all
    the events applied since their previous ranking, in order; ``event_id`` is the latest,
    ``event_ts`` its event time)."""
    rec = {
        "user_id": user_id, "items": items, "k": k, "model": model,
        "event_id": (event_ids[-1] if event_ids else "") or None,
        "event_ids": [e for e in event_ids if e], "event_ts": event_ts,
        "emitted_ts": emitted_ts, "catalog_size": catalog_size,
    }
    if state_digest is not None:
        rec["state_digest"] = state_digest
    return json.dumps(rec, separators=(",", ":")).encode("utf-8")
