"""Pure JAX kernels of the associative-memory suite: arrays in, arrays out.

The public names below load their modules on first use (PEP 562), so ``kernels.names``, the
JAX-free list of every memory and knob, can be read without importing JAX.
"""

import importlib

# Matmul precision the suite's programs are traced under unless the user chose one
# (JAX_DEFAULT_MATMUL_PRECISION). JAX's own default computes float32 products in TF32 on NVIDIA
# GPUs since Ampere and in one bfloat16 pass on TPUs: on an H100 that put a 2048 x 2048 product
# 2.9e-4 (relative, Frobenius) from float64 against 8.1e-7 at "highest" (README, "On a GPU").
# CPUs compute float32 either way.
MATMUL_PRECISION = "highest"


def matmul_precision() -> str:
    """The precision to trace at: the user's (JAX_DEFAULT_MATMUL_PRECISION, or JAX's config set
    any other way), else MATMUL_PRECISION. Read when a program is traced, so JAX loads then."""
    import jax

    return jax.config.jax_default_matmul_precision or MATMUL_PRECISION

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
