"""Pure JAX kernels of the associative-memory suite: arrays in, arrays out.

The public names below load their modules on first use (PEP 562), so ``kernels.names``, the
JAX-free list of every memory and knob, can be read without importing JAX.
"""

import importlib

_EXPORTS = {
    "kernels.attention": ("ALL_SIMILARITIES", "SEPARATION_REGISTRY", "SEPARATIONS", "SIMILARITIES",
                          "SIMILARITY_REGISTRY", "Attended", "recall", "softmax_attend"),
    "kernels.attention_cell": ("AttentionFamily", "AttentionKnobs", "attention_args", "attention_cell_program",
                               "attention_flops", "run_attention_cell"),
    "kernels.matrix": ("METHOD_NAMES", "METHODS", "RULES", "Params", "default_method", "delta", "hebbian", "pinv",
                       "ridge"),
    "kernels.matrix_cell": ("MatrixFamily", "matrix_args", "matrix_cell_program", "matrix_flops", "run_matrix_cell"),
    "kernels.metrics": ("CellMetrics", "baseline_program"),
    "kernels.streams": ("BASELINE_PAIRS", "DISTRIBUTIONS", "TABLE", "default_chunk", "entry_scale", "open_stream",
                        "stream_key"),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_MODULE_OF)


def __getattr__(name: str):
    if name in _MODULE_OF:
        value = getattr(importlib.import_module(_MODULE_OF[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'kernels' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
