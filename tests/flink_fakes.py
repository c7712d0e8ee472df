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


class FakeListState:
    """A keyed list state: one list per current key of its context."""

    def __init__(self, ctx: "FakeContext"):
        self.ctx = ctx

    def get(self):
        return list(self.ctx.lists.get(self.ctx.key, ()))

    def add(self, value):
        self.ctx.lists.setdefault(self.ctx.key, []).append(value)

    def clear(self):
        self.ctx.lists.pop(self.ctx.key, None)


class FakeContext:
    """One object for everything an operator is handed: runtime context (keyed value state,
    a keyed list state, broadcast state, no metrics), the keyed value state itself (one value
    per current key), processing time and timers, and the current key. ``store``, ``lists``
    and ``timers`` are what a checkpoint keeps (:meth:`restored`); ``calls`` counts
    ``get_broadcast_state``."""

    def __init__(self, store=None, timers=None, lists=None):
        self.store = {} if store is None else store
        self.lists = {} if lists is None else lists
        self.timers = set() if timers is None else timers  # (time, key)
        self.states: dict[str, BroadcastState] = {}
        self.key, self.now, self.calls = None, 0, 0

    def restored(self, timers=None) -> "FakeContext":
        """A context with a copy of what a checkpoint taken now keeps (``timers`` instead of
        the current ones when given)."""
        return FakeContext(dict(self.store), set(self.timers if timers is None else timers),
                           {k: list(v) for k, v in self.lists.items()})

    # RuntimeContext and broadcast access
    def get_state(self, descriptor):
        return self

    def get_list_state(self, descriptor):
        return FakeListState(self)

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
