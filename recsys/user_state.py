"""Per-user state, stored in Flink keyed state as compact bytes (not pickles).

Layout (little endian), version 4::

    u8 version | u16 dim | u8 n_centroids | u8 n_weights | u32 n_events | i64 last_ts
    f32[n_centroids * dim] centroids | f32[n_centroids] masses | f64[n_weights] fusion weights
    f64 cooc_top | u8 n_shown_features | f64[n_shown_features * 4] shown features
    u32[3] byte lengths of: seen (u64 item keys) | history | shown (the ids, newline-separated
    UTF-8)
    UTF-8 JSON tail {"pending": [...], "model": "...", "due": {"ids": [...], "ts": n}}  (due only while set)

``seen`` are the items the user interacted with (never recommended again), as a bounded set
of 64-bit item keys (:func:`item_key`; at most ``ranking.max_seen``, the oldest dropped
first): 8 bytes an item, copied in and out of state as one array, so neither its size per
item nor the time to read, write or test it grows with the length of the ids (version 3
kept the ids as text: ~100 us to split and join 5,000 of them at every event). ``history`` the
most recent of them the user consumed (co-occurrence context; negative feedback never),
``shown`` the last top-k (negatives for learning),
``shown_features`` the shown items' features when they were ranked and ``cooc_top`` the
user's best co-occurrence score then (what learning compares the next engaged item with,
without scoring the catalog again), ``pending`` events whose item was not in the catalog yet, ``due`` the events applied since the
last ranking, whose ranking is not emitted yet (``ranking.emit_window_ms``; an older state's
``[event_id, ts]`` is read as one such event). The id lists
are newline-joined rather than JSON (ids never hold control characters: the parser rejects
them). Versions 3 (seen as ids) and 2 (all lists in the JSON tail) are read too.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np

from recsys import interests

_HEADER = struct.Struct("<BHBBIq")
_SHOWN = struct.Struct("<dB")  # cooc_top, number of shown feature rows (version 4)
_LISTS = struct.Struct("<III")
N_FEATURES = 4


def join_ids(ids) -> bytes:
    """Ids as newline-separated UTF-8 (ids never hold control characters: the parser rejects
    them). The compact list layout of user state and of co-occurrence counts."""
    return "\n".join(ids).encode("utf-8")


def split_ids(data: bytes) -> list[str]:
    return data.decode("utf-8").split("\n") if data else []


def item_key(item_id: str) -> int:
    """An item id's 64-bit key (BLAKE2b), the same in every process: what the user state
    remembers of a seen item (a collision between two of a catalog's items, ~n^2 / 2^65, is
    negligible)."""
    return int.from_bytes(hashlib.blake2b(item_id.encode("utf-8"), digest_size=8).digest(),
                          "little")


def item_keys(item_ids) -> np.ndarray:
    return np.fromiter((item_key(i) for i in item_ids), np.uint64)


def push_recent(items: list[str], item_id: str, bound: int) -> None:
    """Append ``item_id`` as the most recent entry (moving it if present), keep ``bound``."""
    if item_id in items:
        items.remove(item_id)
    items.append(item_id)
    if len(items) > bound:
        del items[: len(items) - bound]


_VERSION = 4
_FORGOTTEN = struct.Struct("<Bqq")
_FORGOTTEN_TAG = 0xFF


@dataclass
class Forgotten:
    """What is left of a user after ``forget_user``: only that they were forgotten, at event
    time ``ts``, until processing time ``expires_ms``. Events older than the forget are
    refused meanwhile (they must not bring the user back); newer ones start afresh."""

    ts: int
    expires_ms: int

    def to_bytes(self) -> bytes:
        return _FORGOTTEN.pack(_FORGOTTEN_TAG, self.ts, self.expires_ms)


def decode_profile(data: bytes) -> "UserState | Forgotten":
    """A user's keyed state value: their :class:`UserState`, or a :class:`Forgotten` marker."""
    if data[0] == _FORGOTTEN_TAG:
        _, ts, expires = _FORGOTTEN.unpack_from(data, 0)
        return Forgotten(ts, expires)
    return UserState.from_bytes(data)


@dataclass
class Due:
    """The user's next ranking, not emitted yet: the events it covers (in the order they were
    applied) and the event time of the latest (the ranking's clock)."""

    event_ids: list[str]
    ts: int


