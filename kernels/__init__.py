"""Pure JAX kernels of the associative-memory suite: arrays in, arrays out."""

from kernels.attention import ALL_SIMILARITIES, SEPARATIONS, SIMILARITIES, Attended, recall, softmax_attend
from kernels.attention_cell import AttentionKnobs, AttentionShape, attention_args, attention_flops, run_attention_cell
from kernels.cell import TABLE, BASELINE_PAIRS, CellMetrics, CellShape, cell_args, default_chunk, flops, run_cell
from kernels.matrix import METHOD_NAMES, METHODS, RULES, Params, default_method, delta, hebbian, pinv, ridge
from kernels.patterns import DISTRIBUTIONS, entry_scale, sample, stream_key

__all__ = [
    "ALL_SIMILARITIES", "Attended", "AttentionKnobs", "AttentionShape", "attention_args", "attention_flops",
    "run_attention_cell", "BASELINE_PAIRS", "SEPARATIONS", "recall", "CellMetrics", "CellShape", "DISTRIBUTIONS", "METHODS", "METHOD_NAMES", "Params",
    "RULES", "SIMILARITIES", "TABLE", "cell_args", "default_chunk", "default_method", "delta", "entry_scale", "flops",
    "hebbian", "pinv", "ridge", "run_cell", "sample", "softmax_attend", "stream_key",
]
