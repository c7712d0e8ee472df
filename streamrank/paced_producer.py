"""The bench's fixed-rate load generator: records at a steady rate through Kafka's Java client
(``jvm/PacedProducer.java``, run as a single-file program on the broker's jars: nothing to
build), with each record's send time, for the latency phases.

kafka-python took ~0.3 of a core at 2,000 records/s (linger 5 ms: its sender thread 0.20,
measured with ``time.process_time`` against the local broker, plus the send loop) on the same
two cores as the job being measured; the Java client ~0.12 (the CPU of 12,000 records less
that of 4,000, at 2,000/s, so without the JVM's start: ~1.5 s of CPU, before the clock
starts). Without a JDK or the broker's jars the bench falls back to kafka-python
(:func:`paced_send` says which it used).
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Optional

log = logging.getLogger("streamrank.bench")

SOURCE = Path(__file__).resolve().parent.parent / "jvm" / "PacedProducer.java"


def java_available() -> bool:
    """A JDK that runs single-file programs, the producer's source and the broker's jars."""
    from jobs.runtime import SetupError, kafka_classpath

    if shutil.which("java") is None or not SOURCE.exists():
        return False
    try:
        kafka_classpath()
    except SetupError:
        return False
    return True


def _escape(value, key: bool = False) -> str:
    """``value`` as ``java.util.Properties.load`` reads it back: backslashes and line breaks
    escaped (a JAAS config or a path may hold them), and in a key the separators too."""
    out = str(value).replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r")
    if key:
        for ch in "=: ":
            out = out.replace(ch, "\\" + ch)
    return out


def java_paced_send(bootstrap: str, topic: str, records: list[dict], key_field: str,
                    rate: float, properties: Optional[dict] = None,
                    timeout_s: float = 3600) -> dict[str, int]:
    """Send ``records`` (JSON, keyed by ``record[key_field]``) at ``rate`` records/s with the
    Java client; returns event_id -> wall-clock ms right before its send."""
    from jobs.runtime import kafka_classpath

    with tempfile.TemporaryDirectory(prefix="streamrank-paced-") as tmp:
        src, out, props = Path(tmp) / "in.tsv", Path(tmp) / "out.tsv", Path(tmp) / "client"
        src.write_text("".join(
            f"{r['event_id']}\t{r[key_field]}\t{json.dumps(r, separators=(',', ':'))}\n"
            for r in records), encoding="utf-8")
        props.write_text("".join(f"{_escape(k, key=True)}={_escape(v)}\n"
                                 for k, v in (properties or {}).items()), encoding="utf-8")
        cmd = ["java", "-Xmx256m", "-XX:TieredStopAtLevel=1", "-cp", kafka_classpath(),
               str(SOURCE), bootstrap, topic, repr(float(rate)), str(src), str(out),
               str(props)]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
        if done.returncode != 0:
            raise RuntimeError(f"the Java load generator failed ({done.returncode}): "
                               f"{done.stderr.strip()[-2000:]}")
        sent = {}
        for line in out.read_text(encoding="utf-8").splitlines():
            event_id, ms = line.split("\t")
            sent[event_id] = int(ms)
    return sent


def paced_send(producer, bootstrap: str, topic: str, records: list[dict], key_field: str,
               rate: float, properties: Optional[dict] = None,
               desc: str = "") -> tuple[dict[str, int], str]:
    """``records`` at ``rate``: (event_id -> send ms, the load generator used): the Java
    client when :func:`java_available`, else ``producer`` (kafka-python)."""
    from streamrank.replay import produce

    if java_available():
        return java_paced_send(bootstrap, topic, records, key_field, rate, properties), "java"
    log.warning("no JDK or Kafka jars: the paced phase's load generator is kafka-python, "
                "which takes ~0.3 of a core at 2,000 records/s")
    sent: dict[str, int] = {}
    produce(producer, topic, records, key_field, rate=rate, desc=desc,
            on_sent=lambda rec, ms: sent.__setitem__(rec["event_id"], ms))
    return sent, "kafka-python"
