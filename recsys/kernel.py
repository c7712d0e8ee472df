"""The scoring kernel's arithmetic: one matrix product of many users' interest centroids
with the whole catalog, in bf16 where the CPU multiplies bf16 natively, else in fp32.

Chosen once per process (``ranking.kernel_precision``: ``auto``, ``bf16`` or ``fp32``) and
logged. ``auto`` picks bf16 when the CPU reports AMX or AVX-512 BF16 (``/proc/cpuinfo``
flags ``amx_bf16`` / ``avx512_bf16``) and torch is installed (found, not imported); there
oneDNN multiplies bf16 at 450-960 GFLOP/s per core against ~120 for fp32 (64 users x 4
centroids against 9,742 x 384 items: ~40 us per user in bf16, ~100-180 in fp32, measured on
2 cores). A bf16 cosine differs from fp32 by at most ~1e-3 (inputs rounded to 8 mantissa
bits, fp32 accumulation); ``tests/test_kernel.py`` reports how often that changes a top-k.

Without native bf16 (AVX2-only CPUs) bf16 would be emulated and slower than fp32, so
``auto`` takes fp32 there, and torch is never imported.

Inside a PyFlink 2.2 TaskManager (thread mode) the ranker's products run on a thread that
Python started (:func:`for_taskmanager`): a torch product called directly from the task
thread PyFlink runs Python on never returned in the full job (py-spy: stuck in ``linear``;
with one intra-op thread and with oneDNN held below AMX alike; re-checked with the bench,
which hung at its first window), while the same product on a Python thread returns, and
releases the GIL that every Python operator of the TaskManager shares while it runs. torch
is imported on that thread too, never on the ranker's task thread.
"""

from __future__ import annotations

import importlib.util
import logging
import threading
from typing import Any, Callable, Optional

import numpy as np

log = logging.getLogger("streamrank.kernel")

PRECISIONS = ("auto", "bf16", "fp32")


