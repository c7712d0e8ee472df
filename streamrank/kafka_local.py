"""A single-node Apache Kafka broker (KRaft mode) started from the official jars.

``streamrank kafka up`` formats the storage on first use, starts the broker in the background
on 127.0.0.1, waits until it answers and creates the topics from the settings; ``down`` stops
it (SIGTERM, then SIGKILL after a grace period). No Docker needed.
"""

from __future__ import annotations

import base64
import logging
import os
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from contracts.config import KafkaSettings, LocalKafkaSettings
from jobs.topics import admin_client, topic_specs
from jobs.runtime import kafka_classpath

log = logging.getLogger(__name__)

_LOG4J = """\
status = warn
appender.file.type = File
appender.file.name = file
appender.file.fileName = {log}
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = file
logger.kafka.name = kafka
logger.kafka.level = WARN
logger.apache.name = org.apache.kafka
logger.apache.level = WARN
"""


def new_cluster_id() -> str:
    """A random KRaft cluster id: a UUID in URL-safe base64 (22 characters), never one that
    starts with '-', which StorageTool's argument parser reads as an option and fails on (one
    id in 64: a fresh broker failed to start once in a while)."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


@dataclass
class LocalBroker:
    """One local broker; ``data_dir`` holds its logs, pid file and configuration."""

    settings: LocalKafkaSettings

    @property
    def data_dir(self) -> Path:
        return Path(self.settings.data_dir).resolve()

    @property
    def bootstrap(self) -> str:
        return f"{self.settings.host}:{self.settings.port}"

    @property
    def pid_file(self) -> Path:
        return self.data_dir / "broker.pid"

    @property
    def log_file(self) -> Path:
        return self.data_dir / "broker.log"

    def _write_config(self) -> Path:
        s = self.settings
        props = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@{s.host}:{s.controller_port}",
            "listeners": f"PLAINTEXT://{s.host}:{s.port},CONTROLLER://{s.host}:{s.controller_port}",
            "advertised.listeners": f"PLAINTEXT://{s.host}:{s.port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": str(self.data_dir / "data"),
            "num.partitions": "1",
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "1",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "transaction.state.log.num.partitions": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            # The broker default (15 min); kafka.transaction_timeout_ms must stay below it.
            "transaction.max.timeout.ms": "900000",
            "log.cleaner.backoff.ms": "1000",
            "auto.create.topics.enable": "false",
        }
        path = self.data_dir / "server.properties"
        path.write_text("".join(f"{k}={v}\n" for k, v in props.items()))
        (self.data_dir / "log4j2.properties").write_text(_LOG4J.format(log=self.log_file))
        return path

    def pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return pid

    def answers(self, timeout: float = 1.0) -> bool:
        try:
            with socket.create_connection((self.settings.host, self.settings.port), timeout):
                return True
        except OSError:
            return False

    def _java(self) -> list[str]:
        return ["java", f"-Dlog4j2.configurationFile={self.data_dir / 'log4j2.properties'}",
                "-cp", kafka_classpath()]

    def prepare(self, cluster_id: str | None = None) -> Path:
        """Write the broker's configuration and format its storage unless it is formatted
        already (``cluster_id``: a new one, :func:`new_cluster_id`, unless given); returns
        the configuration's path. Raises with StorageTool's message when it fails."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        config = self._write_config()
        if not (self.data_dir / "data" / "meta.properties").exists():
            done = subprocess.run(self._java() + [
                "kafka.tools.StorageTool", "format", "-t", cluster_id or new_cluster_id(),
                "-c", str(config)], capture_output=True)
            if done.returncode:
                raise RuntimeError(f"formatting the broker's storage in {self.data_dir} failed "
                                   f"(exit {done.returncode}): "
                                   f"{done.stderr.decode(errors='replace')[-2000:]}")
        return config

    def up(self, wait_s: float = 60.0) -> None:
        """Start the broker unless it is already running; return once it accepts requests."""
        if self.pid() is not None:
            log.info("local Kafka already running (pid %s) on %s", self.pid(), self.bootstrap)
            wait_until_ready(self.bootstrap, wait_s)
            return
        if self.answers():
            raise RuntimeError(f"port {self.settings.port} is taken by another process; set "
                               "local_kafka.port (and kafka.bootstrap_servers) to a free port")
        config = self.prepare()
        java = self._java()
        heap = self.settings.heap
        with open(self.data_dir / "broker.out", "ab") as out:
            proc = subprocess.Popen(
                java[:1] + [f"-Xms{heap}", f"-Xmx{heap}", "-XX:+UseG1GC"]
                + self.settings.jvm_options.split() + java[1:]
                + ["kafka.Kafka", str(config)],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True)
        self.pid_file.write_text(str(proc.pid))
        try:
            wait_until_ready(self.bootstrap, wait_s, proc=proc)
        except Exception:
            self.down()
            raise RuntimeError(f"local Kafka did not start; see {self.log_file} and "
                               f"{self.data_dir / 'broker.out'}") from None
        log.info("local Kafka up on %s (pid %d)", self.bootstrap, proc.pid)

    def down(self, grace_s: float = 20.0) -> bool:
        """Stop the broker; True when one was running."""
        pid = self.pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return False
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            _reap(pid)
            time.sleep(0.2)
        else:
            os.kill(pid, signal.SIGKILL)
            time.sleep(0.5)
            _reap(pid)
        self.pid_file.unlink(missing_ok=True)
        return True


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def wait_until_ready(bootstrap: str, wait_s: float, proc: subprocess.Popen | None = None) -> None:
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    deadline = time.monotonic() + wait_s
    last: Exception | None = None
    host, _, port = bootstrap.split(",")[0].rpartition(":")
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"broker exited with code {proc.returncode}")
        try:  # cheap port check first: kafka-python's own reconnect backoff is seconds long
            socket.create_connection((host, int(port)), 1.0).close()
        except OSError as exc:
            last = exc
            time.sleep(0.2)
            continue
        try:
            admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=3000)
            try:
                admin.list_topics()
                return
            finally:
                admin.close()
        except (KafkaError, OSError, ValueError) as exc:
            last = exc
            time.sleep(0.5)
    raise TimeoutError(f"Kafka at {bootstrap} not ready after {wait_s:.0f}s: {last}")




