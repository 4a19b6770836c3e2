"""Statistical spam model: hashed binary token features and logistic regression.

Chosen over a scikit-learn pipeline because scoring one message at a time is
the agent's only mode: a dot product over a few hundred hashed indices costs
microseconds in plain Python, while a library call costs a fixed fraction of a
millisecond. Training is numpy only and deterministic (full-batch optimiser,
folds fixed by message hash), so `postwarden train` on the same manifest gives
the same artifact byte for byte.

Only fields a sender controls feed the model. Relay headers (Received,
Delivered-To, Return-Path, ...) and the corpus collectors' own headers
(X-Spam-*, X-Keywords, X-Status) would teach it the collection setup
instead of the mail.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import re
import zlib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from streams.mime_parser import ParsedMessage

FEATURE_VERSION = 1
DIM_BITS = 18
DIM = 1 << DIM_BITS
MASK = DIM - 1
ARTIFACT = "models/spam-model-v1.npz"

_WORD_RE = re.compile(r"[^\W_][\w'$%.-]{0,23}")
_ADDR_DOMAIN_RE = re.compile(r"@([\w.-]+)")
_HOST_RE = re.compile(r"^(?:https?://)?(?:[^@/?#]*@)?([^:/?#]+)", re.I)
MAX_BODY_CHARS = 20_000

# Headers whose presence says something about how the mail was written.
_PRESENCE_HEADERS = (
    "x-mailer", "user-agent", "x-priority", "x-msmail-priority", "importance", "reply-to",
    "list-unsubscribe", "list-id", "precedence", "in-reply-to", "references", "mime-version",
    "message-id", "organization", "cc", "content-transfer-encoding", "x-mimeole",
    "disposition-notification-to", "errors-to", "sender",
)

_hash_cache: dict[str, int] = {}
_HASH_CACHE_MAX = 500_000


def _index(token: str) -> int:
    idx = _hash_cache.get(token)
    if idx is None:
        idx = zlib.crc32(token.encode("utf-8", "surrogatepass")) & MASK
        if len(_hash_cache) < _HASH_CACHE_MAX:
            _hash_cache[token] = idx
    return idx


def url_host(url: str) -> str:
    m = _HOST_RE.match(url.strip())
    return m.group(1).lower().rstrip(".") if m else ""


def tokens(msg: ParsedMessage) -> set[str]:
    out: set[str] = set()
    body = msg.body_text[:MAX_BODY_CHARS].lower()
    out.update(_WORD_RE.findall(body))
    subject = msg.get("subject").lower()
    out.update("s:" + w for w in _WORD_RE.findall(subject))
    sender = msg.get("from").lower()
    out.update("f:" + w for w in _WORD_RE.findall(sender))
    for dom in _ADDR_DOMAIN_RE.findall(sender)[:1]:
        out.add("fd:" + dom)
        out.add("ft:" + dom.rpartition(".")[2])
    mailer = msg.get("x-mailer") or msg.get("user-agent")
    if mailer:
        out.update("xm:" + w for w in _WORD_RE.findall(mailer.lower())[:4])
    out.add("ct:" + msg.content_type)
    for part in msg.parts[:50]:
        out.add("pt:" + part.content_type)
        if part.charset:
            out.add("cs:" + part.charset.lower())
        if part.transfer_encoding:
            out.add("te:" + part.transfer_encoding[:20])
        if part.extension:
            out.add("ext:" + part.extension[:10])
    for name in _PRESENCE_HEADERS:
        out.add(("h:" if msg.has(name) else "nh:") + name)
    for url in msg.urls[:100]:
        host = url_host(url)
        if host:
            out.add("uh:" + ".".join(host.split(".")[-2:]))
    if msg.html and not msg.text.strip():
        out.add("x:html-only")
    out.add(f"x:urls-{min(len(msg.urls), 20).bit_length()}")
    out.add(f"x:size-{min(msg.raw_size, 1 << 22).bit_length()}")
    return out


def features(msg: ParsedMessage) -> list[int]:
    return sorted({_index(t) for t in tokens(msg)})


@dataclass(frozen=True)
class SpamModel:
    """Weights plus the metadata that says what they were trained on."""

    weights: np.ndarray
    bias: float
    meta: dict

    def __post_init__(self) -> None:
        # Plain-list lookups beat numpy fancy indexing for a few hundred indices.
        object.__setattr__(self, "_w", self.weights.astype(np.float64).tolist())

    def logit(self, feature_ids: list[int]) -> float:
        w = self._w  # type: ignore[attr-defined]
        return self.bias + sum(w[i] for i in feature_ids) * _scale(len(feature_ids))

    def save(self, path: Path) -> None:
        buf = io.BytesIO()
        np.savez_compressed(
            buf, weights=self.weights.astype(np.float32), bias=np.float64(self.bias),
            meta=np.frombuffer(json.dumps(self.meta, sort_keys=True).encode(), dtype=np.uint8),
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(buf.getvalue())

    @classmethod
    def load(cls, path: Path | None = None) -> SpamModel:
        if path is None:
            data = resources.files("streams").joinpath(ARTIFACT).read_bytes()
        else:
            data = Path(path).read_bytes()
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            meta = json.loads(bytes(npz["meta"]).decode())
            if meta.get("feature_version") != FEATURE_VERSION or meta.get("dim") != DIM:
                raise ValueError(
                    f"spam model artifact has feature_version={meta.get('feature_version')} "
                    f"dim={meta.get('dim')}, this code needs {FEATURE_VERSION}/{DIM}: retrain it")
            return cls(npz["weights"].astype(np.float32), float(npz["bias"]), meta)


def _scale(n: int) -> float:
    # Binary features scaled so long and short mails land on comparable logits.
    return 1.0 / math.sqrt(max(n, 1))


# --- training ---------------------------------------------------------------


@dataclass(frozen=True)
class Matrix:
    """Rows of binary hashed features in CSR form, pre-scaled."""

    indptr: np.ndarray
    indices: np.ndarray
    values: np.ndarray

    @classmethod
    def from_rows(cls, rows: list[list[int]]) -> Matrix:
        lengths = np.array([len(r) for r in rows], dtype=np.int64)
        indptr = np.concatenate([[0], np.cumsum(lengths)])
        indices = np.fromiter((i for r in rows for i in r), dtype=np.int64, count=int(indptr[-1]))
        values = np.repeat([_scale(len(r)) for r in rows], lengths)
        return cls(indptr, indices, values)

    @property
    def n(self) -> int:
        return len(self.indptr) - 1

    def take(self, rows: np.ndarray) -> Matrix:
        return Matrix.from_rows([self.indices[self.indptr[r]:self.indptr[r + 1]].tolist() for r in rows])

    def dot(self, w: np.ndarray) -> np.ndarray:
        prod = w[self.indices] * self.values
        sums = np.add.reduceat(prod, self.indptr[:-1]) if len(prod) else np.zeros(self.n)
        sums[np.diff(self.indptr) == 0] = 0.0
        return sums

    def tdot(self, r: np.ndarray) -> np.ndarray:
        per_entry = np.repeat(r, np.diff(self.indptr)) * self.values
        return np.bincount(self.indices, weights=per_entry, minlength=DIM)


def fit(x: Matrix, y: np.ndarray, offset: np.ndarray, l2: float, iterations: int) -> tuple[np.ndarray, float]:
    """L2-regularised logistic regression by full-batch Adam (deterministic).

    ``offset`` holds each message's rule contributions so the model learns
    what the rules do not already say. Classes are weighted equally.
    """
    pos = y.sum()
    sample_w = np.where(y > 0, 0.5 / max(pos, 1), 0.5 / max(len(y) - pos, 1))
    w = np.zeros(DIM)
    b = 0.0
    m_w = np.zeros(DIM)
    v_w = np.zeros(DIM)
    m_b = v_b = 0.0
    lr, beta1, beta2, eps = 0.05, 0.9, 0.999, 1e-8
    for t in range(1, iterations + 1):
        z = x.dot(w) + b + offset
        p = 1.0 / (1.0 + np.exp(-np.clip(z, -35, 35)))
        r = (p - y) * sample_w
        g_w = x.tdot(r) + l2 * w
        g_b = float(r.sum())
        m_w = beta1 * m_w + (1 - beta1) * g_w
        v_w = beta2 * v_w + (1 - beta2) * g_w * g_w
        m_b = beta1 * m_b + (1 - beta1) * g_b
        v_b = beta2 * v_b + (1 - beta2) * g_b * g_b
        c1, c2 = 1 - beta1 ** t, 1 - beta2 ** t
        w -= lr * (m_w / c1) / (np.sqrt(v_w / c2) + eps)
        b -= lr * (m_b / c1) / (math.sqrt(v_b / c2) + eps)
    return w, b


def fold_of(sha256: str, folds: int) -> int:
    return int(hashlib.sha256(b"fold:" + sha256.encode()).hexdigest()[:8], 16) % folds
