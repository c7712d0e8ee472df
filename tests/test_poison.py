"""Poison input, without Flink: every kind of record a fuzzer or a buggy producer sends is
either parsed into values that encode as strict UTF-8 or becomes a bounded dead letter, and
no downstream computation overflows on valid but extreme values."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recsys import explain, item_stats, recommender
from recsys.catalog import CatalogIndex
from recsys.params import ModelParams
from recsys.user_state import Forgotten, UserState, decode_profile
from contracts.kafka_clients import MASK, masked, python_client_kwargs
from contracts.messages import InvalidRecord, dlq_record, parse_event, parse_item

pytestmark = pytest.mark.unit

NOW = 1_700_000_000_000
CAP = 4096
# A dead letter is its bounded raw payload plus reason, detail, topic and offsets.
DLQ_OVERHEAD = 1200


def event(**fields) -> dict:
    base = {"event_id": "e", "user_id": "u", "item_id": "i", "type": "click", "ts": NOW}
    base.update(fields)
    return base


def raw(obj) -> bytes:
    return json.dumps(obj).encode()


# The poison kinds of issue 11, each with the reason it must get.
POISON = [
    (b'{"user_id":"u","item_id":"i","type":"click","ts":1' + b"0" * 400 + b"}",
     "ts_out_of_range"),
    (b'{"user_id":"u","item_id":"i","type":"click","ts":' + b"9" * 5000 + b"}", "not_json"),
    (b'{"user_id":"u","item_id":"i","type":"rating","value":1' + b"0" * 400 + b',"ts":5}',
     "bad_type"),
    (b'{"user_id":"u","item_id":"i","type":"click","ts":1e400}', "ts_out_of_range"),
    (b'{"user_id":"u\\ud800","item_id":"i","type":"click","ts":5}', "invalid_unicode"),
    (b'{"user_id":"u","item_id":"\\udfff","type":"click","ts":5}', "invalid_unicode"),
    (raw(event(user_id="a\u2028b")), "bad_id"),
    (raw(event(item_id="x\u202ey")), "bad_id"),
    (raw(event(user_id="c1\u0085")), "bad_id"),
    (b"\x01" * 900_000, "not_json"),
]


@pytest.mark.parametrize("payload,reason", POISON)
def test_every_poison_kind_becomes_a_bounded_dead_letter(payload, reason):
    with pytest.raises(InvalidRecord) as err:
        parse_event(payload, now_ms=NOW)
    assert err.value.reason == reason
    rec = dlq_record(err.value, payload, "events", 0, 7, NOW, max_raw_bytes=CAP)
    assert len(rec) <= CAP + DLQ_OVERHEAD
    out = json.loads(rec)
    assert out["reason"] == reason
    if len(payload) > CAP:
        assert out["raw_truncated"] and out["raw_bytes"] == len(payload)
        assert len(out["raw_sha256"]) == 64


def test_items_with_lone_surrogates_or_huge_numbers_are_rejected():
    for payload, reason in [
        (b'{"item_id":"x","title":"Bad \\ud83d title"}', "invalid_unicode"),
        (b'{"item_id":"x","title":"t","description":"\\udc00"}', "invalid_unicode"),
        (b'{"item_id":"x","title":"t","categories":["\\ud800"]}', "invalid_unicode"),
        (b'{"item_id":"x","title":"t","ts":' + b"1" * 500 + b"}", "ts_out_of_range"),
    ]:
        with pytest.raises(InvalidRecord) as err:
            parse_item(payload, now_ms=NOW)
        assert err.value.reason == reason


def test_unexpected_exceptions_become_parser_errors(monkeypatch):
    import contracts.messages as messages

    def explode(*_):
        raise KeyError("boom")

    monkeypatch.setattr(messages, "_id", explode)
    with pytest.raises(InvalidRecord) as err:
        parse_event(raw(event()), now_ms=NOW)
    assert err.value.reason == "parser_error" and "KeyError" in err.value.detail


def test_earliest_accepted_ts_is_configurable():
    seconds = raw(event(ts=1_700_000_000))  # seconds, not milliseconds
    assert parse_event(seconds, now_ms=NOW).ts == 1_700_000_000
    with pytest.raises(InvalidRecord) as err:
        parse_event(seconds, now_ms=NOW, min_ts_ms=946_684_800_000)
    assert err.value.reason == "ts_out_of_range" and "min_ts_ms" in err.value.detail


def test_dead_letters_of_text_and_binary_stay_within_the_cap():
    for payload in (b"\x00" * 100_000, bytes(range(256)) * 400, "é".encode() * 50_000,
                    b'{"user_id": "' + b"a" * 70_000):
        rec = dlq_record(InvalidRecord("x", "y"), payload, "t", 0, 0, 0, max_raw_bytes=CAP)
        assert len(rec) <= CAP + DLQ_OVERHEAD
        out = json.loads(rec)
        assert out["raw_truncated"] and out["raw_bytes"] == len(payload)
        assert out["raw"], "the head of the payload is kept"


# -- the property: whatever the record, a clean parse or a bounded dead letter -------------

surrogates = st.integers(0xD800, 0xDFFF).map(lambda c: f"\\u{c:04x}")
nasty_chars = st.sampled_from(["\u2028", "\u2029", "\u202e", "\u2066", "\x85", "\x00", "\n"])
nasty_text = st.lists(st.one_of(st.text(max_size=5), nasty_chars), max_size=6).map("".join)
huge_ints = st.integers(17, 6000).map(lambda n: "9" * n)
json_scalar = st.one_of(
    nasty_text.map(json.dumps), surrogates.map(lambda s: f'"id{s}"'), huge_ints,
    st.integers(-10**13, 10**13).map(str), st.sampled_from(["1e400", "-1e400", "NaN", "null",
                                                            "true", "[]", "{}", "0.5"]))
fields = st.sampled_from(["event_id", "user_id", "item_id", "type", "value", "ts", "title",
                          "description", "categories", "deleted"])
types = st.sampled_from(['"click"', '"rating"', '"forget_user"', '"like"'])
records = st.one_of(
    st.dictionaries(fields, json_scalar, max_size=8).map(
        lambda d: "{" + ",".join(f'"{k}":{v}' for k, v in d.items()) + "}"),
    st.tuples(json_scalar, json_scalar, types, json_scalar).map(
        lambda t: f'{{"user_id":{t[0]},"item_id":{t[1]},"type":{t[2]},"value":4,'
                  f'"title":{t[0]},"ts":{t[3]}}}'),
).map(lambda s: s.encode("utf-8", "surrogatepass"))
any_bytes = st.one_of(records, st.binary(max_size=200), st.binary(min_size=CAP, max_size=3 * CAP))


def _strict(*values: str) -> None:
    for v in values:
        v.encode("utf-8")  # raises on a lone surrogate


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(any_bytes)
def test_any_record_parses_to_strict_utf8_or_a_bounded_dead_letter(payload):
    for parse in (parse_event, parse_item):
        try:
            rec = parse(payload, now_ms=NOW, max_record_bytes=2 * CAP)
        except InvalidRecord as err:
            letter = dlq_record(err, payload, "events", 0, 1, NOW, max_raw_bytes=CAP)
            assert len(letter) <= CAP + DLQ_OVERHEAD
            json.loads(letter)
            continue
        if parse is parse_event:
            _strict(rec.user_id, rec.item_id, rec.event_id, rec.type)
            assert rec.value is None or math.isfinite(rec.value)
        else:
            _strict(rec.item_id, rec.title, rec.description, rec.text(), *rec.categories)
        assert 0 <= rec.ts <= NOW + 86_400_000


# -- extreme but valid values downstream -----------------------------------------------------

def test_trending_never_overflows_for_any_valid_timestamp():
    """A 24 h half-life (conf's news example) with popularity from now and a ranking at an
    event of 1970, and the other way round: finite features in [0, 1]."""
    p = ModelParams.defaults(popularity_half_life_ms=24 * 3_600_000.0)
    cat = CatalogIndex(dim=4)
    rng = np.random.default_rng(0)
    for i in range(5):
        cat.upsert(f"i{i}", f"t{i}", rng.normal(size=4))
    lp = -math.inf
    for ts in (NOW, NOW + 1000, 5):
        lp = item_stats.record_interaction(lp, 0.0, {}, "like", 1.0, ts, [], p, 10)[0]
        cat.set_popularity("i1", lp, 1.0)
        cat.set_popularity("i2", lp - 3.0, 1.0)
    for now_ts in (0, 5, NOW, NOW + 10**12):
        feats = recommender.features(UserState.empty(4), cat, p, now_ts)
        trend = feats[:, recommender.F_TREND]
        assert np.all(np.isfinite(trend)) and trend.min() >= 0 and trend.max() <= 1
        assert trend[1] >= trend[2]


def test_reasons_cite_titles_cut_to_the_cap():
    assert explain.cite("A" * 500, 80) == "A" * 79 + "\u2026"
    assert explain.cite("Short", 80) == "Short"


def test_a_forgotten_user_is_a_small_marker():
    marker = Forgotten(ts=123, expires_ms=456)
    assert decode_profile(marker.to_bytes()) == marker
    st_ = UserState.empty(4)
    assert isinstance(decode_profile(st_.to_bytes()), UserState)


def test_kafka_properties_reach_python_clients_and_secrets_are_masked():
    props = {"security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-512",
             "sasl.jaas.config": 'org.apache.kafka.common.security.scram.ScramLoginModule '
                                 'required username="alice" password="p\\"w";',
             "ssl.truststore.type": "PEM", "ssl.truststore.location": "/etc/ca.pem",
             "request.timeout.ms": "7000", "ssl.key.password": "k"}
    kw = python_client_kwargs(props, "producer")
    assert kw["security_protocol"] == "SASL_SSL" and kw["sasl_mechanism"] == "SCRAM-SHA-512"
    assert (kw["sasl_plain_username"], kw["sasl_plain_password"]) == ("alice", 'p"w')
    assert kw["ssl_cafile"] == "/etc/ca.pem" and kw["request_timeout_ms"] == 7000
    assert kw["ssl_password"] == "k"
    shown = masked(props)
    assert shown["sasl.jaas.config"] == MASK and shown["ssl.key.password"] == MASK
    assert shown["security.protocol"] == "SASL_SSL"


def test_written_job_configs_mask_secrets_and_the_environment_carries_them(tmp_path):
    import yaml

    from contracts.config import file_and_environment, load_settings

    settings = load_settings(overrides={"kafka.properties": {"sasl.jaas.config": "secret!",
                                                             "linger.ms": 5}}, environ={})
    data, env = file_and_environment(settings)
    assert data["kafka"]["properties"] == {"sasl.jaas.config": MASK, "linger.ms": 5}
    assert "secret!" not in json.dumps(data)
    conf = tmp_path / "job.yaml"
    conf.write_text(yaml.safe_dump(data))
    assert "secret!" not in conf.read_text()
    again = load_settings(conf, environ=env)
    assert dict(again.kafka.properties)["sasl.jaas.config"] == "secret!"


def test_a_tombstone_key_is_validated_like_an_item_id():
    from contracts.messages import tombstone_item_id

    assert tombstone_item_id(b"movie-42") == "movie-42"
    for key, reason in [(b"\xff", "invalid_utf8"), (b"  ", "empty_id"),
                        ("a\u2028b".encode(), "bad_id"), (b"x" * 300, "id_too_long")]:
        with pytest.raises(InvalidRecord) as err:
            tombstone_item_id(key)
        assert err.value.reason == reason


class _MetricsContext:
    """A runtime context whose metric group records what reached each Flink counter."""

    def __init__(self):
        self.seen: dict[str, int] = {}

    def get_metrics_group(self):
        return self

    def add_group(self, name):
        return self

    def counter(self, name):
        seen = self.seen

        class _Counter:
            def inc(self, n=1):
                seen[name] = seen.get(name, 0) + n
        return _Counter()


def _events_row(value: bytes, routed_by: str, offset: int = 7) -> dict:
    return {"key": b"k", "value": value, "topic": "events", "partition": 2, "offset": offset,
            "ts": None, "routed_by": routed_by}


def test_the_ranker_parses_events_and_dead_letters_one_routed_under_another_users_key():
    """The events topic is keyed by the user_id Flink's JSON_VALUE reads
    (``kafka_io.keyed_by_user``); the ranker's parser must agree, or the state would be kept
    under another user's key: a record the two read differently (here: user_id twice, the
    last one wins in Python) is a dead letter, as is a record routed with no user at all."""
    from contracts.config import default_settings
    from operators.parse import EventParser
    from operators.types import DLQ_TAG
    from contracts.messages import Event

    from operators.flink_metrics import OperatorMetrics

    ctx = _MetricsContext()
    metrics = OperatorMetrics(ctx)
    parser = EventParser(default_settings().validation, metrics)
    ok = parser.parse(_events_row(raw(event(user_id="u1", ts=NOW)), "u1"), "u1")
    assert isinstance(ok, Event) and (ok.user_id, ok.partition, ok.offset) == ("u1", 2, 7)
    twice = b'{"user_id":"u1","item_id":"i","type":"click","ts":5,"user_id":"u2"}'
    for row, key, reason in ((_events_row(twice, "u1"), "u1", "user_id_mismatch"),
                             (_events_row(b"not json", ""), "", "not_json")):
        tag, dead = parser.parse(row, key)
        letter = json.loads(dead[0])
        assert tag == DLQ_TAG and letter["reason"] == reason
        assert (letter["partition"], letter["offset"]) == (2, 7)
    assert ctx.seen == {"dlq_records": 2}  # at once; the event counts wait for a flush
    metrics.flush()
    assert ctx.seen == {"dlq_records": 2, "events_in_click": 1}
    for _ in range(OperatorMetrics.FLUSH_EVERY):  # and are flushed every so many
        parser.parse(_events_row(raw(event(user_id="u", ts=NOW)), "u"), "u")
    assert ctx.seen["events_in_click"] > 1
    metrics.flush()
    assert ctx.seen["events_in_click"] == 1 + OperatorMetrics.FLUSH_EVERY