def create_topics(kafka: KafkaSettings, recreate: bool = False,
                  extra: tuple[str, ...] = ()) -> list[str]:
    """Create the job's topics that do not exist (all of them afresh with ``recreate``), plus
    ``extra`` plain topics."""
    from kafka.admin import NewTopic
    from kafka.errors import TopicAlreadyExistsError, UnknownTopicOrPartitionError

    specs = topic_specs(kafka)
    specs.update({name: {} for name in extra})
    admin = admin_client(kafka)
    try:
        existing = set(admin.list_topics())
        if recreate:
            doomed = [t for t in specs if t in existing]
            if doomed:
                try:
                    admin.delete_topics(doomed)
                except UnknownTopicOrPartitionError:
                    pass
                _wait_topics(admin, doomed, listed=False)
            existing -= set(doomed)
        new = [NewTopic(name, kafka.partitions, kafka.replication_factor, topic_configs=cfg)
               for name, cfg in specs.items() if name not in existing]
        created = []
        if new:
            try:
                admin.create_topics(new)
                created = [t.name for t in new]
            except TopicAlreadyExistsError:
                pass
        _wait_topics(admin, created, listed=True)
        return created
    finally:
        admin.close()


def delete_topics_with_prefix(kafka: KafkaSettings, prefix: str) -> int:
    """Delete every topic whose name starts with ``prefix`` (a bench run's own); best effort:
    returns how many were asked to go."""
    from kafka.errors import KafkaError

    admin = admin_client(kafka)
    try:
        doomed = [t for t in admin.list_topics() if t.startswith(prefix)]
        if doomed:
            admin.delete_topics(doomed)
        return len(doomed)
    except KafkaError as exc:
        log.warning("could not delete the topics %s*: %s", prefix, exc)
        return 0
    finally:
        admin.close()


def _wait_topics(admin, topics: list[str], listed: bool, wait_s: float = 60.0) -> None:
    """Wait until every one of ``topics`` is listed (``listed``) or none is. Creation and
    deletion return before the cluster's metadata shows them (~4 s on a local broker holding
    a few hundred topics), and a job started next checks its topics."""
    deadline = time.monotonic() + wait_s
    while True:
        names = set(admin.list_topics())
        if (set(topics) <= names) if listed else not set(topics) & names:
            break
        if time.monotonic() > deadline:
            raise TimeoutError(f"topics {topics} {'not listed' if listed else 'still listed'} "
                               f"after {wait_s:.0f}s")
        time.sleep(0.3)
    if not listed:
        time.sleep(0.5)  # deletion is asynchronous past the listing, too
