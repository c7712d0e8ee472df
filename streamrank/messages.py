"""Message schemas of the topics, and their parsing/validation (pure Python, no Flink).

Every parse function takes the raw Kafka value (``bytes`` or ``None``) and returns either a
typed record or raises :class:`InvalidRecord` with a machine-readable ``reason`` code and a
human-readable detail. Callers turn the error into a dead-letter record with :func:`dlq_record`.
"""

from __future__ import annotations

import base64
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
    """One interaction (or a control event when ``type`` is in CONTROL_TYPES)."""

    user_id: str
    item_id: str
    type: str
    ts: int
    value: Optional[float] = None
    event_id: str = ""

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
    except (json.JSONDecodeError, RecursionError) as exc:
        raise InvalidRecord("not_json", str(exc)[:200]) from exc
    if not isinstance(obj, dict):
        raise InvalidRecord("not_object", f"expected a JSON object, got {type(obj).__name__}")
    return obj


# Ids are keys of Kafka records and of Flink state, and separators in compact state layouts.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


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
    if _CONTROL.search(text):
        raise InvalidRecord("bad_id", f"{name} contains control characters")
    return text


def _ts(obj: dict, now_ms: int, max_future_skew_ms: int) -> int:
    value = obj.get("ts")
    if value is None:
        raise InvalidRecord("missing_field", "ts is required (epoch milliseconds)")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidRecord("bad_type", "ts must be a number (epoch milliseconds)")
    ts = int(value)
    if ts < 0:
        raise InvalidRecord("ts_out_of_range", f"ts {ts} is before 1970")
    if ts > now_ms + max_future_skew_ms:
        raise InvalidRecord("ts_out_of_range", f"ts {ts} is more than "
                            f"{max_future_skew_ms} ms in the future")
    return ts


def parse_event(raw: Optional[bytes], *, now_ms: int, max_id_length: int = 256,
                max_future_skew_ms: int = 86_400_000, max_record_bytes: int = 1 << 20) -> Event:
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
        ts = _ts(obj, now_ms, max_future_skew_ms) if ts is not None else now_ms
        return Event(user_id=user_id, item_id="", type=etype, ts=ts, event_id=event_id)
    item_id = _id(obj, "item_id", max_id_length)
    ts = _ts(obj, now_ms, max_future_skew_ms)
    value = obj.get("value")
    if value is not None:
        if isinstance(value, bool) or not isinstance(value, (int, float)) \
                or not math.isfinite(value):
            raise InvalidRecord("bad_type", "value must be a finite number")
        value = float(value)
    if etype == "rating" and value is None:
        raise InvalidRecord("missing_field", "a rating event needs a numeric value")
    return Event(user_id=user_id, item_id=item_id, type=etype, ts=ts, value=value,
                 event_id=event_id)


def parse_item(raw: Optional[bytes], *, now_ms: int, max_id_length: int = 256,
               max_text_chars: int = 20_000, max_future_skew_ms: int = 86_400_000,
               max_record_bytes: int = 1 << 20) -> Item:
    """Parse and validate one ``items`` record."""
    obj = _decode(raw, max_record_bytes)
    item_id = _id(obj, "item_id", max_id_length)
    deleted = obj.get("deleted", False)
    if not isinstance(deleted, bool):
        raise InvalidRecord("bad_type", "deleted must be a boolean")
    ts = obj.get("ts")
    ts = _ts(obj, now_ms, max_future_skew_ms) if ts is not None else now_ms
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
    return Item(item_id=item_id, title=title.strip(), description=description.strip(),
                categories=tuple(c.strip() for c in categories if c.strip()), ts=ts)


def dlq_record(error: InvalidRecord | str, raw: Optional[bytes], topic: str, partition: int,
               offset: int, ts: int) -> bytes:
    """The ``*-dlq`` value for a rejected record. Raw bytes are kept: as text when they are
    valid UTF-8, else base64 (``raw_encoding`` says which)."""
    if isinstance(error, InvalidRecord):
        reason, detail = error.reason, error.detail
    else:
        reason, detail = "error", str(error)
    rec: dict[str, Any] = {"error": f"{reason}: {detail}", "reason": reason}
    if raw is None:
        rec["raw"], rec["raw_encoding"] = None, "null"
    else:
        try:
            rec["raw"], rec["raw_encoding"] = bytes(raw).decode("utf-8"), "utf-8"
        except UnicodeDecodeError:
            rec["raw"] = base64.b64encode(bytes(raw)).decode("ascii")
            rec["raw_encoding"] = "base64"
    rec.update(topic=topic, partition=partition, offset=offset, ts=ts)
    return json.dumps(rec, ensure_ascii=False).encode("utf-8")


def ranking_record(*, user_id: str, items: list[dict], k: int, model: str, event_id: str,
                   event_ts: int, emitted_ts: int, catalog_size: int,
                   state_digest: Optional[str] = None) -> bytes:
    """The ``rankings`` value: a user's re-ranked top-k after one of their events."""
    rec = {
        "user_id": user_id, "items": items, "k": k, "model": model,
        "event_id": event_id or None, "event_ts": event_ts, "emitted_ts": emitted_ts,
        "catalog_size": catalog_size,
    }
    if state_digest is not None:
        rec["state_digest"] = state_digest
    return json.dumps(rec, separators=(",", ":")).encode("utf-8")
