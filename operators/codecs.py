"""Byte layouts of the rankers' broadcast state: catalog entries and item statistics (the user
state's layout is in ``user_state.py``, the item branch's in ``item_stats.py``)."""

from __future__ import annotations

import struct

import numpy as np

_TITLE_LEN = struct.Struct("<I")
STATS = struct.Struct("<dd")  # log_pop, count


def pack_catalog_entry(title: str, vector: bytes) -> bytes:
    t = title.encode("utf-8")
    return _TITLE_LEN.pack(len(t)) + t + bytes(vector)


def unpack_catalog_entry(data: bytes) -> tuple[str, np.ndarray]:
    (n,) = _TITLE_LEN.unpack_from(data, 0)
    title = bytes(data[4:4 + n]).decode("utf-8")
    return title, np.frombuffer(bytes(data[4 + n:]), dtype=np.float32)
