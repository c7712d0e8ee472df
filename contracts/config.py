"""One typed, frozen settings object for every part of streamrank.

Built from ``conf/streamrank.yaml``, the one place where defaults live (every key, documented),
optionally merged with a user YAML file, then ``STREAMRANK_<SECTION>__<KEY>`` environment
variables, then ``--set`` overrides. The dataclasses below hold only the keys and their types
(choices as ``Literal``); every value is checked against them when it is loaded, so a typo or a
wrong choice fails at start, naming the key. The object is plain dataclasses so it pickles into
Flink functions unchanged.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Mapping, get_args, get_origin, get_type_hints

import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = REPO_ROOT / "conf" / "streamrank.yaml"
ENV_PREFIX = "STREAMRANK_"


@dataclass(frozen=True)
class Topics:
    items: str
    events: str
    rankings: str
    events_dlq: str
    items_dlq: str
    interactions: str

    @classmethod
    def roles(cls) -> tuple[str, ...]:
        """Every topic role (field), in order."""
        return tuple(f.name for f in dataclasses.fields(cls))


@dataclass(frozen=True)
class KafkaSettings:
    bootstrap_servers: str
    topics: Topics
    partitions: int
    group_id: str
    starting_offsets: Literal["earliest", "latest"]
    delivery_guarantee: Literal["at-least-once", "exactly-once"]
    transactional_id_prefix: str
    transaction_timeout_ms: int
    replication_factor: int
    interactions_fetch_wait_ms: int
    properties: Mapping[str, Any]


@dataclass(frozen=True)
class LocalKafkaSettings:
    host: str
    port: int
    controller_port: int
    data_dir: str
    heap: str
    jvm_options: str


@dataclass(frozen=True)
class FlinkSettings:
    parallelism: int
    python_execution_mode: Literal["thread", "process"]
    python_bundle_size: int
    python_bundle_time_ms: int
    buffer_timeout_ms: int
    event_batch_ms: int
    checkpoint_interval_ms: int
    state_backend: Literal["rocksdb", "hashmap"]
    checkpoint_dir: str
    checkpoint_timeout_ms: int
    tolerable_failed_checkpoints: int
    min_pause_between_checkpoints_ms: int
    restart_strategy: Literal["exponential-delay", "fixed-delay", "none"]
    restart_delay_ms: int
    extra: Mapping[str, Any]


@dataclass(frozen=True)
class ClusterSettings:
    dir: str
    host: str
    rest_port: int
    rpc_port: int
    taskmanagers: int
    slots_per_taskmanager: int
    jobmanager_memory: str
    taskmanager_memory: str
    heartbeat_timeout_ms: int
    prometheus_port: int
    extra: Mapping[str, Any]


@dataclass(frozen=True)
class ModelSettings:
    name_or_path: str
    device: str
    batch_size: int
    batch_timeout_ms: int
    reembed_interval_ms: int
    max_length: int
    precision: Literal["fp32", "bf16", "int8", "fp16"]
    cache_dir: str


@dataclass(frozen=True)
class RankingSettings:
    k: int
    alpha: float
    half_life_hours: float
    event_weights: Mapping[str, float]
    rating_neutral: float
    rating_scale: float
    popularity_half_life_hours: float
    freshness_weight: float
    freshness_half_life_hours: float
    popularity_emit_interval_ms: int
    neighbours_emit_interval_ms: int
    merge_slice_pairs: int
    max_seen: int
    max_pending: int
    pending_retry_ms: int
    pending_timeout_ms: int
    user_ttl_hours: float
    forget_memory_hours: float
    unknown_item_ttl_ms: int
    reason_title_chars: int
    emit_state_digest: bool
    max_centroids: int
    centroid_open_threshold: float
    history_size: int
    cooc_context_size: int
    history_decay: float
    max_neighbours: int
    cooc_positive_only: bool
    fusion_weights: Mapping[str, float]
    learning_rate: float
    content_signal: bool
    l2: float
    mmr_lambda: float
    mmr_candidates: int
    exact_max_items: int
    ann_candidates: int
    ann_nprobe: int
    popular_candidates: int
    emit_window_ms: int
    max_covered_events: int
    batch_max_users: int
    kernel_precision: Literal["auto", "bf16", "fp32"]


@dataclass(frozen=True)
class ValidationSettings:
    max_id_length: int
    max_text_chars: int
    max_future_skew_ms: int
    min_ts_ms: int
    max_record_bytes: int
    dlq_max_raw_bytes: int


@dataclass(frozen=True)
class Settings:
    kafka: KafkaSettings
    local_kafka: LocalKafkaSettings
    flink: FlinkSettings
    cluster: ClusterSettings
    model: ModelSettings
    ranking: RankingSettings
    validation: ValidationSettings

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


def _coerce(value: Any, typ: Any, path: str) -> Any:
    """A YAML/env value as the field's type (env values arrive as strings)."""
    origin = get_origin(typ)
    if origin is Literal:
        choices = get_args(typ)
        if value not in choices:
            raise ConfigError(f"{path}: expected one of {', '.join(map(str, choices))}, "
                              f"got {value!r}")
        return value
    if typ is bool:
        if isinstance(value, bool):
            return value
        low = str(value).strip().lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{path}: expected a boolean, got {value!r}")
    if typ in (int, float, str):
        if isinstance(value, bool) or isinstance(value, (dict, list)):
            raise ConfigError(f"{path}: expected {typ.__name__}, got {value!r}")
        try:
            return typ(value)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{path}: expected {typ.__name__}, got {value!r}") from exc
    if origin is not None and issubclass(origin, Mapping):
        if isinstance(value, str):
            value = yaml.safe_load(value)
        if not isinstance(value, Mapping):
            raise ConfigError(f"{path}: expected a mapping, got {value!r}")
        value_type = get_args(typ)[1] if get_args(typ) else Any
        if value_type in (int, float):
            return {str(k): _coerce(v, value_type, f"{path}.{k}") for k, v in value.items()}
        return dict(value)
    raise ConfigError(f"{path}: unsupported setting type {typ!r}")


def _build(cls: type, data: Mapping[str, Any], prefix: str) -> Any:
    """``cls`` from ``data``: every field present (the defaults file has them all), no other
    key, each value of its field's type."""
    hints = get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = set(data) - set(names)
    if unknown:
        raise ConfigError(
            f"unknown key(s) {sorted(prefix + k for k in unknown)}; known: {sorted(names)}")
    missing = [n for n in names if n not in data]
    if missing:
        raise ConfigError(f"missing key(s) {[prefix + n for n in missing]}: every key has its "
                          f"default in {DEFAULT_CONFIG}")
    kwargs = {}
    for name in names:
        typ, value, path = hints[name], data[name], prefix + name
        if dataclasses.is_dataclass(typ):
            if not isinstance(value, Mapping):
                raise ConfigError(f"{path}: expected a section (mapping), got {value!r}")
            kwargs[name] = _build(typ, value, path + ".")
        else:
            kwargs[name] = _coerce(value, typ, path)
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


def default_settings() -> Settings:
    """The defaults of ``conf/streamrank.yaml`` alone (no user file, no environment)."""
    return load_settings(environ={})


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
    from contracts.kafka_clients import masked

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
