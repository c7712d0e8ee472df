import pytest

from contracts.config import ConfigError, load_settings, parse_set_args
from streamrank.replay import read_events, read_items, write_movielens

pytestmark = pytest.mark.unit


def test_defaults_file_env_and_set_overrides(tmp_path):
    s = load_settings(environ={})
    assert s.ranking.k == 10 and s.kafka.topics.events == "events"
    f = tmp_path / "my.yaml"
    f.write_text("ranking:\n  k: 7\nkafka:\n  topics:\n    rankings: out\n")
    s = load_settings(f, overrides=parse_set_args(["ranking.alpha=0.5"]),
                      environ={"STREAMRANK_KAFKA__BOOTSTRAP_SERVERS": "b:1",
                               "STREAMRANK_RANKING__K": "12"})
    assert s.ranking.k == 12  # env beats file
    assert s.ranking.alpha == 0.5 and s.kafka.topics.rankings == "out"
    assert s.kafka.bootstrap_servers == "b:1" and s.kafka.topics.items == "items"


def test_bad_config_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="unknown key"):
        load_settings(overrides={"ranking.kk": 1}, environ={})
    with pytest.raises(ConfigError, match="ranking.k"):
        load_settings(overrides={"ranking.k": "ten"}, environ={})
    with pytest.raises(ConfigError, match="section.key=value"):
        parse_set_args(["oops"])
    with pytest.raises(ConfigError, match="kafka.delivery_guarantee: expected one of "
                                          "at-least-once, exactly-once"):
        load_settings(overrides={"kafka.delivery_guarantee": "exactly-twice"}, environ={})
    with pytest.raises(ConfigError, match="model.precision"):
        load_settings(environ={"STREAMRANK_MODEL__PRECISION": "fp8"})
    with pytest.raises(ConfigError, match="ranking.event_weights.like: expected float"):
        load_settings(overrides={"ranking.event_weights": {"like": "lots"}}, environ={})


def test_defaults_live_in_the_yaml_file_only():
    """Every key has its value in conf/streamrank.yaml and nowhere else: the settings classes
    and the model's parameters hold types only, and a file missing a key is refused."""
    import dataclasses

    from recsys.params import ModelParams
    from contracts import config

    settings_classes = [config.Settings, config.Topics, config.KafkaSettings,
                        config.LocalKafkaSettings, config.FlinkSettings,
                        config.ClusterSettings, config.ModelSettings, config.RankingSettings,
                        config.ValidationSettings, ModelParams]
    for cls in settings_classes:
        for f in dataclasses.fields(cls):
            assert f.default is dataclasses.MISSING and \
                f.default_factory is dataclasses.MISSING, f"{cls.__name__}.{f.name}"
    data = config.to_dict(config.default_settings())
    del data["ranking"]["k"]
    with pytest.raises(ConfigError, match="missing key.*ranking.k"):
        config._build(config.Settings, data, "")


def test_movielens_layout_to_items_and_time_ordered_events(tmp_path):
    write_movielens(tmp_path,
                    [(1, "Toy Story (1995)", "Animation|Children"),
                     (2, "Odd", "(no genres listed)")],
                    [(1, 2, 4.0, 300), (2, 1, 5.0, 100), (1, 1, 2.5, 200)],
                    [(1, 1, "pixar", 1), (2, 1, "Pixar", 2), (2, 1, "fun", 3)])
    items = read_items(tmp_path, now_ms=5)
    assert items[0] == {"item_id": "1", "title": "Toy Story (1995)",
                        "categories": ["Animation", "Children"], "ts": 5,
                        "description": "Tags: pixar, fun.", "published_ts": 788_918_400_000}
    # (January 1, 1995 UTC: the year in the title; a title without a year gives no time)
    assert items[1]["categories"] == [] and "description" not in items[1]
    assert "published_ts" not in items[1]
    events = read_events(tmp_path, id_prefix="t")
    assert [e["ts"] for e in events] == [100_000, 200_000, 300_000]
    assert events[0] == {"event_id": "t-1", "user_id": "2", "item_id": "1", "type": "rating",
                         "value": 5.0, "ts": 100_000}
    assert len(read_events(tmp_path, limit=2)) == 2


def test_bundle_settings_reach_process_mode_only():
    """Thread mode finishes no bundles, but PyFlink still wakes every Python operator at the
    bundle time: the job passes a long period there, the configured one in process mode."""
    from jobs.runtime import THREAD_MODE_BUNDLE_CHECK_MS, flink_configuration

    for mode, want in (("thread", str(THREAD_MODE_BUNDLE_CHECK_MS)), ("process", "5")):
        conf = flink_configuration(load_settings(
            overrides={"flink.python_execution_mode": mode,
                       "flink.python_bundle_time_ms": 5}, environ={}))
        assert conf["python.fn-execution.bundle.time"] == want, mode
        assert conf["python.execution-mode"] == mode
