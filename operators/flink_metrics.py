"""streamrank's custom Flink metrics, registered under the ``streamrank`` group of each
operator so they appear in the Flink web UI and the REST API (and in any metrics reporter,
e.g. Prometheus), next to Flink's own ``numRecordsIn``/``numRecordsOut``.

Metric registration must never take a job down, so when the runtime offers no metric group
(or a kind of metric is missing) the calls become no-ops.
"""

from __future__ import annotations

import logging
import time

log = logging.getLogger("streamrank.metrics")

GROUP = "streamrank"


class _Nothing:
    def inc(self, n: int = 1) -> None:
        pass

    def dec(self, n: int = 1) -> None:
        pass

    def update(self, value) -> None:
        pass

    def mark_event(self, n: int = 1) -> None:
        pass


class OperatorMetrics:
    """The ``streamrank`` metric group of one operator subtask.

    Every call of a Flink metric from Python is a JVM call, and a JVM call lets go of the
    interpreter's lock (that all the Python operators of a TaskManager share in thread
    mode): a counter touched per event is a :meth:`batched` one, counted in Python and
    handed to Flink at :meth:`flush` (the operator calls it, e.g. at each ranking window)
    and, while increments come, at least every ``FLUSH_EVERY`` of them or
    ``FLUSH_SECONDS``."""

    FLUSH_EVERY = 512
    FLUSH_SECONDS = 1.0

    def __init__(self, ctx):
        try:
            self.group = ctx.get_metrics_group().add_group(GROUP)
        except Exception as exc:  # noqa: BLE001 - metrics are optional
            log.warning("metrics unavailable (%s); streamrank metrics are not reported", exc)
            self.group = None
        self._counters: dict[str, object] = {}
        self._batched: dict[str, _BatchedCounter] = {}
        self._unflushed = 0
        self._flushed_at = time.monotonic()

    def batched(self, name: str) -> "_BatchedCounter":
        """The counter ``name``, counted in Python until the next :meth:`flush`."""
        c = self._batched.get(name)
        if c is None:
            c = self._batched[name] = _BatchedCounter(self, self.counter(name))
        return c

    def flush(self) -> None:
        """Hand the batched counts to Flink."""
        for c in self._batched.values():
            if c.n:
                c.inner.inc(c.n)
                c.n = 0
        self._unflushed = 0
        self._flushed_at = time.monotonic()

    def counter(self, name: str):
        c = self._counters.get(name)
        if c is None:
            c = _Nothing()
            if self.group is not None:
                try:
                    c = self.group.counter(name)
                except Exception as exc:  # noqa: BLE001
                    log.warning("counter %s not registered: %s", name, exc)
            self._counters[name] = c
        return c

    def value(self, name: str) -> "SettableGauge":
        """A gauge this operator sets from its own thread (``.set(int)``).

        Never a callback gauge: in thread mode Flink evaluates a Python callback gauge on its
        metrics thread, calling into the embedded interpreter from a foreign thread, which
        crashed the TaskManager (SIGSEGV in libpython, seen with PyFlink 2.2.1). A settable
        gauge is read on the Java side only.
        """
        if self.group is not None:
            try:
                return SettableGauge(self.group.distribution(name))
            except Exception as exc:  # noqa: BLE001
                log.warning("gauge %s not registered: %s", name, exc)
        return SettableGauge(_Nothing())


class _BatchedCounter:
    __slots__ = ("owner", "inner", "n")

    def __init__(self, owner: OperatorMetrics, inner):
        self.owner, self.inner, self.n = owner, inner, 0

    def inc(self, n: int = 1) -> None:
        self.n += n
        owner = self.owner
        owner._unflushed += 1
        if owner._unflushed >= owner.FLUSH_EVERY or \
                time.monotonic() - owner._flushed_at >= owner.FLUSH_SECONDS:
            owner.flush()


class SettableGauge:
    """A whole-number gauge set by the operator (Flink's Python ``distribution`` metric holds
    the last value it was given)."""

    def __init__(self, inner):
        self._inner = inner
        self._last = None

    def set(self, value) -> None:
        value = int(round(value))
        if value != self._last:  # one JVM call only when the value changes
            self._last = value
            self._inner.update(value)


class LatencyWindow:
    """Percentile gauges ``<name>_p50``, ``_p95``, ``_p99`` over the last ``size``
    observations (milliseconds in), refreshed every ``every`` observations on the operator's
    own thread: a histogram view any reporter can show. ``scale`` picks the unit of the
    whole-number gauges: 1 for milliseconds, 1000 for microseconds."""

    def __init__(self, metrics: OperatorMetrics, name: str, size: int = 1024,
                 scale: int = 1, every: int = 64):
        import numpy as np

        self._np = np
        self._values = np.zeros(size, dtype=np.float64)
        self._n = 0
        self._scale = scale
        self._every = every
        self._gauges = {q: metrics.value(f"{name}_p{q}") for q in (50, 95, 99)}

    def update(self, value_ms: float) -> None:
        self._values[self._n % self._values.shape[0]] = value_ms
        self._n += 1
        if self._n <= 8 or self._n % self._every == 0:
            for q, gauge in self._gauges.items():
                gauge.set(self.percentile(q) * self._scale)

    def percentile(self, q: float) -> float:
        n = min(self._n, self._values.shape[0])
        return float(self._np.percentile(self._values[:n], q)) if n else 0.0
