"""The job end to end: a real local Kafka broker, the job in a real Flink MiniCluster (its own
process, exactly as `streamrank run` starts it), the real embedding model."""

from __future__ import annotations

import base64
import json
import re
import time

import numpy as np
import pytest

from recsys import recommender
from recsys.catalog import CatalogIndex
from recsys.params import ModelParams
from recsys.user_state import UserState

from streamrank.kafka_local import create_topics
from streamrank.replay import make_producer, produce
from streamrank.watch import JobProcess, RankingsReader, TopicReader, wait_for_catalog
from tests.conftest import isolated_settings

pytestmark = [pytest.mark.kafka, pytest.mark.flink, pytest.mark.model]

DLQ_CAP = 8192

# A small synthetic catalog of four clearly separated genres.
GENRES = {
    "Horror": ("haunted", "ghost", "demon", "slasher", "zombie", "curse", "nightmare", "crypt",
               "possessed", "vampire", "asylum", "witch", "blood", "graveyard", "poltergeist"),
    "Romance": ("wedding", "love letter", "first kiss", "honeymoon", "sweetheart", "valentine",
                "proposal", "soulmate", "romantic getaway", "courtship", "heartbreak",
                "love story", "bride", "date night", "summer romance"),
    "Western": ("sheriff", "outlaw", "cattle drive", "saloon", "gunslinger", "frontier town",
                "stagecoach", "bounty hunter", "ranch", "desert showdown", "wild west",
                "cowboy", "train robbery", "gold rush", "posse"),
    "Animation": ("talking animals", "cartoon", "toy", "princess", "puppy", "dragon friend",
                  "magic kingdom", "little robot", "bunny", "fairy", "penguin", "kitten",
                  "dinosaur pal", "underwater friends", "teddy bear"),
}


def catalog() -> list[dict]:
    items = []
    for genre, words in GENRES.items():
        for i, w in enumerate(words):
            items.append({"item_id": f"{genre[:3].lower()}{i}", "title": f"The {w.title()}",
                          "categories": [genre], "description": f"Tags: {genre.lower()}, {w}.",
                          "ts": int(time.time() * 1000)})
    return items


def event(eid, user, item, etype="like", **kw):
    return {"event_id": eid, "user_id": user, "item_id": item, "type": etype,
            "ts": int(time.time() * 1000), **kw}


def restarts(proc) -> list[str]:
    """Lines of the Flink log where the job or a task failed (a restart)."""
    return re.findall(r".*switched from (?:state )?\w+ to (?:RESTARTING|FAILING|FAILED).*",
                      proc.flink_log())


@pytest.fixture(scope="module")
def job(kafka_bootstrap, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("job")
    settings = isolated_settings(kafka_bootstrap, tmp, **{
        "ranking.max_pending": 3,
        # News-like decay: with all-time popularity an event of 1970 could not overflow it.
        "ranking.popularity_half_life_hours": 24,
        "ranking.emit_state_digest": True,
        "validation.dlq_max_raw_bytes": DLQ_CAP})
    create_topics(settings.kafka)
    proc = JobProcess(settings, tmp / "job.log").start()
    rankings = RankingsReader(kafka_bootstrap, settings.kafka.topics.rankings)
    dlq = TopicReader(kafka_bootstrap, settings.kafka.topics.events_dlq)
    producer = make_producer(kafka_bootstrap)
    items = catalog()
    try:
        produce(producer, settings.kafka.topics.items, items, "item_id", progress=False)
        wait_for_catalog(producer, settings, rankings, items[-1]["item_id"], len(items),
                         job=proc, timeout_s=240)
        yield settings, proc, producer, rankings, dlq
    finally:
        producer.close()
        rankings.close()
        dlq.close()
        proc.stop()


def send(producer, settings, events):
    produce(producer, settings.kafka.topics.events, events, "user_id", progress=False)


def wait_for(predicate, proc, timeout_s=60.0, what="condition"):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        proc.check()
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}; job log:\n{proc.tail()}")


def test_runs_in_thread_mode(job):
    _, proc, *_ = job
    log = wait_for(lambda: "rank-users" in proc.flink_log() and proc.flink_log(), proc,
                   what="operator log")
    assert "running in python thread mode" in log
    assert "running in python process mode" not in log


