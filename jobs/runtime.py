"""Where things are on disk, and the Flink configuration derived from the settings."""

from __future__ import annotations

import os
import site
import sys
import sysconfig
from pathlib import Path

from contracts.config import REPO_ROOT, Settings

JARS_DIR = Path(os.environ.get("STREAMRANK_JARS_DIR", REPO_ROOT / ".jars"))
CONNECTOR_GLOB = "flink-sql-connector-kafka-*.jar"


class SetupError(RuntimeError):
    """Something streamrank needs is not installed; the message says how to fix it."""


def connector_jar() -> Path:
    jars = sorted((JARS_DIR / "flink").glob(CONNECTOR_GLOB))
    if not jars:
        raise SetupError(f"Flink Kafka connector jar not found under {JARS_DIR / 'flink'}; "
                         "run `make install` (or scripts/install.sh)")
    return jars[-1]


def prometheus_plugin_jar() -> Path:
    jars = sorted((JARS_DIR / "flink-plugins").glob("flink-metrics-prometheus-*.jar"))
    if not jars:
        raise SetupError(f"flink-metrics-prometheus jar not found under "
                         f"{JARS_DIR / 'flink-plugins'}; run `make install`")
    return jars[-1]


def kafka_classpath() -> str:
    kdir = JARS_DIR / "kafka"
    if not any(kdir.glob("kafka_2.13-*.jar")):
        raise SetupError(f"Kafka broker jars not found under {kdir}; run `make install`")
    return str(kdir / "*")


def python_path_for_workers() -> str:
    """PYTHONPATH that lets Flink's Python workers import this environment's packages and
    streamrank's own modules.

    In thread mode the Python interpreter is embedded in the JVM (PEMJA) and starts from the
    base installation, not the virtualenv (FLINK-38585), so the venv's site-packages and the
    repository must be on PYTHONPATH when the JVM starts.
    """
    paths = [str(REPO_ROOT)]
    paths += [p for p in site.getsitepackages() if os.path.isdir(p)]
    purelib = sysconfig.get_paths()["purelib"]
    if purelib not in paths:
        paths.append(purelib)
    existing = os.environ.get("PYTHONPATH")
    if existing:
        paths.append(existing)
    return os.pathsep.join(dict.fromkeys(paths))


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (for brokers and clusters started here)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prepare_process_environment() -> None:
    """Call before the first PyFlink call of a process that starts a MiniCluster/gateway."""
    os.environ["PYTHONPATH"] = python_path_for_workers()
    # Workers must never try to reach a model hub: the bundled model is local.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # numpy's BLAS on one thread in the TaskManager: parallelism comes from Flink's subtasks,
    # the JVM needs the other cores, and the ranker's products are as fast on one thread
    # (one user against 9,742 x 384: 0.89 ms on one, 1.07 on two; 64 users: 98 vs 101 us
    # per user, this 2-core host).
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


def _uri(path: str) -> str:
    if "://" in path:
        return path
    return Path(path).resolve().as_uri()


def restart_configuration(strategy: str, delay_ms: int) -> dict[str, str]:
    """Flink keys of ``flink.restart_strategy``: every strategy but ``none`` retries forever
    (a lost TaskManager or a bad deploy must not end the job)."""
    if strategy == "fixed-delay":
        return {"restart-strategy.type": "fixed-delay",
                "restart-strategy.fixed-delay.attempts": str(2**31 - 1),
                "restart-strategy.fixed-delay.delay": f"{delay_ms} ms"}
    if strategy == "exponential-delay":
        return {"restart-strategy.type": "exponential-delay",
                "restart-strategy.exponential-delay.initial-backoff": f"{delay_ms} ms",
                "restart-strategy.exponential-delay.max-backoff": "60 s",
                "restart-strategy.exponential-delay.attempts-before-reset-backoff":
                    str(2**31 - 1)}
    return {"restart-strategy.type": "none"}


# In thread mode a bundle is one record, yet every Python operator still runs a timer every
# bundle.time ms to "finish the bundle" (a no-op there, PyFlink 2.2): at 5 ms, ~200 mails a
# second per operator woke the task threads (~4,000 context switches a second in the bench's
# time-ordered phase; the job's CPU share 0.64 -> 0.56 of 2 cores without them, at the same
# events/s). Thread mode gets this period instead.
THREAD_MODE_BUNDLE_CHECK_MS = 60_000


def flink_configuration(settings: Settings) -> dict[str, str]:
    """Flink configuration keys for the job, from ``settings.flink``."""
    f = settings.flink  # choices are checked when the settings are loaded
    conf = {
        "python.execution-mode": f.python_execution_mode,
        "python.executable": sys.executable,
        "python.client.executable": sys.executable,
        "python.fn-execution.bundle.size": str(f.python_bundle_size),
        "python.fn-execution.bundle.time": str(
            f.python_bundle_time_ms if f.python_execution_mode == "process"
            else THREAD_MODE_BUNDLE_CHECK_MS),
        "pipeline.jars": connector_jar().as_uri(),
        "parallelism.default": str(f.parallelism),
        "state.backend.type": f.state_backend,
        "execution.checkpointing.dir": _uri(f.checkpoint_dir),
        "execution.checkpointing.incremental": "true" if f.state_backend == "rocksdb" else "false",
        "execution.checkpointing.interval": f"{f.checkpoint_interval_ms} ms",
        "execution.checkpointing.timeout": f"{f.checkpoint_timeout_ms} ms",
        "execution.checkpointing.min-pause": f"{f.min_pause_between_checkpoints_ms} ms",
        "execution.checkpointing.tolerable-failed-checkpoints":
            str(f.tolerable_failed_checkpoints),
        "execution.checkpointing.mode": "EXACTLY_ONCE",
        # Keep the last checkpoint when the job is cancelled: a redeploy can start from it.
        "execution.checkpointing.externalized-checkpoint-retention": "RETAIN_ON_CANCELLATION",
        "execution.buffer-timeout.interval": f"{f.buffer_timeout_ms} ms",
        "pipeline.name": "streamrank",
    }
    if f.state_backend == "rocksdb":
        # Users (and items) in state, per operator and state: RocksDB's own key-count estimate,
        # reported as <operator>.rocksdb.estimate-num-keys (a cheap native property).
        conf["state.backend.rocksdb.metrics.estimate-num-keys"] = "true"
    conf.update(restart_configuration(f.restart_strategy, f.restart_delay_ms))
    conf.update({str(k): str(v) for k, v in dict(f.extra).items()})
    return conf
