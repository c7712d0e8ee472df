"""Score fusion with weights learned online from the feedback stream.

The final score of a candidate is ``w · f`` over a few signal features (content, co-occurrence,
popularity, trending). ``w`` starts from hand-set defaults and is then learned per event with
pairwise logistic SGD (BPR): the item the user engaged with should outscore the items that were
shown to them in their previous top-k and not chosen.
"""

from __future__ import annotations

import numpy as np

FEATURES = ("content", "cooc", "popularity", "trending")
F_CONTENT, F_COOC, F_POP, F_TREND = range(len(FEATURES))  # their columns


def pairwise_update(weights: np.ndarray, positive: np.ndarray, negatives: np.ndarray,
                    lr: float, l2: float, prior: np.ndarray | None = None) -> np.ndarray:
    """One BPR step: raise ``w·(positive - negative)`` for each shown-but-skipped negative.

    ``positive`` [F], ``negatives`` [n, F]. ``l2`` pulls the weights towards ``prior`` (the
    configured defaults) so a handful of events cannot wreck them. Returns new weights.
    """
    w = np.asarray(weights, dtype=np.float64).copy()
    if negatives.shape[0] == 0:
        return w
    diff = positive[None, :] - negatives  # [n, F]
    margin = diff @ w
    # the mean over the negatives (as np.mean divides the sum, without its overhead)
    grad = (diff * (1.0 / (1.0 + np.exp(margin)))[:, None]).sum(axis=0) / diff.shape[0]
    anchor = np.zeros_like(w) if prior is None else np.asarray(prior, dtype=np.float64)
    return w + lr * (grad - l2 * (w - anchor))


def fuse(features: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Scores ``features @ weights`` for a [n, F] feature matrix."""
    return features @ np.asarray(weights, dtype=features.dtype)
