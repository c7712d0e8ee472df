"""Replay a dataset in the MovieLens CSV layout as ``items`` then ``events`` records.

Item text = title + genres + the users' tags; events = ratings in timestamp order
(``type: rating`` with the rating as ``value``; the ranker maps >= 4 to positive and <= 2 to
negative weights). :func:`write_movielens` writes that layout (the synthetic datasets of the
tests and of ``scripts/synth_dataset.py``).
"""

from __future__ import annotations

import csv
import json
import re
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Optional

MAX_TAGS_PER_ITEM = 20


class DatasetError(ValueError):
    """The dataset directory does not have the MovieLens layout."""


def _open_csv(path: Path):
    if not path.exists():
        raise DatasetError(f"{path} not found (expected the MovieLens CSV layout: movies.csv, "
                           "ratings.csv, optional tags.csv)")
    return open(path, newline="", encoding="utf-8")


def write_movielens(root: Path, movies, ratings, tags=()) -> None:
    """Write rows in the MovieLens CSV layout (movies.csv, ratings.csv, tags.csv)."""
    for name, header, rows in (("movies.csv", ["movieId", "title", "genres"], movies),
                               ("ratings.csv", ["userId", "movieId", "rating", "timestamp"],
                                ratings),
                               ("tags.csv", ["userId", "movieId", "tag", "timestamp"], tags)):
        with open(root / name, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(header)
            w.writerows(rows)


_YEAR = re.compile(r"\((\d{4})\)\s*$")


def release_ms(title: str) -> int:
    """January 1 (UTC) of the year a MovieLens title ends with, in epoch ms (0 without
    one; before 1970 negative): the movie's publication time. Of the 48,580 ratings >= 4 in
    ml-latest-small, one is of a movie before that date."""
    m = _YEAR.search(title)
    if not m or not 1 <= int(m.group(1)) <= 9999:
        return 0
    return int(datetime(int(m.group(1)), 1, 1, tzinfo=timezone.utc).timestamp() * 1000)


def read_items(data_dir: str | Path, now_ms: Optional[int] = None) -> list[dict]:
    """Catalog records from movies.csv (+ tags.csv when present), in file order."""
    data_dir = Path(data_dir)
    tags: dict[str, Counter] = defaultdict(Counter)
    if (data_dir / "tags.csv").exists():
        with _open_csv(data_dir / "tags.csv") as f:
            for row in csv.DictReader(f):
                tag = (row.get("tag") or "").strip()
                if tag:
                    tags[row["movieId"]][tag.lower()] += 1
    ts = int(time.time() * 1000) if now_ms is None else now_ms
    items = []
    with _open_csv(data_dir / "movies.csv") as f:
        for row in csv.DictReader(f):
            genres = [g for g in (row.get("genres") or "").split("|")
                      if g and g != "(no genres listed)"]
            item = {"item_id": row["movieId"], "title": row["title"], "categories": genres,
                    "ts": ts}
            published = release_ms(row["title"])
            if published:
                item["published_ts"] = published
            top = [t for t, _ in tags[row["movieId"]].most_common(MAX_TAGS_PER_ITEM)]
            if top:
                item["description"] = "Tags: " + ", ".join(top) + "."
            items.append(item)
    return items


def read_events(data_dir: str | Path, limit: Optional[int] = None,
                id_prefix: str = "ml") -> list[dict]:
    """Rating events from ratings.csv, ordered by timestamp (stable for ties)."""
    rows = []
    with _open_csv(Path(data_dir) / "ratings.csv") as f:
        for i, row in enumerate(csv.DictReader(f)):
            rows.append((int(row["timestamp"]), i, row["userId"], row["movieId"],
                         float(row["rating"])))
    rows.sort()
    if limit is not None:
        rows = rows[:limit]
    return [{"event_id": f"{id_prefix}-{i}", "user_id": user, "item_id": item, "type": "rating",
             "value": rating, "ts": ts * 1000}
            for ts, i, user, item, rating in rows]


@dataclass
class RateLimiter:
    """Paces calls to ``rate`` per second (no pacing when rate is None or <= 0)."""

    rate: Optional[float]

    def __post_init__(self):
        self._start = time.perf_counter()
        self._n = 0

    def wait(self) -> None:
        if not self.rate or self.rate <= 0:
            return
        self._n += 1
        due = self._start + self._n / self.rate
        delay = due - time.perf_counter()
        if delay > 0:
            time.sleep(delay)


def make_producer(bootstrap_servers: str, properties: Optional[dict] = None):
    """A producer for replays; ``properties``: ``kafka.properties`` (security, timeouts)."""
    from kafka import KafkaProducer

    from contracts.kafka_clients import python_client_kwargs

    # linger 5 ms: the Java client's default since Kafka 4.0. At 2 ms kafka-python sends a
    # request per few records; its sender thread took 0.31 of a core at 2,000 records/s, 0.20
    # at 5 ms. (The bench's fixed-rate phases send with the Java client instead:
    # ``streamrank.paced_producer``.)
    kwargs = dict(linger_ms=5, acks=1, batch_size=64 * 1024,
                  max_in_flight_requests_per_connection=5)
    kwargs.update(python_client_kwargs(properties or {}, "producer"))
    return KafkaProducer(bootstrap_servers=bootstrap_servers, **kwargs)


def produce(producer, topic: str, records: list[dict], key_field: str,
            rate: Optional[float] = None, progress: bool = True, desc: str = "",
            on_sent: Optional[Callable[[dict, int], None]] = None) -> int:
    """Send ``records`` as JSON keyed by ``record[key_field]``; returns the count sent.

    ``on_sent(record, produce_ms)`` is called right before each send (for latency tracking).
    """
    from tqdm import tqdm

    limiter = RateLimiter(rate)
    bar = tqdm(records, desc=desc or topic, unit="rec", disable=not progress, mininterval=0.5,
               leave=True)
    n = 0
    for rec in bar:
        limiter.wait()
        if on_sent is not None:
            on_sent(rec, int(time.time() * 1000))
        producer.send(topic, key=str(rec[key_field]).encode("utf-8"),
                      value=json.dumps(rec, separators=(",", ":")).encode("utf-8"))
        n += 1
    producer.flush()
    return n

