"""The harness of the suite: specs, the sweep driver, the result store, theory, plots, report."""

from bench.spec import KERNELS, PRESETS, Cell, SpecError, SweepSpec
from bench.store import SCHEMA, StoreError, load_results

__all__ = ["Cell", "KERNELS", "PRESETS", "SCHEMA", "SpecError", "StoreError", "SweepSpec", "load_results"]
