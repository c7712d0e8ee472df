"""Stand-ins for the PyFlink context objects the job's operators use (plain Python, no Flink),
for tests that drive an operator's methods directly."""

from __future__ import annotations


class BroadcastState(dict):
    """A broadcast (map) state: the calls ``CatalogMirror`` makes on one."""

    def put(self, k, v):
        self[k] = v

    def put_all(self, d):
        self.update(d)

    def remove(self, k):
        self.pop(k, None)


class FakeContext:
    """One object for everything an operator is handed: runtime context (keyed value state,
    broadcast state, no metrics), the keyed value state itself (one value per current key),
    processing time and timers, and the current key. ``store`` and ``timers`` are what a
    checkpoint keeps; ``calls`` counts ``get_broadcast_state``."""

    def __init__(self, store=None, timers=None):
        self.store = {} if store is None else store
        self.timers = set() if timers is None else timers  # (time, key)
        self.states: dict[str, BroadcastState] = {}
        self.key, self.now, self.calls = None, 0, 0

    # RuntimeContext and broadcast access
    def get_state(self, descriptor):
        return self

    def get_metrics_group(self):
        raise RuntimeError("no metrics here")

    def get_broadcast_state(self, descriptor):
        self.calls += 1
        return self.states.setdefault(descriptor.name, BroadcastState())

    # ValueState (of the current key)
    def value(self):
        return self.store.get(self.key)

    def update(self, value):
        self.store[self.key] = value

    def clear(self):
        self.store.pop(self.key, None)

    # Context and TimerService
    def get_current_key(self):
        return self.key

    def timer_service(self):
        return self

    def current_processing_time(self):
        return self.now

    def register_processing_time_timer(self, at):
        self.timers.add((at, self.key))
