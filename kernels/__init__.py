"""Pure JAX kernels of the associative-memory suite: arrays in, arrays out."""

from kernels.attention import (ALL_SIMILARITIES, SEPARATION_REGISTRY, SEPARATIONS, SIMILARITIES, SIMILARITY_REGISTRY,
                               Attended, recall, softmax_attend)
from kernels.attention_cell import (AttentionFamily, AttentionKnobs, attention_args, attention_cell_program, attention_flops,
                                    run_attention_cell)
from kernels.matrix import METHOD_NAMES, METHODS, RULES, Params, default_method, delta, hebbian, pinv, ridge
from kernels.matrix_cell import MatrixFamily, matrix_args, matrix_cell_program, matrix_flops, run_matrix_cell
from kernels.metrics import CellMetrics
from kernels.streams import BASELINE_PAIRS, DISTRIBUTIONS, TABLE, default_chunk, entry_scale, open_stream, stream_key

__all__ = [
    "ALL_SIMILARITIES", "Attended", "AttentionFamily", "AttentionKnobs", "BASELINE_PAIRS", "CellMetrics",
    "DISTRIBUTIONS", "METHODS", "METHOD_NAMES", "MatrixFamily", "Params", "RULES", "SEPARATIONS",
    "SEPARATION_REGISTRY", "SIMILARITIES", "SIMILARITY_REGISTRY", "TABLE", "attention_args", "attention_cell_program", "attention_flops",
    "default_chunk", "default_method", "delta", "entry_scale", "hebbian", "matrix_args", "matrix_cell_program", "matrix_flops",
    "open_stream", "pinv", "recall", "ridge", "run_attention_cell", "run_matrix_cell", "softmax_attend",
    "stream_key",
]
