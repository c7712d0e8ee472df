"""The ranking settings the model needs (:class:`ModelParams`), resolved once from
``ranking.*`` in ``conf/streamrank.yaml``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Optional

import numpy as np

from recsys import fusion, ranking


@dataclass(frozen=True)
class ModelParams:
    """The ranking settings the model needs, resolved once (times in ms). No defaults of its
    own: they live in ``conf/streamrank.yaml`` (:meth:`defaults`)."""

    k: int
    event_weights: Mapping[str, float]
    rating_neutral: float
    rating_scale: float
    max_centroids: int
    centroid_open_threshold: float
    alpha: float
    half_life_ms: float
    popularity_half_life_ms: float
    freshness_weight: float
    freshness_half_life_ms: float
    history_size: int
    history_decay: float
    cooc_context_size: int
    fusion_weights: tuple
    learning_rate: float
    content_signal: bool
    l2: float
    mmr_lambda: float
    mmr_candidates: int
    max_seen: int
    max_pending: int
    cooc_positive_only: bool
    exact_max_items: int
    ann_candidates: int
    ann_nprobe: int
    popular_candidates: int
    reason_title_chars: int
    kernel_precision: str

    @classmethod
    def defaults(cls, **overrides) -> "ModelParams":
        """The configured defaults (``conf/streamrank.yaml``), with ``overrides``."""
        import dataclasses

        from contracts.config import default_settings

        return dataclasses.replace(cls.from_settings(default_settings().ranking), **overrides)

    @classmethod
    def from_settings(cls, r) -> "ModelParams":
        return cls(
            k=r.k, event_weights=dict(r.event_weights), rating_neutral=r.rating_neutral,
            rating_scale=r.rating_scale, max_centroids=r.max_centroids,
            centroid_open_threshold=r.centroid_open_threshold, alpha=r.alpha,
            half_life_ms=r.half_life_hours * ranking.MS_PER_HOUR,
            popularity_half_life_ms=r.popularity_half_life_hours * ranking.MS_PER_HOUR,
            freshness_weight=r.freshness_weight,
            freshness_half_life_ms=r.freshness_half_life_hours * ranking.MS_PER_HOUR,
            history_size=r.history_size, history_decay=r.history_decay,
            cooc_context_size=r.cooc_context_size,
            fusion_weights=tuple(float(r.fusion_weights[f]) for f in fusion.FEATURES),
            learning_rate=r.learning_rate, content_signal=r.content_signal, l2=r.l2,
            mmr_lambda=r.mmr_lambda,
            mmr_candidates=r.mmr_candidates, max_seen=r.max_seen, max_pending=r.max_pending,
            cooc_positive_only=r.cooc_positive_only, exact_max_items=r.exact_max_items,
            ann_candidates=r.ann_candidates, ann_nprobe=r.ann_nprobe,
            popular_candidates=r.popular_candidates, reason_title_chars=r.reason_title_chars,
            kernel_precision=r.kernel_precision)

    @property
    def prior(self) -> np.ndarray:
        return np.asarray(self.fusion_weights, dtype=np.float64)

    def weight(self, event_type: str, value: Optional[float]) -> float:
        return ranking.event_weight(event_type, value, self.event_weights,
                                    self.rating_neutral, self.rating_scale)

    def enters_history(self, weight: float) -> bool:
        """Whether an applied interaction becomes one of the user's recent items (the
        co-occurrence context and what reasons cite): positive feedback, and a neutral rating
        (the user consumed the item) unless ``cooc_positive_only``. Negative feedback (a skip,
        a dislike, a rating below ``rating_neutral``) never: it only excludes the item."""
        return weight > 0 or (weight == 0 and not self.cooc_positive_only)

    def counts_as_consumption(self, event_type: str, weight: float) -> bool:
        """Whether an interaction feeds the interaction counts and co-occurrence: positive
        feedback always; any rating too (the user consumed the item) unless
        ``cooc_positive_only``; explicit negatives (skip, dislike) never."""
        return weight > 0 or (event_type == "rating" and not self.cooc_positive_only)
