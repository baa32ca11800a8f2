"""The fuzzy store's hallucination curve for a run: measured with fuzzy_kv over GloVe and kept
as RUN_DIR/hallucination.parquet for the figures and the report (read back by bench.rundir)."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from bench import store


def measure(run_dir: Path) -> Path:
    from fuzzy_kv.embeddings import Embeddings
    from fuzzy_kv.measure import hallucination_curve

    table = pa.Table.from_pandas(hallucination_curve(Embeddings.glove()), preserve_index=False)
    return store.atomic_write_parquet(run_dir / store.HALLUCINATION, table)