@dataclass
class PendingEvent:
    """An event whose item was not in the catalog yet; applied once the item arrives."""

    item_id: str
    weight: float
    ts: int
    event_id: str = ""
    held_at_ms: int = 0  # processing time the event was first held (for expiry)
    partition: int = -1  # where the event was read (for a dead letter)
    offset: int = -1


@dataclass
class UserState:
    centroids: np.ndarray  # [m, d] float32, unit rows
    masses: np.ndarray  # [m] float32
    weights: Optional[np.ndarray] = None  # [F] float64 fusion weights; None = defaults
    n_events: int = 0
    last_ts: int = 0
    seen: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint64))  # item keys
    history: list[str] = field(default_factory=list)
    shown: list[str] = field(default_factory=list)
    pending: list[PendingEvent] = field(default_factory=list)
    model: str = ""  # the embedding model whose vector space the centroids live in
    due: Optional[Due] = None  # events applied, their ranking not emitted yet
    # [len(shown), 4] float64 features of the shown items when ranked (None: unknown)
    shown_features: Optional[np.ndarray] = None
    cooc_top: float = 0.0

    @classmethod
    def empty(cls, dim: int) -> "UserState":
        return cls(centroids=np.zeros((0, dim), np.float32), masses=np.zeros(0, np.float32))

    @property
    def dim(self) -> int:
        return int(self.centroids.shape[1])

    @property
    def has_interest(self) -> bool:
        return self.centroids.shape[0] > 0

    def to_bytes(self) -> bytes:
        c = np.ascontiguousarray(self.centroids, dtype=np.float32)
        m = np.ascontiguousarray(self.masses, dtype=np.float32)
        w = np.zeros(0) if self.weights is None else np.asarray(self.weights, np.float64)
        fields = {
            "pending": [[p.item_id, p.weight, p.ts, p.event_id, p.held_at_ms, p.partition,
                         p.offset] for p in self.pending],
            "model": self.model,
        }
        if self.due is not None:
            fields["due"] = {"ids": self.due.event_ids, "ts": self.due.ts}
        lists = [np.ascontiguousarray(self.seen, np.uint64).tobytes(), join_ids(self.history),
                 join_ids(self.shown)]
        tail = json.dumps(fields, separators=(",", ":")).encode("utf-8")
        sf = (np.zeros((0, N_FEATURES)) if self.shown_features is None
              else np.ascontiguousarray(self.shown_features, np.float64))
        return b"".join([
            _HEADER.pack(_VERSION, c.shape[1], c.shape[0], w.shape[0], self.n_events,
                         self.last_ts),
            c.tobytes(), m.tobytes(), w.tobytes(), _SHOWN.pack(self.cooc_top, sf.shape[0]),
            sf.tobytes(), _LISTS.pack(*map(len, lists)), *lists, tail])

    @classmethod
    def from_bytes(cls, data: bytes) -> "UserState":
        version, dim, n_c, n_w, n_events, last_ts = _HEADER.unpack_from(data, 0)
        if version not in (2, 3, _VERSION):
            raise ValueError(f"unsupported user-state version {version}")
        off = _HEADER.size
        c = np.frombuffer(data, np.float32, n_c * dim, off).reshape(n_c, dim).copy()
        off += 4 * n_c * dim
        m = np.frombuffer(data, np.float32, n_c, off).copy()
        off += 4 * n_c
        w = np.frombuffer(data, np.float64, n_w, off).copy() if n_w else None
        off += 8 * n_w
        cooc_top, sf = 0.0, None
        if version == _VERSION:
            cooc_top, n_sf = _SHOWN.unpack_from(data, off)
            off += _SHOWN.size
            if n_sf:
                sf = np.frombuffer(data, np.float64, n_sf * N_FEATURES, off).reshape(
                    n_sf, N_FEATURES).copy()
            off += 8 * N_FEATURES * n_sf
        if version == 2:
            tail = json.loads(bytes(data[off:]).decode("utf-8"))
            seen, history, shown = tail["seen"], tail["history"], tail["shown"]
        else:
            lengths = _LISTS.unpack_from(data, off)
            off += _LISTS.size
            lists = []
            for i, n in enumerate(lengths):
                if i == 0 and version == _VERSION:
                    lists.append(np.frombuffer(data, np.uint64, n // 8, off).copy())
                else:
                    lists.append(split_ids(bytes(data[off:off + n])))
                off += n
            seen, history, shown = lists
            tail = json.loads(bytes(data[off:]).decode("utf-8"))
        if not isinstance(seen, np.ndarray):
            seen = item_keys(seen)
        pending = [PendingEvent(p[0], float(p[1]), int(p[2]), *p[3:]) for p in tail["pending"]]
        due = tail.get("due")
        return cls(centroids=c, masses=m, weights=w, n_events=n_events, last_ts=last_ts,
                   seen=seen, history=history, shown=shown,
                   pending=pending, model=tail.get("model", ""),
                   due=_due(due), shown_features=sf, cooc_top=cooc_top)

    def mark_seen(self, item_id: str, max_seen: int, max_history: int,
                  consumed: bool = True) -> None:
        """Exclude the item from the user's rankings from now on; ``consumed`` also makes it
        the most recent item of the history that feeds co-occurrence and the reasons
        (``ModelParams.enters_history``). Negative feedback is seen, never recent: it must
        not pull in its neighbours or be cited as something the user liked, and it takes
        back an earlier like of the same item."""
        key = np.uint64(item_key(item_id))
        seen = self.seen
        if seen.size:
            other = seen != key
            if not other.all():
                seen = seen[other]
        out = np.empty(seen.size + 1, np.uint64)  # (np.append's checks cost more than this)
        out[:-1] = seen
        out[-1] = key
        self.seen = out[-max_seen:] if out.size > max_seen else out
        if consumed:
            push_recent(self.history, item_id, max_history)
        elif item_id in self.history:
            self.history.remove(item_id)

    def has_seen(self, item_id: str) -> bool:
        return bool(self.seen.size) and np.uint64(item_key(item_id)) in self.seen

    def add_pending(self, event: PendingEvent, max_pending: int) -> bool:
        """Queue an event for an unknown item; False (and nothing queued) when full."""
        if len(self.pending) >= max_pending:
            return False
        self.pending.append(event)
        return True

    def apply_interest(self, item_vec: np.ndarray, weight: float, ts: int, *,
                       max_centroids: int, open_threshold: float, alpha: float,
                       half_life_ms: float) -> None:
        """Move the multi-interest centroids with one interaction (in place)."""
        if self.centroids.shape[1] != item_vec.shape[0]:
            # Embedding dimension changed (another model): start the interests afresh.
            self.centroids = np.zeros((0, item_vec.shape[0]), np.float32)
            self.masses = np.zeros(0, np.float32)
        dt = ts - self.last_ts if self.n_events else 0
        self.centroids, self.masses = interests.update_centroids(
            self.centroids, self.masses, item_vec, weight, dt, max_centroids=max_centroids,
            open_threshold=open_threshold, alpha=alpha, half_life_ms=half_life_ms)
        self.n_events += 1
        self.last_ts = max(self.last_ts, ts)

    def expire_pending(self, older_than_ms: int) -> list[PendingEvent]:
        """Remove and return the pending events held since before ``older_than_ms``."""
        expired = [p for p in self.pending if p.held_at_ms < older_than_ms]
        if expired:
            self.pending = [p for p in self.pending if p.held_at_ms >= older_than_ms]
        return expired

    def digest(self) -> str:
        """A fingerprint of everything the user's events determine (all but the last list
        emitted and its features, which depend on when catalog statistics arrived). Used by
        ``streamrank chaos`` to compare a run with failures to a failure-free one."""
        kept = self.shown, self.shown_features, self.cooc_top
        self.shown, self.shown_features, self.cooc_top = [], None, 0.0
        try:
            return hashlib.sha256(self.to_bytes()).hexdigest()[:32]
        finally:
            self.shown, self.shown_features, self.cooc_top = kept

    def drain_pending(self, known: Callable[[str], bool]) -> list[PendingEvent]:
        """Remove and return the pending events whose item is now ``known``, oldest first."""
        ready = [p for p in self.pending if known(p.item_id)]
        if ready:
            self.pending = [p for p in self.pending if not known(p.item_id)]
        return ready


def _due(raw) -> Optional[Due]:
    if not raw:
        return None
    if isinstance(raw, list):  # states written before coalesced rankings: one event
        return Due([str(raw[0])], int(raw[1]))
    return Due([str(i) for i in raw["ids"]], int(raw["ts"]))
