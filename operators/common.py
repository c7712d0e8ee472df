"""What every Flink function of the topology shares: the clock, the runtime-mode log line,
source timestamps, and the state TTL of a user's keyed state."""

from __future__ import annotations

import logging
import os
import time

from pyflink.datastream.functions import RuntimeContext

log = logging.getLogger("streamrank.operators")


def python_runtime_mode() -> str:
    """``thread`` when this Python code runs embedded in the JVM (PEMJA), else ``process``.

    Flink falls back to process mode silently where thread mode is unsupported, so operators
    log what really ran.
    """
    try:
        exe = os.path.basename(os.readlink("/proc/self/exe"))
    except OSError:
        return "unknown"
    return "thread" if exe.startswith("java") else "process"


def now_ms() -> int:
    return int(time.time() * 1000)


def source_ts(value) -> int:
    """Kafka record timestamp from the source row (an Instant/datetime or epoch ms)."""
    if value is None:
        return 0
    if isinstance(value, (int, float)):
        return int(value)
    try:
        return int(value.timestamp() * 1000)
    except AttributeError:
        return 0


class LoggedOpen:
    def _log_open(self, ctx: RuntimeContext, what: str) -> None:
        # Thread mode's RuntimeContext lacks some getters (PyFlink 2.2), so ask defensively.
        try:
            subtask = ctx.get_task_name_with_subtasks()
        except AttributeError:
            subtask = what
        log.info("%s running in python %s mode (pid %d)", subtask, python_runtime_mode(),
                 os.getpid())


def user_ttl(hours: float):
    """State TTL of a user's keyed state: refreshed by every write, never returned expired."""
    from pyflink.common import Time
    from pyflink.datastream.state import StateTtlConfig

    return (StateTtlConfig.new_builder(Time.milliseconds(int(hours * 3_600_000)))
            .set_update_type(StateTtlConfig.UpdateType.OnCreateAndWrite)
            .set_state_visibility(StateTtlConfig.StateVisibility.NeverReturnExpired)
            .build())