def cpu_has_native_bf16() -> bool:
    """Whether the CPU multiplies bf16 natively (AMX or AVX-512 BF16), from /proc/cpuinfo."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"amx_bf16", "avx512_bf16"})
    except OSError:
        pass
    return False


def resolve(precision: str) -> str:
    """``auto`` -> ``bf16`` or ``fp32`` for this CPU (see the module doc)."""
    if precision not in PRECISIONS:
        raise ValueError(f"ranking.kernel_precision must be one of {PRECISIONS}, "
                         f"not {precision!r}")
    if precision != "auto":
        return precision
    if not cpu_has_native_bf16():
        return "fp32"
    # Whether torch is installed, without importing it (see for_taskmanager: the first
    # product imports it, on the thread that runs the products).
    return "bf16" if importlib.util.find_spec("torch") is not None else "fp32"


_chosen: dict[str, str] = {}


def chosen(precision: str) -> str:
    """The precision the kernel uses for the configured ``precision``, resolved and logged
    once per process."""
    got = _chosen.get(precision)
    if got is None:
        got = _chosen[precision] = resolve(precision)
        log.info("ranking kernel: %s (ranking.kernel_precision=%s; native bf16: %s)", got,
                 precision, cpu_has_native_bf16())
    return got


def for_taskmanager(precision: str) -> str:
    """The precision the Flink ranker uses: the configured one, resolved and logged. In bf16
    every torch product of this process then runs on one Python thread of its own
    (:class:`_TorchThread`; see the module doc), started here, which imports torch at once:
    the task thread that calls this never loads torch itself. (An import of torch on a task
    thread, in the ranker's ``open``, hung a job start once, in ``dlopen`` of ``torch._C``
    with the interpreter's lock held.) Call it from the ranker's ``open``."""
    global _offload
    got = chosen(precision)
    if got == "bf16":
        _offload = True
        _kernel_thread()
    return got


_offload = False  # torch products go through _TorchThread (set by for_taskmanager)
_thread: Optional["_TorchThread"] = None
_thread_lock = threading.Lock()


class _TorchThread:
    """One Python-created thread that runs every torch product of the TaskManager's rankers.

    PyFlink's thread mode runs Python on the JVM's task threads (PEMJA). A torch product made
    there directly never returned in the full job; the same product made on a thread that
    Python itself started does. The caller waits, the GIL released (other Python operators
    run meanwhile), for each result: the hand-over costs ~60-130 us per product on this
    2-core VM, against ~0.5 ms saved on one user's content product (0.45 ms bf16 against
    1.0 ms fp32 for 4 centroids on 9,742 x 384, measured on one core).

    Two plain locks rather than a one-worker ``ThreadPoolExecutor``: its future waits on a
    condition, more hand-overs of the GIL per product (67 against 75 us alone), and with it
    the bench's interleaved stream ran 550 and 560 events/s against 611-667 with the locks
    (`streamrank bench --skip-embedding --scale-items 0 --latency-events 1500`, same host)."""

    def __init__(self):
        self._caller = threading.Lock()  # one product at a time (two subtasks may call)
        self._request, self._response = threading.Lock(), threading.Lock()
        self._request.acquire()
        self._response.acquire()
        self._fn = None
        self._result: tuple = (True, None)
        threading.Thread(target=self._serve, name="streamrank-kernel", daemon=True).start()

    def _serve(self) -> None:
        try:
            importlib.import_module("torch")  # here, before the first product (for_taskmanager)
        except ImportError:
            pass  # (the first product raises it)
        while True:
            self._request.acquire()
            try:
                self._result = (True, self._fn())
            except BaseException as e:  # handed to the caller
                self._result = (False, e)
            self._response.release()

    def start(self, fn) -> Callable[[], Any]:
        """Hand ``fn`` to the thread and return at once: the caller runs other Python while
        it runs (the GIL released by torch), then calls the returned function, exactly once,
        for the result (or the error). No other product can start in between."""
        self._caller.acquire()
        self._fn = fn
        self._request.release()

        def wait():
            try:
                self._response.acquire()
                ok, value = self._result
                self._fn = self._result = None
            finally:
                self._caller.release()
            if not ok:
                raise value
            return value

        return wait


def _kernel_thread() -> "_TorchThread":
    """The process's one kernel thread (two ranker subtasks of one TaskManager share it),
    started on first use."""
    global _thread
    with _thread_lock:
        if _thread is None:
            _thread = _TorchThread()
        return _thread


def _start(fn) -> Callable[[], Any]:
    """``fn()`` started on the kernel thread when products are offloaded (else made now):
    call the result, exactly once, for its value."""
    if _offload:
        return _kernel_thread().start(fn)
    value = fn()
    return lambda: value


def warm_up(cat, precision: str) -> None:
    """One product against ``cat`` in the precision ``precision`` resolves to, so that a timed
    run that follows does not pay the first one's costs: in bf16, importing torch (~1.1 s on
    the 2-core host) and the catalog's bf16 copy. For tools that time a replay (the bench's
    plain loop); the job is measured after warm-up events instead."""
    mat = cat.live_matrix()
    if mat.shape[0] == 0:
        return
    query = np.zeros((1, mat.shape[1]), np.float32)
    query[0, 0] = 1.0
    centroid_scores(query, cat, chosen(precision))


def centroid_scores(queries: np.ndarray, cat, precision: str, group: int = 1) -> np.ndarray:
    """:func:`start_centroid_scores`, waited for."""
    return start_centroid_scores(queries, cat, precision, group)()


def start_centroid_scores(queries: np.ndarray, cat, precision: str,
                          group: int = 1) -> Callable[[], np.ndarray]:
    """Start the product below and return a function to call, exactly once, for its result.
    In bf16 in a TaskManager the product runs on the kernel thread with the GIL released, so
    the caller can compute the rest of a window's ranking (co-occurrence, trends) meanwhile,
    on the other core; elsewhere it is made before this returns.

    The best of each run of ``group`` consecutive query rows against every catalog row:
    ``(queries @ catalog.T)`` maximised over each group ([q / group, n] float32,
    C-contiguous), for unit query rows, in ``precision`` (``bf16`` or ``fp32``). The
    catalog's bf16 copy is kept on the catalog and rebuilt only when its vectors change.

    The product is made as catalog @ queries.T ([n, q]: the catalog streamed as the left
    operand, 1.0 ms against 1.4 ms for one user's 4 centroids on 9,742 x 384 in fp32, 0.39
    against 0.55 in bf16) and maximised over the groups in that layout, before one
    transposing copy: reducing the transposed product instead read it across its rows (19 ms
    for 64 users x 4 centroids against 4.6 ms now in bf16, 24 against 10 in fp32). The
    queries go in group-major order, so that the maximum runs over whole [n, users] blocks
    (bf16, 20 users x 4: 0.46 ms on top of the 0.54 ms product, against 1.07 for ``amax``
    over the last axis)."""
    mat = cat.live_matrix()
    queries = np.asarray(queries, dtype=np.float32)
    if group > 1:  # group-major: then each group member's scores are one [n, users] block
        queries = np.ascontiguousarray(
            queries.reshape(-1, group, queries.shape[1]).transpose(1, 0, 2)
        ).reshape(-1, queries.shape[1])
    if precision != "bf16":
        prod = (mat @ queries.T).reshape(mat.shape[0], group, -1)
        best = prod[:, 0]
        if group > 1:
            best = best.copy()
            for j in range(1, group):
                np.maximum(best, prod[:, j], out=best)
        result = np.ascontiguousarray(best.T)
        return lambda: result
    return _start(lambda: _bf16_product(queries, cat, mat, group))


def _bf16_product(queries: np.ndarray, cat, mat: np.ndarray, group: int) -> np.ndarray:
    import torch

    cached: Optional[tuple] = getattr(cat, "_bf16", None)
    stamp = (cat.vectors_version, cat.size)
    if cached is None or cached[0] != stamp:
        cached = (stamp, torch.from_numpy(np.ascontiguousarray(mat)).to(torch.bfloat16))
        cat._bf16 = cached
    q = torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32)).to(torch.bfloat16)
    # One thread: beside numpy's BLAS threads, which spin for a while after each call, two
    # torch threads made a one-user product 5x slower (3.1 ms vs 0.6 ms, measured in eval).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.inference_mode():
            prod = (cached[1] @ q.T).view(mat.shape[0], group, -1)  # [n, group, users]
            best = prod[:, 0]
            for j in range(1, group):  # 0.46 ms for 20 users x 4 against 1.07 for amax
                best = torch.maximum(best, prod[:, j])
            return best.T.float().contiguous().numpy()  # (bf16 -> fp32 is exact)
    finally:
        torch.set_num_threads(threads)
