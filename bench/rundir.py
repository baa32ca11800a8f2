"""Reading a run directory in one call: its results, manifest, capacity searches, hallucination
curve and figures. The figures and the report read runs through here and nothing else."""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import pandas as pd
import pyarrow.parquet as pq

from bench import store


class Run(NamedTuple):
    """A run as the figures and the report see it. results: one row per cell x seed (merged,
    or the parts of an unfinished run); capacity, hallucination: None when the run has none."""

    path: Path
    manifest: dict[str, Any]
    results: pd.DataFrame
    capacity: pd.DataFrame | None
    hallucination: pd.DataFrame | None

    @property
    def figures_dir(self) -> Path:
        return self.path / store.FIGURES

    def figures(self) -> list[Path]:
        """The PNG figures drawn so far, by name."""
        return sorted(self.figures_dir.glob("*.png"))


def read(run_dir: Path) -> Run:
    """Everything a run wrote; StoreError (naming the path and the fix) when it is no run."""
    manifest = store.read_manifest(run_dir)
    return Run(run_dir, manifest, store.load_results(run_dir), store.load_capacity(run_dir),
               _optional(run_dir / store.HALLUCINATION))


def _optional(path: Path) -> pd.DataFrame | None:
    return pq.read_table(path).to_pandas() if path.is_file() else None
