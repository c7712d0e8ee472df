"""A short reason for each ranked item, from the signal that contributed most to its score
("similar to X", "often liked after Y", "popular", "trending now")."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from recsys.catalog import CatalogIndex
from recsys.fusion import F_CONTENT, F_COOC, F_TREND
from recsys.params import ModelParams
from recsys.user_state import UserState


def explain_rows(state: UserState, cat: CatalogIndex, p: ModelParams, rows: Sequence[int],
                 feats: np.ndarray, w: np.ndarray, pieces) -> list[str]:
    """A short reason per ranked row, from the signal that contributed most to its score.
    ``feats``: the rows' feature vectors, in the order of ``rows``. ``pieces``: the
    co-occurrence contributions (``scoring.CoocPieces``), or None."""
    best = np.argmax(feats * w, axis=1).tolist() if len(feats) else []
    # For the rows explained by co-occurrence: the history item that contributed most (the
    # first one on ties).
    by_cooc = [r for r, b in zip(rows, best) if b == F_COOC]
    cooc_from = (_cooc_sources(cat, by_cooc, pieces) if by_cooc and pieces is not None
                 and pieces.items else {})
    hist_rows = _live_rows(cat, state.history) if F_CONTENT in best else []
    by_content = [r for r, b in zip(rows, best) if b == F_CONTENT] if hist_rows else []
    similar: dict[int, int] = {}
    if by_content:  # each such row's most similar recent item, from one product
        mat = cat.live_matrix()
        sims = mat[by_content] @ mat[hist_rows].T
        similar = dict(zip(by_content, np.argmax(sims, axis=1).tolist()))
    out = []
    for r, b in zip(rows, best):
        reason = "trending now" if b == F_TREND else "popular"
        if b == F_CONTENT and hist_rows:
            reason = "similar to " + cite(cat.titles[hist_rows[similar[r]]],
                                          p.reason_title_chars)
        elif b == F_CONTENT:
            reason = "matches your interests"
        elif b == F_COOC:
            x = cooc_from.get(r)
            if x is not None and x in cat.row and not cat.is_deleted(x):
                reason = "often liked after " + cite(cat.titles[cat.row[x]],
                                                     p.reason_title_chars)
            else:
                reason = "often liked together with your items"
        out.append(reason)
    return out


def _live_rows(cat: CatalogIndex, item_ids: Sequence[str]) -> list[int]:
    """The catalog rows of those items that are in the catalog and not deleted, in order."""
    rows = [r for r in map(cat.row.get, item_ids) if r is not None]
    return [r for r, gone in zip(rows, cat.deleted[rows].tolist()) if not gone] if rows else []


def _cooc_sources(cat: CatalogIndex, by_cooc: list[int], pieces) -> dict[int, str]:
    """For each row of ``by_cooc``, the recent item whose part in its score is the largest
    (the first in ``pieces``' order on ties; none without a positive part), as array
    operations over every recent item's neighbours at once."""
    slot = np.full(cat.size, -1, dtype=np.int64)
    slot[by_cooc] = np.arange(len(by_cooc))
    hit = slot[pieces.rows]
    at = np.flatnonzero(hit >= 0)
    parts = pieces.parts[at]
    at, parts = at[parts > 0], parts[parts > 0]
    if not at.size:
        return {}
    j = hit[at]
    order = np.lexsort((at, -parts, j))  # by row, then largest part, then first position
    first = at[order[np.r_[True, j[order][1:] != j[order][:-1]]]]
    # the recent item each chosen entry belongs to: entries are concatenated item by item
    source = np.searchsorted(np.cumsum(pieces.sizes), first, side="right")
    return {by_cooc[jj]: pieces.items[s] for jj, s in zip(hit[first].tolist(),
                                                          source.tolist())}


def cite(title: str, max_chars: int) -> str:
    """A title as cited in a reason: at most ``max_chars`` characters (an ellipsis marks a
    cut), so a ranking's size does not depend on the catalog's titles."""
    return title if len(title) <= max_chars else title[: max(0, max_chars - 1)] + "\u2026"
