"""The fuzzy store's hallucination curve for a run: measured with fuzzy_kv over GloVe and kept
as RUN_DIR/hallucination.parquet for the figures and the report."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from bench import store

FILE = "hallucination.parquet"


def measure(run_dir: Path) -> Path:
    from fuzzy_kv.embeddings import Embeddings
    from fuzzy_kv.measure import hallucination_curve

    table = pa.Table.from_pandas(hallucination_curve(Embeddings.glove()), preserve_index=False)
    return store.atomic_write_parquet(run_dir / FILE, table)


def load(run_dir: Path):
    path = run_dir / FILE
    return pq.read_table(path).to_pandas() if path.is_file() else None
