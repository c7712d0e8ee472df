"""The keyed-by-item branch: item statistics and co-occurrence counts, for the rankers.

One operator, two inputs keyed by item id: the interactions topic (each consumed item with
the user's recent items, written by the rankers) and the catalog (to know which ids are
items). Only catalog items are broadcast to the rankers; an id that is not in the catalog is
counted until ``ranking.unknown_item_ttl_ms`` after its first interaction (its held events
may still be applied when it arrives) and then dropped, so random ids cannot grow the state.

Each item's state is its :class:`recsys.item_stats.ItemRecord`, written whole, and the
interactions counted since (a list state: each interaction's bytes as they came, one append
each). Reading replays them onto the record (``record_interaction``, deterministic); the
record is written whole again, and the list cleared, at the interaction after ``_LOG_MAX``
appends. An interaction thus costs one small append rather than packing and writing all of
the item's counts (up to 2 x ``max_neighbours`` entries, ~4 KB: 9% of the interpreter's time
in a burst of the time-ordered MovieLens stream, py-spy).

Broadcasts are batched: an interaction updates the item's state and puts the item in an
in-memory outbox, and the outbox reaches the rankers as one "stats" element
(``codecs.pack_stats_batch``) at each ``ranking.popularity_emit_interval_ms`` boundary
(aligned for all items), so a ranker pays one call per interval instead of one per item. An
item's co-occurrence counts ride along at most once per ``ranking.neighbours_emit_interval_ms``
(they cost the rankers the most); until then the item waits in the outbox. They go whole,
and with the entries changed since the item's last send: a ranker that holds that send
merges only those (in the MovieLens stream ~60 of an item's up to 400 entries in 5 s).

The outbox is memory; timers (checkpointed) make it safe. One timer per boundary, under the
key of the first item queued for it, sends the outbox. And every item queued has a backstop
timer at most ``_BACKSTOP_MS`` later (one per item at a time, at its own time, so they do not
fire together): in normal operation it finds the item sent and does nothing; after a
restore, a backstop (or boundary) timer whose item this instance has not queued (its update
was in the lost outbox) reads the item's state and sends it, so no update is lost. (One
timer per item and boundary did the same, but fired hundreds of Python calls at each
boundary at once, which starved the ranker on the shared interpreter lock: 776 calls in one
100 ms at ~1,000 events/s, the ranker's events down to 6 in the next 100 ms.)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Optional

from pyflink.common import Row
from pyflink.datastream.functions import KeyedCoProcessFunction, RuntimeContext
from pyflink.datastream.state import ListStateDescriptor, ValueStateDescriptor

from operators.codecs import pack_stats_batch, unpack_interaction
from operators.flink_metrics import OperatorMetrics
from operators.common import LoggedOpen, now_ms
from recsys.item_stats import KNOWN, ItemRecord, pack_counts, record_interaction
from recsys.params import ModelParams
from operators.types import STATE_BYTES
from contracts.config import RankingSettings


# Decoded item records kept in memory (see ItemBranch._records): the items of a stream's
# recent interactions; up to ~max_neighbours x 2 counts each.
_RECORDS_KEPT = 4096
# Interactions appended to an item's log before its record is written whole again (a read
# replays up to this many, ~5 us each).
_LOG_MAX = 16
# After a failure, what the lost outbox held reaches the rankers within this long (each
# queued item's backstop timer; see the module docstring).
_BACKSTOP_MS = 10_000


def _next_boundary(now: int, interval_ms: int) -> int:
    """The first multiple of ``interval_ms`` after ``now``: the same for every item, so one
    batch covers all the items of an interval."""
    return (now // interval_ms + 1) * interval_ms


@dataclass
class _Outgoing:
    """An item waiting in the outbox: its record, whether its statistics are to be sent,
    from when its counts may be (0: they have not changed since last sent), and the keys of
    its counts changed since they were last sent."""

    rec: ItemRecord
    stats: bool
    counts_due: int
    changed: set = field(default_factory=set)


class ItemBranch(KeyedCoProcessFunction, LoggedOpen):
    """Interactions and catalog records keyed by item -> "stats" catalog updates."""

    def __init__(self, ranking_cfg: RankingSettings):
        self.cfg = ranking_cfg

    def open(self, ctx: RuntimeContext) -> None:
        self._log_open(ctx, "item-branch")
        self.p = ModelParams.from_settings(self.cfg)
        self.state = ctx.get_state(ValueStateDescriptor("item", STATE_BYTES))
        self.log = ctx.get_list_state(ListStateDescriptor("item-log", STATE_BYTES))
        self._outbox: dict[str, _Outgoing] = {}
        self._counts_sent: dict[str, int] = {}  # item -> when its counts last went out
        # Items whose whole counts this instance has sent: the rankers hold what it sent
        # since, so only the changed entries need go (not after a restore: the outbox that
        # held changes is gone, so the first send of an item is whole).
        self._whole_sent: set[str] = set()
        self._sent: tuple[int, set] = (-1, set())  # (boundary, the items its batch carried)
        # The boundary timers armed to send the outbox: time -> the key armed under.
        self._carriers: dict[int, str] = {}
        # Items this instance has queued (all they had is sent unless in the outbox), and
        # when each one's pending backstop timer fires. Both lost on restore: then a timer of
        # an item not queued since reads its state and sends it.
        self._queued: set[str] = set()
        self._backstop: dict[str, int] = {}
        # Decoded records of up to _RECORDS_KEPT items (the first kept goes first), the same
        # as their state (every change goes through _write or _append): an interaction with
        # one of them skips reading and replaying its state. With each, how many
        # interactions its log holds, and its counts as last written whole (pack_counts)
        # while no interaction has been appended since: a batch sends them as they are.
        self._records: dict[str, ItemRecord] = {}
        self._logged: dict[str, int] = {}
        self._packed: dict[str, bytes] = {}
        m = OperatorMetrics(ctx)
        self.dropped = m.counter("unknown_items_dropped")
        self.malformed = m.counter("interactions_malformed")
        self.batches = m.counter("stats_batches")
        self.batched_items = m.counter("stats_items")

    # -- interactions ------------------------------------------------------------------------

    def process_element1(self, record, ctx) -> Iterable:
        """``record``: an interactions-topic row (key, value, topic, partition, offset,
        routed_by) (``kafka_io.keyed_by_record_key``), the value ``codecs.pack_interaction``;
        ``routed_by`` is the current key, the item id (read from the row: asking the context is
        a JVM call, which lets go of the interpreter's lock)."""
        try:
            interaction = unpack_interaction(record[1])
        except (ValueError, IndexError, UnicodeDecodeError, TypeError):
            self.malformed.inc()  # not written by a ranker: nothing to count
            return
        key = record[-1]
        rec = self._read(key)
        changed = self._count(rec, interaction)
        if changed is None:
            return
        now = now_ms()
        if not rec.known and rec.due_ms == 0:  # not in the catalog (yet): dropped unless
            rec.due_ms = now + self.cfg.unknown_item_ttl_ms  # it arrives
            ctx.timer_service().register_processing_time_timer(rec.due_ms)
            self._write(key, rec)  # (the log replays counts, not the expiry)
        else:
            self._append(key, rec, record[1])
        if rec.known:
            yield from self._queue(ctx, key, rec, changed, now)

    def _read(self, key: str) -> ItemRecord:
        """The item's record: kept in memory, or its state's, with the interactions logged
        since it was written whole replayed onto it."""
        rec = self._records.get(key)
        if rec is not None:
            return rec
        rec = ItemRecord.from_bytes(self.state.value())
        logged = 0
        for data in self.log.get() or ():
            self._count(rec, unpack_interaction(data))
            logged += 1
        self._keep(key, rec, logged, None)
        return rec

    def _count(self, rec: ItemRecord, interaction: tuple) -> Optional[list[str]]:
        """``rec`` after one unpacked interaction (in place): the keys of its counts that
        changed, or None when the interaction does not count (``record_interaction``)."""
        event_type, weight, ts, context = interaction
        updated = record_interaction(rec.log_pop, rec.count, rec.earlier, event_type, weight,
                                     ts, context, self.p, self.cfg.max_neighbours)
        if updated is None:
            return None
        rec.log_pop, rec.count, changed = updated
        return changed

    def _write(self, key: str, rec: ItemRecord) -> None:
        """The record written whole (its log, if any, cleared)."""
        counts = pack_counts(rec.earlier)
        self.state.update(rec.to_bytes(counts))
        if self._logged.get(key, 0):
            self.log.clear()
        self._keep(key, rec, 0, counts)

    def _append(self, key: str, rec: ItemRecord, interaction: bytes) -> None:
        """``rec`` after ``interaction`` (its value on the interactions topic): appended to
        the item's log, or written whole when the log is full."""
        logged = self._logged.get(key, 0)
        if logged >= _LOG_MAX:
            self._write(key, rec)
            return
        self.log.add(bytes(interaction))
        self._keep(key, rec, logged + 1, None)

    def _keep(self, key: str, rec: ItemRecord, logged: int, packed: Optional[bytes]) -> None:
        records = self._records
        if key not in records and len(records) >= _RECORDS_KEPT:
            oldest = next(iter(records))  # the oldest kept
            del records[oldest]
            del self._logged[oldest]
            self._packed.pop(oldest, None)
        records[key] = rec
        self._logged[key] = logged
        if packed is None:
            self._packed.pop(key, None)
        else:
            self._packed[key] = packed

    def _clear(self, key: str) -> None:
        self.state.clear()
        self.log.clear()
        self._records.pop(key, None)
        self._logged.pop(key, None)
        self._packed.pop(key, None)

    # -- the catalog -------------------------------------------------------------------------

    def process_element2(self, item, ctx) -> Iterable:
        """A catalog record: the id becomes known (its statistics are broadcast at once), or
        is deleted (its record is dropped: the rankers free its row)."""
        key = ctx.get_current_key()
        if item["deleted"]:
            self._clear(key)
            self._outbox.pop(key, None)
            self._whole_sent.discard(key)
            self._queued.discard(key)
            return
        rec = self._read(key)
        if rec.known:
            return
        rec.flags |= KNOWN
        rec.due_ms = 0
        self._outbox.pop(key, None)
        self._write(key, rec)
        if rec.count > 0:
            yield self._batch([self._entry(key, rec, counts=bool(rec.earlier), now=now_ms())])

    # -- the outbox ----------------------------------------------------------------------------

    def _queue(self, ctx, key: str, rec: ItemRecord, changed: list[str],
               now: int) -> Iterable:
        """Put the item's new record in the outbox (``changed``: the keys of its counts this
        interaction changed): a timer at the boundary where it is due, unless one is armed
        there (and at the one where its counts are, when later), and its backstop timer."""
        pop_ms = self.cfg.popularity_emit_interval_ms
        if pop_ms <= 0:  # every event at once, its counts with it (the outbox stays empty)
            yield self._batch([self._entry(key, rec, bool(changed), now, set(changed))])
            return
        out = self._outbox.get(key)
        due = out.counts_due if out is not None else 0
        pending = out.changed if out is not None else set()
        if changed:
            pending.update(changed)
            if not due:
                due = max(now, self._counts_sent.get(key, 0) +
                          self.cfg.neighbours_emit_interval_ms)
        self._outbox[key] = _Outgoing(rec, True, due, pending)
        at = _next_boundary(now, pop_ms)
        self._carry(ctx, key, at)
        if due > at:
            self._carry(ctx, key, _next_boundary(due - 1, pop_ms))
        if len(self._queued) >= 1_000_000:  # (only costs a resend)
            self._queued.clear()
            self._backstop.clear()
        self._queued.add(key)
        if self._backstop.get(key, 0) <= now:
            self._backstop[key] = now + _BACKSTOP_MS
            ctx.timer_service().register_processing_time_timer(now + _BACKSTOP_MS)

    def _carry(self, ctx, key: str, at: int) -> None:
        """A timer at boundary ``at``, under ``key``, unless one is armed there."""
        if at not in self._carriers:
            self._carriers[at] = key
            ctx.timer_service().register_processing_time_timer(at)

    def on_timer(self, timestamp: int, ctx) -> Iterable:
        """A boundary (send the outbox, once), an item's backstop, or an unknown id's expiry;
        an item that this instance has not queued (after a restore) is read from state and
        sent."""
        key = ctx.get_current_key()
        pop_ms = self.cfg.popularity_emit_interval_ms
        if pop_ms > 0 and timestamp % pop_ms == 0 and self._sent[0] != timestamp:
            yield from self._flush(timestamp)
            if self._outbox:  # counts still waiting: a timer at the next boundary
                self._carry(ctx, key, _next_boundary(timestamp, pop_ms))
        carrier = self._carriers.get(timestamp) == key  # a timer armed to send the outbox
        if carrier:
            del self._carriers[timestamp]
        if self._backstop.get(key) == timestamp:
            del self._backstop[key]
        if carrier or key in self._sent[1] or key in self._outbox or key in self._queued:
            return
        rec = self._read(key)  # (no state: an empty record, neither known nor due)
        if not rec.known:
            if rec.due_ms and timestamp >= rec.due_ms:
                self._clear(key)
                self.dropped.inc()
            return
        if rec.count > 0:
            yield self._batch([self._entry(key, rec, counts=bool(rec.earlier), now=timestamp)])

    def _flush(self, now: int) -> Iterable:
        """One batch of every item in the outbox whose statistics or counts are due."""
        entries, sent = [], set()
        for key, out in list(self._outbox.items()):
            counts = bool(out.counts_due) and out.counts_due <= now
            if out.stats or counts:
                entries.append(self._entry(key, out.rec, counts, now, out.changed))
                sent.add(key)
            if counts or not out.counts_due:
                del self._outbox[key]
            else:
                out.stats = False
        self._sent = (now, sent)
        if entries:
            yield self._batch(entries)

    def _entry(self, key: str, rec: ItemRecord, counts: bool, now: int,
               changed: Optional[set] = None) -> tuple:
        """One batch entry; with ``counts``, the item's whole counts, and the entries in
        ``changed`` as its change since the last send when this instance sent the whole
        before (the rankers then merge only those)."""
        if not counts:
            return key, rec.log_pop, rec.count, None, None
        for seen in (self._counts_sent, self._whole_sent):
            if len(seen) >= 1_000_000:
                seen.clear()  # (only costs whole sends)
        self._counts_sent[key] = now
        changes = None
        if changed is not None and key in self._whole_sent:
            changes = pack_counts({x: rec.earlier.get(x, 0.0) for x in changed})
        self._whole_sent.add(key)
        packed = self._packed.get(key) if self._records.get(key) is rec else None
        return key, rec.log_pop, rec.count, \
            packed if packed is not None else pack_counts(rec.earlier), changes

    def _batch(self, entries: list) -> Row:
        self.batches.inc()
        self.batched_items.inc(len(entries))
        return Row("stats", "", "", None, None, None, pack_stats_batch(entries), None, None)
