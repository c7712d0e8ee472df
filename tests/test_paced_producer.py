"""The bench's fixed-rate load generator (``jvm/PacedProducer.java`` through
``streamrank.paced_producer``) against the suite's real broker: every record arrives as sent,
keyed, on the rate's schedule, with its send time."""

from __future__ import annotations

import json
import uuid

from kafka import KafkaConsumer
from kafka.admin import KafkaAdminClient, NewTopic

from streamrank.paced_producer import java_available, java_paced_send


def test_records_go_out_at_the_rate_with_their_send_times(kafka_bootstrap):
    assert java_available()  # the suite installs a JDK and the broker's jars
    topic = f"paced-{uuid.uuid4().hex[:8]}"
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    admin.create_topics([NewTopic(topic, 1, 1)])
    admin.close()
    records = [{"event_id": f"e{i}", "user_id": f"u{i % 7}", "item_id": f"é{i}", "value": i}
               for i in range(200)]
    sent = java_paced_send(kafka_bootstrap, topic, records, "user_id", rate=1000.0)
    assert list(sent) == [r["event_id"] for r in records]
    times = list(sent.values())
    assert times == sorted(times)
    assert times[-1] - times[0] >= 190  # 200 records at 1,000/s: never ahead of the schedule
    consumer = KafkaConsumer(topic, bootstrap_servers=kafka_bootstrap,
                             auto_offset_reset="earliest", consumer_timeout_ms=5000)
    got = [(m.key.decode(), json.loads(m.value)) for m in consumer]
    consumer.close()
    assert got == [(r["user_id"], r) for r in records]
