"""One typed, frozen settings object for every part of streamrank.

Built from ``conf/streamrank.yaml`` (the documented defaults), optionally merged with a user
YAML file, then ``STREAMRANK_<SECTION>__<KEY>`` environment variables, then ``--set`` overrides.
The object is plain dataclasses so it pickles into Flink functions unchanged.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = REPO_ROOT / "conf" / "streamrank.yaml"
ENV_PREFIX = "STREAMRANK_"


@dataclass(frozen=True)
class Topics:
    items: str = "items"
    events: str = "events"
    rankings: str = "rankings"
    events_dlq: str = "events-dlq"
    items_dlq: str = "items-dlq"


@dataclass(frozen=True)
class KafkaSettings:
    bootstrap_servers: str = "127.0.0.1:9092"
    topics: Topics = field(default_factory=Topics)
    partitions: int = 1
    group_id: str = "streamrank"
    starting_offsets: str = "earliest"
    delivery_guarantee: str = "at-least-once"
    transactional_id_prefix: str = "streamrank"
    transaction_timeout_ms: int = 600_000
    replication_factor: int = 1
    properties: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class LocalKafkaSettings:
    host: str = "127.0.0.1"
    port: int = 9092
    controller_port: int = 9093
    data_dir: str = ".run/kafka"
    heap: str = "512m"


@dataclass(frozen=True)
class FlinkSettings:
    parallelism: int = 1
    python_execution_mode: str = "thread"
    python_bundle_size: int = 1000
    python_bundle_time_ms: int = 5
    buffer_timeout_ms: int = 10
    checkpoint_interval_ms: int = 10_000
    state_backend: str = "rocksdb"
    checkpoint_dir: str = ".run/checkpoints"
    checkpoint_timeout_ms: int = 120_000
    tolerable_failed_checkpoints: int = 5
    min_pause_between_checkpoints_ms: int = 0
    restart_strategy: str = "exponential-delay"
    restart_delay_ms: int = 1000
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ClusterSettings:
    dir: str = ".run/cluster"
    host: str = "127.0.0.1"
    rest_port: int = 8081
    rpc_port: int = 6123
    taskmanagers: int = 1
    slots_per_taskmanager: int = 2
    jobmanager_memory: str = "1024m"
    taskmanager_memory: str = "3072m"
    heartbeat_timeout_ms: int = 10_000
    prometheus_port: int = 0
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelSettings:
    name_or_path: str = "bundled"
    device: str = "auto"
    batch_size: int = 32
    batch_timeout_ms: int = 200
    reembed_interval_ms: int = 1000
    max_length: int = 128
    precision: str = "fp32"
    cache_dir: str = ".run/embedding-cache"


@dataclass(frozen=True)
class RankingSettings:
    k: int = 10
    alpha: float = 0.3
    half_life_hours: float = 720.0
    event_weights: Mapping[str, float] = field(
        default_factory=lambda: {
            "view": 0.1, "click": 0.3, "like": 0.7, "purchase": 1.0, "skip": -0.2, "dislike": -0.7,
        }
    )
    rating_neutral: float = 3.0
    rating_scale: float = 2.0
    popularity_half_life_hours: float = 1.0e9
    popularity_emit_interval_ms: int = 1000
    neighbours_emit_interval_ms: int = 5000
    max_seen: int = 5000
    max_pending: int = 100
    pending_retry_ms: int = 500
    pending_timeout_ms: int = 3_600_000
    user_ttl_hours: float = 0.0
    forget_memory_hours: float = 168.0
    unknown_item_ttl_ms: int = 3_600_000
    reason_title_chars: int = 80
    emit_state_digest: bool = False
    max_centroids: int = 4
    centroid_open_threshold: float = 0.5
    history_size: int = 30
    history_decay: float = 0.9
    max_neighbours: int = 200
    cooc_positive_only: bool = False
    fusion_weights: Mapping[str, float] = field(
        default_factory=lambda: {"content": 0.02, "cooc": 1.0, "popularity": 0.0,
                                 "trending": 0.04})
    learning_rate: float = 0.001
    l2: float = 0.1
    mmr_lambda: float = 0.9
    mmr_candidates: int = 50
    exact_max_items: int = 20_000
    ann_candidates: int = 200
    ann_nprobe: int = 16
    popular_candidates: int = 200
    batch_window_ms: int = 10
    batch_max_users: int = 64


@dataclass(frozen=True)
class ValidationSettings:
    max_id_length: int = 256
    max_text_chars: int = 20_000
    max_future_skew_ms: int = 86_400_000
    min_ts_ms: int = 0
    max_record_bytes: int = 1_048_576
    dlq_max_raw_bytes: int = 65_536


@dataclass(frozen=True)
class Settings:
    kafka: KafkaSettings = field(default_factory=KafkaSettings)
    local_kafka: LocalKafkaSettings = field(default_factory=LocalKafkaSettings)
    flink: FlinkSettings = field(default_factory=FlinkSettings)
    cluster: ClusterSettings = field(default_factory=ClusterSettings)
    model: ModelSettings = field(default_factory=ModelSettings)
    ranking: RankingSettings = field(default_factory=RankingSettings)
    validation: ValidationSettings = field(default_factory=ValidationSettings)

    def replace(self, **overrides: Any) -> "Settings":
        """Return a copy with dotted-path overrides, e.g. ``replace(**{"ranking.k": 5})``."""
        data = to_dict(self)
        for dotted, value in overrides.items():
            _set_dotted(data, dotted, value)
        return _build(Settings, data, "")


class ConfigError(ValueError):
    """A configuration file, variable or override that does not fit the schema."""


def to_dict(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def _coerce(value: Any, default: Any, path: str) -> Any:
    """Coerce YAML/env values to the type of the field's default (env values arrive as str)."""
    if isinstance(default, bool):
        if isinstance(value, str):
            low = value.strip().lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ConfigError(f"{path}: expected a boolean, got {value!r}")
        return bool(value)
    try:
        if isinstance(default, int):
            return int(value)
        if isinstance(default, float):
            return float(value)
        if isinstance(default, str):
            return str(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{path}: expected {type(default).__name__}, got {value!r}") from exc
    if isinstance(default, Mapping):
        if isinstance(value, str):
            value = yaml.safe_load(value)
        if not isinstance(value, Mapping):
            raise ConfigError(f"{path}: expected a mapping, got {value!r}")
        return dict(value)
    return value


def _build(cls: type, data: Mapping[str, Any], prefix: str) -> Any:
    defaults = cls()
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - known
    if unknown:
        raise ConfigError(
            f"unknown key(s) {sorted(prefix + k for k in unknown)}; known: {sorted(known)}"
        )
    kwargs = {}
    for f in dataclasses.fields(cls):
        default = getattr(defaults, f.name)
        if f.name not in data:
            continue
        value = data[f.name]
        path = prefix + f.name
        if dataclasses.is_dataclass(default):
            if not isinstance(value, Mapping):
                raise ConfigError(f"{path}: expected a section (mapping), got {value!r}")
            kwargs[f.name] = _build(type(default), value, path + ".")
        else:
            kwargs[f.name] = _coerce(value, default, path)
    return cls(**kwargs)


def _set_dotted(data: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = data
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{dotted}: {part} is not a section")
    node[parts[-1]] = value


def _merge(base: dict, over: Mapping) -> dict:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict) \
                and key not in ("extra", "properties"):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError as exc:
        raise ConfigError(f"config file not found: {path}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    return data


def load_settings(
    config_file: str | os.PathLike | None = None,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Defaults file, then ``config_file``, then environment, then ``overrides`` (dotted keys)."""
    data = _read_yaml(DEFAULT_CONFIG) if DEFAULT_CONFIG.exists() else {}
    if config_file:
        data = _merge(data, _read_yaml(Path(config_file)))
    environ = os.environ if environ is None else environ
    for name, value in environ.items():
        if name.startswith(ENV_PREFIX) and "__" in name:
            dotted = name[len(ENV_PREFIX):].lower().replace("__", ".")
            _set_dotted(data, dotted, value)
    for dotted, value in (overrides or {}).items():
        _set_dotted(data, dotted, value)
    return _build(Settings, data, "")


def file_and_environment(settings: Settings) -> tuple[dict, dict[str, str]]:
    """The settings as a dict to write to a config file for another process, with secret
    Kafka properties masked, and the environment variables that carry the real properties
    to that process (``load_settings`` reads them over the file)."""
    from streamrank.kafka_clients import masked

    data = to_dict(settings)
    props = dict(settings.kafka.properties)
    if not props:
        return data, {}
    data["kafka"]["properties"] = masked(props)
    return data, {ENV_PREFIX + "KAFKA__PROPERTIES": json.dumps(props)}


def parse_set_args(items: list[str] | None) -> dict[str, Any]:
    """``["ranking.k=20", ...]`` -> ``{"ranking.k": 20}`` (values parsed as YAML scalars)."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set expects section.key=value, got {item!r}")
        out[key.strip()] = yaml.safe_load(value)
    return out
