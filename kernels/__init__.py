"""Pure JAX kernels of the associative-memory suite: arrays in, arrays out."""

from kernels.cell import BASELINE_PAIRS, CellMetrics, CellShape, cell_args, default_chunk, flops, run_cell
from kernels.matrix import METHOD_NAMES, METHODS, RULES, Params, default_method, delta, hebbian, pinv, recall, ridge
from kernels.patterns import DISTRIBUTIONS, entry_scale, sample, stream_key

__all__ = [
    "BASELINE_PAIRS", "CellMetrics", "CellShape", "cell_args", "DISTRIBUTIONS", "METHODS", "METHOD_NAMES", "Params",
    "RULES", "default_chunk", "default_method", "delta", "entry_scale", "flops", "hebbian", "pinv",
    "recall", "ridge", "run_cell", "sample", "stream_key",
]
