"""Live model swap on a real standalone cluster: the job runs with the bundled MiniLM, is
stopped with a savepoint and resubmitted with another model (a randomly initialised tiny BERT
saved locally) while events keep flowing. The catalog is re-embedded in the background;
rankings keep coming with the old vectors and switch to the new model once, when its catalog
is complete; no event goes without its ranking."""

from __future__ import annotations

import threading
import time
import uuid

import pytest

from streamrank.chaos import Harness, chaos_settings
from tests.conftest import free_port, isolated_settings

pytestmark = [pytest.mark.kafka, pytest.mark.cluster, pytest.mark.model]

GENRES = ("horror", "romance", "western", "animation")


def tiny_bert(path):
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from udfs.embedding import resolve_model

    _, bundled = resolve_model("bundled")
    tokenizer = AutoTokenizer.from_pretrained(bundled)
    torch.manual_seed(0)
    model = BertModel(BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32,
                                 num_hidden_layers=1, num_attention_heads=2,
                                 intermediate_size=64, max_position_embeddings=256))
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def catalog(n_per_genre: int = 50) -> list[dict]:
    return [{"item_id": f"{g[:3]}{i}", "title": f"The {g.title()} Story Number {i}",
             "categories": [g.title()], "description": f"Tags: {g}, tale {i}.", "ts": 1}
            for g in GENRES for i in range(n_per_genre)]


class Feed(threading.Thread):
    """Events at a steady rate until stopped; remembers every event id and its send time."""

    def __init__(self, producer, topic: str, rate: float = 20.0):
        super().__init__(daemon=True)
        self.producer, self.topic, self.rate = producer, topic, rate
        self.sent: list[tuple[str, float]] = []
        self.stop_flag = threading.Event()

    def run(self) -> None:
        import json

        i = 0
        while not self.stop_flag.is_set():
            g = GENRES[i % len(GENRES)]
            ev = {"event_id": f"s-{i:05d}", "user_id": f"user{i % 12}",
                  "item_id": f"{g[:3]}{(i * 7) % 50}", "type": "like",
                  "ts": int(time.time() * 1000)}
            self.producer.send(self.topic, key=ev["user_id"].encode(),
                               value=json.dumps(ev).encode())
            self.sent.append((ev["event_id"], time.monotonic()))
            i += 1
            time.sleep(1 / self.rate)
        self.producer.flush()


def test_model_swap_keeps_rankings_flowing_and_switches_once(kafka_bootstrap, tmp_path):
    new_model = str(tiny_bert(tmp_path / "tiny-bert"))
    base = isolated_settings(kafka_bootstrap, tmp_path,
                             **{"model.batch_size": 4, "model.reembed_interval_ms": 1000})
    settings = chaos_settings(base, tmp_path / "run", uuid.uuid4().hex[:8], parallelism=1,
                              checkpoint_ms=1000, rest_port=free_port(), rpc_port=free_port())
    items = catalog()
    with Harness(settings, tmp_path / "run") as h:
        job = h.submit()
        h.load_catalog(items, timeout_s=300)
        feed = Feed(h.producer, settings.kafka.topics.events)
        feed.start()
        try:
            time.sleep(5)
            savepoint = h.cluster.stop_with_savepoint(job, str(tmp_path / "savepoints"))
            swapped = settings.replace(**{"model.name_or_path": new_model})
            job2 = h.cluster.submit(swapped, savepoint=savepoint)
            h.cluster.wait_job_running(job2, wait_s=180)
            restarted_at = time.monotonic()
            deadline = time.monotonic() + 240
            while time.monotonic() < deadline and not any(
                    r.get("model", "").startswith("local:")
                    for r in h.rankings.latest_rankings()):
                time.sleep(0.5)
            time.sleep(3)
        finally:
            feed.stop_flag.set()
            feed.join()
        ids = [e for e, _ in feed.sent]
        assert h.wait_ranked(ids, timeout_s=240) == len(ids), "an event lost its ranking"
        by_event = {}
        for r in h.rankings.values():
            for e in r.get("event_ids") or []:
                if e.startswith("s-"):
                    by_event.setdefault(e, []).append(r)
    assert all(len(by_event[e]) == 1 for e in ids), "an event ranked twice"
    models = [by_event[e][0]["model"] for e in ids]
    old, new = models[0], models[-1]
    assert old == "sentence-transformers/all-MiniLM-L6-v2" and new.startswith("local:")
    switches = sum(1 for a, b in zip(models, models[1:]) if a != b)
    assert switches == 1, f"the model field switched {switches} times"
    # Rankings kept flowing with the old vectors while the new catalog was being embedded.
    after_restart = [by_event[e][0]["model"] for e, t in feed.sent if t > restarted_at]
    assert old in after_restart and new in after_restart
    first_new = next(by_event[e][0] for e in ids if by_event[e][0]["model"] == new)
    assert first_new["catalog_size"] == len(items), "switched before the catalog was complete"
