"""The Row types between the operators, the dead-letter side output and the broadcast state
descriptors of the topology (one place, so every operator agrees on them)."""

from __future__ import annotations

from pyflink.common import Types
from pyflink.datastream import OutputTag
from pyflink.datastream.state import MapStateDescriptor

BYTES = Types.PRIMITIVE_ARRAY(Types.BYTE())

# ``partition``/``offset`` locate the source record, for dead letters raised downstream.
EVENT_TYPE = Types.ROW_NAMED(
    ["event_id", "user_id", "item_id", "type", "value", "ts", "partition", "offset"],
    [Types.STRING(), Types.STRING(), Types.STRING(), Types.STRING(), Types.DOUBLE(),
     Types.LONG(), Types.INT(), Types.LONG()],
)
ITEM_TYPE = Types.ROW_NAMED(
    ["item_id", "title", "text", "deleted", "ts", "partition", "offset", "published_ts"],
    [Types.STRING(), Types.STRING(), Types.STRING(), Types.BOOLEAN(), Types.LONG(),
     Types.INT(), Types.LONG(), Types.LONG()],
)
# What reaches the ranker by broadcast: an embedded item ("item"), a deletion ("delete"), or
# a batch of items' statistics from the item branch ("stats": ``codecs.pack_stats_batch`` in
# ``neighbours``: each item's trending log-popularity, interaction count and, at most once per
# ``ranking.neighbours_emit_interval_ms``, its half of the co-occurrence counts, see
# CatalogIndex.set_cooccurrence). (Earlier versions sent one item's as "pop" and "nbrs";
# with aligned checkpoints no element in flight outlives an upgrade.)
# ``model`` is the embedding model of an "item" vector, ``published_ts`` its publication time
# (epoch ms, 0 for none; ``contracts.messages.Item``). Kind "dead-letter" (an item that could
# not be embedded; its DLQ record in ``vector``) never reaches the rankers: see
# ``jobs/ranking_job.py``.
CATALOG_UPDATE_TYPE = Types.ROW_NAMED(
    ["kind", "item_id", "title", "vector", "log_pop", "count", "neighbours", "model",
     "published_ts"],
    [Types.STRING(), Types.STRING(), Types.STRING(), BYTES, Types.DOUBLE(), Types.DOUBLE(),
     BYTES, Types.STRING(), Types.LONG()],
)
KEYED_RECORD_TYPE = Types.ROW_NAMED(["k", "v"], [BYTES, BYTES])
VALUE_RECORD_TYPE = Types.ROW_NAMED(["v"], [BYTES])

# The ranker's output: records for two topics, ``route`` saying which (``TO_RANKINGS``: key
# the user id, value the ranking, or null; ``TO_INTERACTIONS``: for the item branch, key the
# item id, value ``codecs.pack_interaction``), split by a Table filter in Java
# (``kafka_io.insert_ranker_outputs``). Not a side output for the interactions: in thread
# mode a side output record runs the chained sink's Java code while the operator holds the
# GIL, which every Python operator of the TaskManager waits on (4% of the GIL's time,
# py-spy --gil).
ROUTED_RECORD_TYPE = Types.ROW_NAMED(["k", "v", "route"], [BYTES, BYTES, Types.INT()])
TO_RANKINGS, TO_INTERACTIONS = 0, 1

DLQ_TAG = OutputTag("dlq", VALUE_RECORD_TYPE)
DEAD_LETTER_KIND = "dead-letter"

# State holding raw bytes is declared PICKLED_BYTE_ARRAY: in thread mode PyFlink 2.2 converts a
# PRIMITIVE_ARRAY(BYTE) state value element by element into a tuple of ints (and fails on an
# empty value), while pickling a ``bytes`` object is a single copy. The bytes themselves are
# our compact layouts (float32 vectors), never pickled Python objects.
STATE_BYTES = Types.PICKLED_BYTE_ARRAY()
CATALOG_STATE = MapStateDescriptor("catalog", Types.STRING(), STATE_BYTES)
POPULARITY_STATE = MapStateDescriptor("item-stats", Types.STRING(), STATE_BYTES)
# Each item's half of the co-occurrence counts (``pack_counts``). Not "neighbours", the name of
# the full lists before the counts were halved: a savepoint from then restores without them
# (they would count every pair twice); counting starts again from the next events.
NEIGHBOURS_STATE = MapStateDescriptor("cooc-halves", Types.STRING(), STATE_BYTES)
# During a model swap: the new model's vectors so far, and which model is which.
STAGING_STATE = MapStateDescriptor("catalog-staging", Types.STRING(), STATE_BYTES)
MODELS_STATE = MapStateDescriptor("models", Types.STRING(), Types.STRING())
