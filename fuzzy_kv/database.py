"""A fuzzy key-value store: attention over stored key vectors, decoded back into words.

The classic recipe: weights = softmax(beta * (q . k_i)) over the stored keys, output = the
weighted sum of the stored value vectors, answers = the vocabulary words nearest to the output
by cosine similarity. A query that is no key lands near the values of the keys it resembles,
and the next-best answers are often words that are in no record.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from functools import lru_cache
from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from fuzzy_kv import decode
from fuzzy_kv.embeddings import Embeddings
from kernels import matmul_precision
from kernels.attention import SIMILARITIES, softmax_attend

DEMO_RECORDS = {"one": "number", "cat": "animal", "dog": "animal", "ball": "toy", "sphere": "shape", "male": "gender"}


@dataclass(frozen=True)
class Answer:
    word: str
    score: float   # cosine similarity between the attention output and the word's vector
    stored: bool   # whether the word is one of the stored values


@dataclass(frozen=True)
class Explanation:
    query: str
    weights: dict[str, float]   # attention weight on every stored key
    answers: list[Answer]


@lru_cache(maxsize=1)
def _glove() -> Embeddings:
    return Embeddings.glove()


class Database:
    """records: {key: value} strings (multi-word keys or values use the mean of their words).

    similarity: "dot" (default), "scaled_dot" or "cosine"; beta: inverse temperature > 0;
    exclude_query: never answer with the query word itself; values_only: answer only with
    stored values (an ordinary fuzzy dictionary, which never hallucinates)."""

    def __init__(self, records: Mapping[str, str], *, embeddings: Embeddings | None = None, similarity: str = "dot",
                 beta: float = 1.0, exclude_query: bool = False, values_only: bool = False):
        if not isinstance(records, Mapping) or not records:
            raise ValueError("records must be a non-empty mapping of key strings to value strings")
        for key, value in records.items():
            if not isinstance(key, str) or not isinstance(value, str):
                raise ValueError(f"record {key!r}: {value!r}: keys and values must both be strings")
            if not key.strip() or not value.strip():
                raise ValueError(f"record {key!r}: {value!r}: keys and values must not be empty")
        if similarity not in SIMILARITIES:
            raise ValueError(f"unknown similarity {similarity!r}; use one of {', '.join(SIMILARITIES)}")
        if isinstance(beta, bool) or not isinstance(beta, numbers.Real) or not math.isfinite(beta) or beta <= 0:
            raise ValueError(f"beta must be a finite number > 0, got {beta!r}")
        self.records = dict(records)
        self.embeddings = embeddings if embeddings is not None else _glove()
        self.similarity = similarity
        self.beta = float(beta)
        self.exclude_query = exclude_query
        self.values_only = values_only
        emb = self.embeddings
        self._key_names = list(self.records)
        self._keys = jnp.asarray(np.stack([emb.phrase(k, where="record key") for k in self._key_names]))
        self._values = jnp.asarray(np.stack([emb.phrase(v, where="record value") for v in self.records.values()]))
        self._stored = set(self.records.values())
        if values_only:
            self._targets = sorted(self._stored)
            unit = np.stack([emb.phrase(v) for v in self._targets])
            unit = unit / np.maximum(np.linalg.norm(unit, axis=1, keepdims=True), np.finfo(np.float32).tiny)
            self._target_index = {w: i for i, w in enumerate(self._targets)}
        else:
            self._targets = emb.words
            unit = None
            self._target_index = emb.index
        self._blocks = decode.pad_vocabulary(unit) if unit is not None else _vocab_blocks(emb)

    # ------------------------------------------------------------------------------- queries

    def query(self, word: str, k: int = 5) -> list[str]:
        """The k words nearest to the attention output for ``word``, best first."""
        return [a.word for a in self.answers([word], k)[0]]

    def query_many(self, words: Sequence[str], k: int = 5) -> list[list[str]]:
        """``query`` for many words in one batched, jit-compiled call."""
        return [[a.word for a in row] for row in self.answers(words, k)]

    def explain(self, word: str, k: int = 5) -> Explanation:
        """The attention weight on every stored key and the scored answers: why an answer came out."""
        return self.explain_many([word], k)[0]

    def explain_many(self, words: Sequence[str], k: int = 5) -> list[Explanation]:
        """``explain`` for many words, with one attention and one decoding call for all of them."""
        answers, weights = self._answer(words, k)
        return [Explanation(w, dict(zip(self._key_names, row.tolist())), a)
                for w, a, row in zip(words, answers, np.asarray(weights, np.float64))]

    def answers(self, words: Sequence[str], k: int = 5) -> list[list[Answer]]:
        """Scored answers (word, cosine score, stored?) for each query word."""
        return self._answer(words, k)[0]

    def _answer(self, words: Sequence[str], k: int):
        if isinstance(words, str):
            raise ValueError("answers() takes a list of words; use query() for one word")
        try:
            words = list(words)
        except TypeError:
            raise TypeError(f"words must be a list of strings, got {type(words).__name__}") from None
        for word in words:
            if not isinstance(word, str):
                raise TypeError(f"a query is a word or phrase (str), got {word!r} ({type(word).__name__})")
        if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1:
            raise ValueError(f"k must be a whole number >= 1, got {k!r}")
        k = int(k)
        # With exclude_query, a query that is itself a candidate leaves one candidate fewer.
        excluded = self.exclude_query and any(w in self._target_index for w in words)
        candidates = len(self._targets) - excluded
        if k > candidates:
            raise ValueError(f"k = {k} is more answers than the {candidates} words there are to answer with"
                             f"{' (the query itself is excluded)' if excluded else ''}; use k <= {candidates}")
        if not words:
            return [], np.zeros((0, len(self._key_names)))
        exclude = [self._target_index.get(w, -1) if self.exclude_query else -1 for w in words]
        # True float32 products unless the user chose a precision: JAX's default (TF32 on
        # recent NVIDIA GPUs) can reorder near-tied answers (kernels.matmul_precision).
        with jax.default_matmul_precision(matmul_precision()):
            outputs, weights = self._attend(words)
            scores, ids = decode.top_k_cosine(outputs, self._blocks, k, np.array(exclude, np.int32))
        scores, ids = np.asarray(scores), np.asarray(ids)
        answers = [[Answer(self._targets[i], float(s), self._targets[i] in self._stored) for s, i in zip(row_s, row_i)]
                   for row_s, row_i in zip(scores, ids)]
        return answers, weights

    def _attend(self, words: Sequence[str]):
        queries = jnp.asarray(np.stack([self.embeddings.phrase(w) for w in words]))
        return softmax_attend(queries, self._keys, self._values, self.beta, kind=self.similarity)


@lru_cache(maxsize=1)  # one table at a time: 80 MB for GloVe 6B 50-d
def _vocab_blocks(emb: Embeddings):
    """The padded unit vocabulary on the device, made once per table and shared by every store."""
    return decode.pad_vocabulary(emb.unit)