def test_one_genre_history_gives_a_top_k_of_that_genre(job):
    settings, proc, producer, rankings, _ = job
    liked = [f"hor{i}" for i in range(5)]
    send(producer, settings, [event(f"g-{i}", "fan", it) for i, it in enumerate(liked)])
    rec = wait_for(lambda: (r := rankings.ranking("fan")) and r["event_id"] == "g-4" and r,
                   proc, what="ranking after the last event")
    ids = [it["item_id"] for it in rec["items"]]
    assert len(ids) == settings.ranking.k
    assert not set(ids) & set(liked), "seen items must be excluded"
    horror = sum(i.startswith("hor") for i in ids)
    assert horror >= 8, f"top-10 should be dominated by Horror, got {ids}"
    assert rec["model"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert rec["k"] == settings.ranking.k and rec["event_ts"] <= rec["emitted_ts"]
    # Every event produced exactly one ranking.
    assert all(len(rankings.by_event[f"g-{i}"]) == 1 for i in range(5))


def test_malformed_event_goes_to_dlq_and_the_next_good_event_is_ranked(job):
    settings, proc, producer, rankings, dlq = job
    topic = settings.kafka.topics.events
    producer.send(topic, key=b"bad", value=b'{"user_id": "bad", "type": "click"')
    producer.send(topic, key=b"bad", value=b"\xff\xfe not utf-8")
    producer.send(topic, key=b"bad", value=json.dumps(event("x", "bad", "hor1", "teleport"))
                  .encode())
    send(producer, settings, [event("after-bad", "good-user", "rom3", "click")])
    wait_for(lambda: rankings.by_event.get("after-bad"), proc, what="ranking of the good event")
    records = wait_for(lambda: len(dlq.values()) >= 3 and dlq.values(), proc, what="3 DLQ records")
    by_reason = {r["reason"]: r for r in records}
    assert set(by_reason) >= {"not_json", "invalid_utf8", "unknown_type"}
    assert by_reason["not_json"]["raw"] == '{"user_id": "bad", "type": "click"'
    assert base64.b64decode(by_reason["invalid_utf8"]["raw"]) == b"\xff\xfe not utf-8"
    for r in records:
        assert r["topic"] == topic and r["offset"] >= 0 and r["partition"] == 0
    assert proc.alive()


def test_new_user_gets_popular_items(job):
    settings, proc, producer, rankings, _ = job
    # Make one western clearly popular, then rank a brand-new user with no usable history
    # (one skip of an item nobody else touched: no interest, no co-occurrence).
    send(producer, settings, [event(f"p-{i}", f"crowd{i}", "wes7", "purchase") for i in range(3)])
    wait_for(lambda: rankings.by_event.get("p-2"), proc, what="crowd rankings")
    time.sleep(settings.ranking.popularity_emit_interval_ms / 1000 + 1.0)
    send(producer, settings, [event("n-1", "newbie", "ani14", "skip")])
    rec = wait_for(lambda: (r := rankings.ranking("newbie")) and r, proc, what="newbie ranking")
    assert rec["items"][0]["item_id"] == "wes7"
    assert rec["items"][0]["reason"] in ("popular", "trending now")


def test_events_for_unknown_items_are_held_until_the_item_arrives(job):
    settings, proc, producer, rankings, dlq = job
    send(producer, settings, [event("u-1", "early", "not-yet-in-catalog", "like")])
    time.sleep(3)
    assert "u-1" not in rankings.by_event, "an event for an unknown item is held, not ranked"
    # The item arrives: the held event is applied and ranked under its own event_id, with no
    # further event from the user.
    produce(producer, settings.kafka.topics.items,
            [{"item_id": "not-yet-in-catalog", "title": "Haunted Ghost Crypt Of Demons",
              "categories": ["Horror"], "description": "Tags: horror, ghost.", "ts": 1}],
            "item_id", progress=False)
    rec = wait_for(lambda: rankings.by_event.get("u-1") and rankings.ranking("early"), proc,
                   what="ranking of the held event")
    assert rec["event_id"] == "u-1" and len(rankings.by_event["u-1"]) == 1
    assert sum(it["item_id"].startswith("hor") for it in rec["items"]) >= 6
    assert any(it["reason"].startswith("similar to ") for it in rec["items"])
    # More held events than ranking.max_pending: the overflow goes to the DLQ, with its source.
    n = settings.ranking.max_pending + 1
    send(producer, settings, [event(f"o-{i}", "hoarder", f"missing-{i}", "click")
                              for i in range(n)])
    records = wait_for(lambda: [r for r in dlq.values() if r["reason"] == "pending_overflow"],
                       proc, what="pending overflow in the DLQ")
    assert len(records) == 1
    held = json.loads(records[0]["raw"])
    assert held["event_id"] == f"o-{n - 1}" and held["user_id"] == "hoarder"
    assert records[0]["topic"] == settings.kafka.topics.events and records[0]["offset"] >= 0


def test_a_brand_new_item_reaches_the_list_of_a_user_it_matches(job):
    """An item nobody has touched has no co-occurrence or popularity: only its text can
    place it. Once embedded it is in the top-k of the user whose interests it matches."""
    settings, proc, producer, rankings, _ = job
    liked = ["ani0", "ani1", "ani2", "ani3"]
    send(producer, settings, [event(f"n-{i}", "toddler", it) for i, it in enumerate(liked)])
    rec = wait_for(lambda: rankings.by_event.get("n-3") and rankings.ranking("toddler"), proc,
                   what="ranking before the new item")
    assert "ani-new" not in [it["item_id"] for it in rec["items"]]
    produce(producer, settings.kafka.topics.items,
            [{"item_id": "ani-new", "title": "The Talking Animals Cartoon Toy Princess",
              "categories": ["Animation"],
              "description": "Tags: animation, talking animals, cartoon, toy, princess.",
              "ts": int(time.time() * 1000)}], "item_id", progress=False)
    # The user's next events are ranked with the item once it is embedded and broadcast.
    found = None
    for i, item in enumerate(f"ani{j}" for j in range(4, 12)):
        send(producer, settings, [event(f"n-new-{i}", "toddler", item, "view")])
        rec = wait_for(lambda: rankings.by_event.get(f"n-new-{i}") and rankings.ranking("toddler"),
                       proc, what=f"ranking n-new-{i}")
        found = next((it for it in rec["items"] if it["item_id"] == "ani-new"), None)
        if found:
            break
        time.sleep(1.0)
    assert found is not None, f"the new item never reached the list: {rec['items']}"
    assert found["reason"].startswith("similar to ")


def test_an_item_is_not_ranked_before_its_publication_time(job):
    """An item whose ``published_ts`` is ahead of the events' times stays out of the lists
    once the rankers have it (though its text matches the user best); the user's events at
    or after that time rank it, fresh."""
    settings, proc, producer, rankings, _ = job
    probe = [f"ani{j}" for j in range(15)]

    def ranked(i: int, ts: int) -> dict:
        send(producer, settings, [event(f"soon-{i}", "fan", probe[i % 15], "view", ts=ts)])
        return wait_for(lambda: rankings.by_event.get(f"soon-{i}") and rankings.ranking("fan"),
                        proc, what=f"ranking soon-{i}")

    size = ranked(0, int(time.time() * 1000))["catalog_size"]
    published = int(time.time() * 1000) + 120_000  # (within validation.max_future_skew_ms)
    produce(producer, settings.kafka.topics.items,
            [{"item_id": "ani-soon", "title": "The Puppy Kitten Bunny Penguin Fairy",
              "categories": ["Animation"],
              "description": "Tags: animation, puppy, kitten, bunny, penguin, fairy.",
              "ts": int(time.time() * 1000), "published_ts": published}],
            "item_id", progress=False)
    in_catalog = 0
    for i in range(1, 40):
        rec = ranked(i, int(time.time() * 1000))
        assert "ani-soon" not in [it["item_id"] for it in rec["items"]]
        in_catalog += rec["catalog_size"] == size + 1
        if in_catalog >= 2:
            break
        time.sleep(0.5)
    assert in_catalog >= 2, "the item never reached the rankers"
    found = [i for i in range(40, 48)
             if "ani-soon" in [it["item_id"] for it in ranked(i, published + i)["items"]]]
    assert found, "the item never reached the list once published"


def test_deleted_item_leaves_rankings(job):
    settings, proc, producer, rankings, _ = job
    send(producer, settings, [event("d-1", "deleter", "rom0", "like")])
    first = wait_for(lambda: rankings.by_event.get("d-1") and rankings.ranking("deleter"), proc,
                     what="ranking before the deletion")
    gone = first["items"][0]["item_id"]
    produce(producer, settings.kafka.topics.items, [{"item_id": gone, "deleted": True}],
            "item_id", progress=False)
    time.sleep(2)
    send(producer, settings, [event("d-2", "deleter", "rom1", "like"),
                              event("d-3", "other", "rom0", "like")])
    for eid, user in (("d-2", "deleter"), ("d-3", "other")):
        rec = wait_for(lambda: rankings.by_event.get(eid) and rankings.ranking(user), proc,
                       what=f"ranking {eid} after the deletion")
        assert gone not in [it["item_id"] for it in rec["items"]]
        assert rec["catalog_size"] == first["catalog_size"] - 1


def test_forget_user_writes_a_tombstone_and_erases_all_state(job):
    settings, proc, producer, rankings, dlq = job
    send(producer, settings, [event("f-1", "leaver", "ani2")])
    wait_for(lambda: rankings.by_event.get("f-1"), proc, what="leaver ranking")
    producer.send(settings.kafka.topics.events, key=b"leaver",
                  value=json.dumps({"type": "forget_user", "user_id": "leaver"}).encode())
    producer.flush()
    wait_for(lambda: "leaver" in rankings.tombstones, proc, what="tombstone")
    forget_ts = int(time.time() * 1000)
    producer.send(settings.kafka.topics.events, key=b"leaver", value=json.dumps(
        {"type": "forget_user", "user_id": "leaver", "ts": forget_ts}).encode())
    # A late event from before the forget does not bring the user back: it is dead-lettered.
    send(producer, settings, [event("f-late", "leaver", "ani3", ts=forget_ts - 60_000)])
    late = wait_for(lambda: [r for r in dlq.values() if r["reason"] == "user_forgotten"], proc,
                    what="the late event in the DLQ")
    assert json.loads(late[0]["raw"])["event_id"] == "f-late"
    assert "f-late" not in rankings.by_event
    # A newer event starts from scratch: the state after it is exactly a new user's state
    # after that one event (nothing of the old interests, history, seen items or weights).
    ts = forget_ts + 1
    send(producer, settings, [event("f-2", "leaver", "ani13", "skip", ts=ts)])
    rec = wait_for(lambda: rankings.by_event.get("f-2") and rankings.ranking("leaver"), proc,
                   what="ranking after forget")
    assert rec["items"][0]["reason"] in ("popular", "trending now")
    fresh = UserState.empty(384)
    fresh.model = rec["model"]
    cat = CatalogIndex(dim=384)
    cat.upsert("ani13", "any", np.ones(384, np.float32))
    p = ModelParams.from_settings(settings.ranking)
    assert recommender.observe(fresh, cat, p, "ani13", p.weight("skip", None), ts)
    assert rec["state_digest"] == fresh.digest()


def test_a_burst_is_coalesced_each_event_covered_by_exactly_one_ranking(job):
    """Many users' events at once, three per user back to back: every event is covered by
    exactly one ranking (its ``event_ids``), a user's rankings cover their events in order,
    and each excludes exactly the items seen up to the last event it covers."""
    settings, proc, producer, rankings, _ = job
    assert settings.ranking.emit_window_ms > 0, "the default must coalesce"
    # Western items: the deletion test above removes a romance item (the top of a rom fan).
    evs = [event(f"b-{u}-{j}", f"burst{u}", f"wes{(u + j) % 15}", "click")
           for u in range(30) for j in range(3)]
    send(producer, settings, evs)
    ids = [e["event_id"] for e in evs]
    wait_for(lambda: rankings.count_ranked(ids) == len(ids), proc, timeout_s=120,
             what="a ranking covering every event of the burst")
    assert all(len(rankings.by_event[i]) == 1 for i in ids), "one ranking per event"
    with rankings._lock:
        records = [json.loads(v) for _, v, _ in rankings.records
                   if v is not None and set(json.loads(v)["event_ids"]) & set(ids)]
    assert len(records) < len(ids), "a burst is ranked fewer times than it has events"
    for u in range(30):
        mine = [r for r in records if r["user_id"] == f"burst{u}"]
        assert [e for r in mine for e in r["event_ids"]] == [f"b-{u}-{j}" for j in range(3)]
        for r in mine:
            assert r["event_id"] == r["event_ids"][-1]
            last = int(r["event_id"].rsplit("-", 1)[1])
            seen = {f"wes{(u + i) % 15}" for i in range(last + 1)}
            shown = {it["item_id"] for it in r["items"]}
            assert not shown & seen, f"ranking of {r['event_ids']} shows seen items"
            assert len(shown) == settings.ranking.k


def test_poison_records_never_restart_the_job(job):
    """Every poison kind of issue 11 mixed with valid events: no restart, every valid event
    ranked, every poison record in its DLQ with its reason, every record within its cap."""
    settings, proc, producer, rankings, dlq = job
    from tests.test_poison import POISON

    topics = settings.kafka.topics
    long_title = "The Very Long Haunted Ghost Crypt " + "of Endless Nightmares " * 100
    bad_items = [
        (b'{"item_id":"bad-title","title":"Ghost \\ud83d crypt","ts":5}', "invalid_unicode"),
        (b'{"item_id":"huge-ts","title":"Ghost","ts":' + b"1" * 500 + b"}", "ts_out_of_range"),
        (b'{"item_id":"x\\u2029y","title":"Ghost"}', "bad_id"),
    ]
    item_dlq = TopicReader(settings.kafka.bootstrap_servers, topics.items_dlq)

    def offset_of(topic, payload, key=b"poison") -> int:
        return producer.send(topic, key=key, value=payload).get(timeout=30).offset

    try:
        for payload, _ in bad_items:
            producer.send(topics.items, key=b"poison", value=payload)
        produce(producer, topics.items, [{"item_id": "long-title", "title": long_title,
                                          "categories": ["Horror"], "ts": 5}], "item_id",
                progress=False)
        produce(producer, topics.items, [{"item_id": "ani9", "deleted": True}], "item_id",
                progress=False)
        time.sleep(2)
        # Another user consumes the long-titled item, then hor5: a co-occurrence that makes
        # hor5's reason for "longfan" below cite the long title.
        send(producer, settings, [event("lf2-1", "longfan2", "long-title", "like"),
                                  event("lf2-2", "longfan2", "hor5", "like")])
        cooc_sent = time.monotonic()
        # Junk on the job's own interactions topic (any client can write there): a null key,
        # a key that is not UTF-8, a value no ranker wrote. Skipped by the item branch.
        for key, value in ((None, b"junk"), (b"\xff\xfe", b"junk"), (b"hor1", b"\x00" * 3)):
            producer.send(topics.interactions, key=key, value=value)
        expected: dict[int, str] = {}  # events offset -> reason
        valid = []
        for i, (payload, reason) in enumerate(POISON):
            expected[offset_of(topics.events, payload)] = reason
            valid.append(event(f"pv-{i}", "survivor", f"hor{i % 15}", "like"))
            send(producer, settings, valid[-1:])
        # Valid but extreme: an event of 1970 (the decay overflowed on it before) and one
        # that makes reasons cite the long title.
        time.sleep(max(0.0, settings.ranking.neighbours_emit_interval_ms / 1000 + 1.5
                       - (time.monotonic() - cooc_sent)))
        valid += [event("pv-1970", "survivor", "hor3", "like", ts=5),
                  event("pv-long", "longfan", "long-title", "like")]
        send(producer, settings, valid[-2:])
        deleted = json.dumps(event("pv-deleted", "survivor", "ani9", "click")).encode()
        expected[offset_of(topics.events, deleted, b"survivor")] = "item_deleted"
        ids = [e["event_id"] for e in valid]
        wait_for(lambda: rankings.count_ranked(ids) == len(ids), proc, timeout_s=120,
                 what="a ranking for every valid event")

        def dead_letters():
            got = {r["offset"]: r["reason"] for r in dlq.values()
                   if r["topic"] == topics.events and r["offset"] in expected}
            return got == expected

        wait_for(dead_letters, proc, what="every poison event in the events DLQ")
        items_out = wait_for(lambda: len(item_dlq.values()) >= len(bad_items) and
                             item_dlq.values(), proc, what="every poison item in the items DLQ")
        assert sorted(r["reason"] for r in items_out) == sorted(r for _, r in bad_items)
        assert "pv-deleted" not in rankings.by_event
        # Bounded records: the 900 KB record's dead letter is cut to the cap.
        with dlq._lock:
            sizes = [len(v) for _, v, _ in dlq.records if v is not None]
        assert max(sizes) <= DLQ_CAP + 1200
        assert any(r.get("raw_truncated") and r["raw_bytes"] == 900_000 for r in dlq.values())
        with rankings._lock:
            assert max(len(v) for _, v, _ in rankings.records if v is not None) <= 8192
        cited = [it["reason"] for it in rankings.ranking("longfan")["items"]
                 if "The Very Long" in it["reason"]]
        assert cited, rankings.ranking("longfan")
        cap = settings.ranking.reason_title_chars
        assert all(c.endswith("\u2026") and len(c.split("The Very Long", 1)[1]) ==
                   cap - len("The Very Long") for c in cited), cited
        assert proc.alive() and not restarts(proc), restarts(proc)
    finally:
        item_dlq.close()


def test_the_job_names_missing_topics_at_start(kafka_bootstrap, tmp_path):
    from jobs.ranking_job import check_topics
    from jobs.runtime import SetupError

    settings = isolated_settings(kafka_bootstrap, tmp_path)
    create_topics(settings.kafka)
    check_topics(settings)  # all there: no error
    missing = settings.replace(**{"kafka.topics.events_dlq": "no-such-dlq-topic"})
    with pytest.raises(SetupError, match="no-such-dlq-topic"):
        check_topics(missing)
