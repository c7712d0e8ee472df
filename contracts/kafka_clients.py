"""Kafka client properties (``kafka.properties``) for every client streamrank makes.

Users write Java client property names, as for any Kafka tool (``security.protocol``,
``sasl.mechanism``, ``sasl.jaas.config``, ``ssl.truststore.location``, timeouts...). The
job's Flink Kafka connector takes them verbatim (``properties.<name>``); the Python clients of
the command-line tools (kafka-python: replay, watch, demo, chaos, bench, topic creation) get
the equivalent keyword arguments from :func:`python_client_kwargs`. Secret values are masked
by :func:`masked` wherever properties are logged or written for display.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

_SECRET = re.compile(r"password|secret|jaas|token|(^|\.)key($|\.)|credential", re.I)
_JAAS_FIELD = re.compile(r'(username|password)\s*=\s*"((?:[^"\\]|\\.)*)"')
MASK = "******"

# Java names whose Python name is not just the dots turned into underscores.
_RENAMED = {
    "ssl.key.password": "ssl_password",
    "ssl.keystore.password": "ssl_password",
}


def is_secret(name: str) -> bool:
    return bool(_SECRET.search(name))


def masked(properties: Mapping[str, Any]) -> dict[str, Any]:
    """``properties`` with the values of secret-looking keys replaced by a mask."""
    return {k: (MASK if is_secret(str(k)) else v) for k, v in dict(properties).items()}


def connector_options(properties: Mapping[str, Any]) -> dict[str, str]:
    """``properties.<name>`` options of the Flink Kafka connector (source, sink, SQL)."""
    return {f"properties.{k}": str(v) for k, v in dict(properties).items()}


def python_client_kwargs(properties: Mapping[str, Any], client: str = "consumer") -> dict:
    """kafka-python keyword arguments for ``properties`` (``client``: consumer, producer or
    admin). Security settings are translated (SASL username/password from
    ``sasl.jaas.config``; PEM trust and key stores to ``ssl_cafile``/``ssl_certfile``); any
    other property is passed when the client knows it under its underscored name
    (``request.timeout.ms`` -> ``request_timeout_ms``); the rest is ignored by the Python
    tools (it still reaches the job's connector)."""
    props = {str(k): v for k, v in dict(properties).items()}
    known = _known_config(client)
    out: dict[str, Any] = {}
    jaas = props.pop("sasl.jaas.config", None)
    if jaas:
        fields = {k: re.sub(r"\\(.)", r"\1", v) for k, v in _JAAS_FIELD.findall(str(jaas))}
        if "username" in fields:
            out["sasl_plain_username"] = fields["username"]
        if "password" in fields:
            out["sasl_plain_password"] = fields["password"]
    for store, target in (("truststore", "ssl_cafile"), ("keystore", "ssl_certfile")):
        location = props.pop(f"ssl.{store}.location", None)
        kind = str(props.pop(f"ssl.{store}.type", "PEM")).upper()
        if location and kind == "PEM":
            out[target] = str(location)
    if props.pop("ssl.endpoint.identification.algorithm", None) == "":
        out["ssl_check_hostname"] = False
    for name, value in props.items():
        key = _RENAMED.get(name, name.replace(".", "_").replace("-", "_"))
        if key in known:
            out[key] = _typed(value, known[key])
    return out


def _known_config(client: str) -> dict[str, Any]:
    from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer

    cls = {"consumer": KafkaConsumer, "producer": KafkaProducer,
           "admin": KafkaAdminClient}[client]
    return dict(cls.DEFAULT_CONFIG)


def _typed(value: Any, default: Any) -> Any:
    """A property value (often a string in YAML/env) as the type of the client's default."""
    if isinstance(value, str):
        if isinstance(default, bool):
            return value.strip().lower() in ("1", "true", "yes")
        if isinstance(default, int):
            try:
                return int(value)
            except ValueError:
                return value
        if isinstance(default, float):
            try:
                return float(value)
            except ValueError:
                return value
    return value
