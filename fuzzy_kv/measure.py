"""Measuring the fuzzy store: how often does its top answer name a value that was never stored?

Records map words to their category; held-out query words (in no record) belong to the same
categories. For each beta, every held-out word is queried once (one batched call) and its top-1
answer is classed as the right stored category, another stored value, or a word in no record
(a hallucination).
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from fuzzy_kv.database import Database
from fuzzy_kv.embeddings import Embeddings

CATEGORY_RECORDS = {
    "cat": "animal", "dog": "animal", "horse": "animal",
    "apple": "fruit", "banana": "fruit", "cherry": "fruit",
    "red": "color", "blue": "color", "green": "color",
    "paris": "city", "london": "city", "tokyo": "city",
    "one": "number", "three": "number", "five": "number",
    "piano": "instrument", "guitar": "instrument", "flute": "instrument",
    "football": "sport", "tennis": "sport", "golf": "sport",
    "sphere": "shape", "square": "shape", "triangle": "shape",
}
# Held-out words (no record has them as a key) with the category they belong to.
HELD_OUT = {
    "tiger": "animal", "wolf": "animal", "rabbit": "animal", "kitten": "animal",
    "pear": "fruit", "grape": "fruit", "mango": "fruit", "peach": "fruit",
    "yellow": "color", "purple": "color", "orange": "color", "pink": "color",
    "berlin": "city", "rome": "city", "madrid": "city", "moscow": "city",
    "seven": "number", "nine": "number", "eight": "number", "four": "number",
    "violin": "instrument", "drum": "instrument", "cello": "instrument", "trumpet": "instrument",
    "hockey": "sport", "rugby": "sport", "baseball": "sport", "cricket": "sport",
    "cube": "shape", "rectangle": "shape", "circle": "shape", "hexagon": "shape",
}
BETAS = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0)


def hallucination_curve(embeddings: Embeddings, records: Mapping[str, str] = CATEGORY_RECORDS,
                        held_out: Mapping[str, str] = HELD_OUT, betas: Sequence[float] = BETAS,
                        similarity: str = "dot") -> pd.DataFrame:
    """One row per beta: the fractions of held-out queries whose top-1 answer is the right
    category, another stored value, or a word that is in no record (hallucinated)."""
    words = list(held_out)
    rows = []
    for beta in betas:
        db = Database(records, embeddings=embeddings, similarity=similarity, beta=beta)
        top = [row[0] for row in db.answers(words, 1)]
        right = np.mean([a.word == held_out[w] for w, a in zip(words, top)])
        stored = np.mean([a.stored for a in top])
        rows.append({"beta": float(beta), "similarity": similarity, "queries": len(words), "right": float(right),
                     "wrong_stored": float(stored - right), "hallucinated": float(1 - stored)})
    return pd.DataFrame(rows)
