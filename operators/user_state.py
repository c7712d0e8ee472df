"""Per-user interest state, stored in Flink keyed state as compact bytes (not pickles).

Layout (little endian): ``u8 version | u16 dim | u32 n_events | i64 last_ts | f32[dim] vector``
followed by a UTF-8 JSON tail ``{"seen": [...], "pending": [[item, weight, ts, event_id], ...]}``.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from operators import ranking

_HEADER = struct.Struct("<BHIq")
_VERSION = 1


@dataclass
class PendingEvent:
    """An event whose item was not in the catalog yet; applied once the item arrives."""

    item_id: str
    weight: float
    ts: int
    event_id: str = ""


@dataclass
class UserState:
    vector: np.ndarray
    n_events: int = 0
    last_ts: int = 0
    seen: list[str] = field(default_factory=list)
    pending: list[PendingEvent] = field(default_factory=list)

    @classmethod
    def empty(cls, dim: int) -> "UserState":
        return cls(vector=np.zeros(dim, dtype=np.float32))

    @property
    def has_interest(self) -> bool:
        return bool(np.any(self.vector))

    def to_bytes(self) -> bytes:
        vec = np.ascontiguousarray(self.vector, dtype=np.float32)
        tail = json.dumps({
            "seen": self.seen,
            "pending": [[p.item_id, p.weight, p.ts, p.event_id] for p in self.pending],
        }, separators=(",", ":")).encode("utf-8")
        return _HEADER.pack(_VERSION, vec.shape[0], self.n_events, self.last_ts) \
            + vec.tobytes() + tail

    @classmethod
    def from_bytes(cls, data: bytes) -> "UserState":
        version, dim, n_events, last_ts = _HEADER.unpack_from(data, 0)
        if version != _VERSION:
            raise ValueError(f"unsupported user-state version {version}")
        start = _HEADER.size
        vec = np.frombuffer(data, dtype=np.float32, count=dim, offset=start).copy()
        tail = json.loads(bytes(data[start + 4 * dim:]).decode("utf-8"))
        pending = [PendingEvent(p[0], float(p[1]), int(p[2]), p[3]) for p in tail["pending"]]
        return cls(vector=vec, n_events=n_events, last_ts=last_ts, seen=tail["seen"],
                   pending=pending)

    def mark_seen(self, item_id: str, max_seen: int) -> None:
        if item_id in self.seen:
            self.seen.remove(item_id)
        self.seen.append(item_id)
        if len(self.seen) > max_seen:
            del self.seen[: len(self.seen) - max_seen]

    def add_pending(self, event: PendingEvent, max_pending: int) -> bool:
        """Queue an event for an unknown item; False (and nothing queued) when full."""
        if len(self.pending) >= max_pending:
            return False
        self.pending.append(event)
        return True

    def apply(self, item_vec: np.ndarray, weight: float, ts: int, alpha: float,
              half_life_ms: float) -> None:
        """Apply one interaction with a known item vector (state update, in place)."""
        if self.vector.shape != item_vec.shape:
            # Embedding dimension changed (another model): start the interest afresh.
            self.vector = np.zeros(item_vec.shape, dtype=np.float32)
        dt = ts - self.last_ts if self.n_events else 0
        self.vector = ranking.update_interest(self.vector, item_vec, weight, dt, alpha,
                                              half_life_ms)
        self.n_events += 1
        self.last_ts = max(self.last_ts, ts)

    def drain_pending(self, lookup) -> list[PendingEvent]:
        """Remove and return the pending events whose item ``lookup(item_id)`` now knows,
        oldest first."""
        ready = [p for p in self.pending if lookup(p.item_id) is not None]
        if ready:
            self.pending = [p for p in self.pending if lookup(p.item_id) is None]
        return ready

