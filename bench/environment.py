"""Where and how a run ran: JAX settings the suite relies on, versions, device, git, and the
matmul rate that achieved FLOP rates are compared against."""

from __future__ import annotations

import os
import platform
import socket
import subprocess
import time
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

REPO = Path(__file__).resolve().parent.parent


def configure_jax() -> None:
    """Settings every sweep runs under, applied before any JAX computation.

    x64 makes float64 available to the least-squares solves (arrays stay float32 unless a
    kernel asks). The pair streams draw from kernels.philox, whatever the threefry setting;
    the remaining threefry draws (keys of streams, GloVe permutations, nested trees) use the
    non-partitionable threefry, faster on CPU, whose numbers do not depend on the device count
    either, because each seed's stream lives on one device. Matmuls run at
    kernels.MATMUL_PRECISION (true float32) unless JAX_DEFAULT_MATMUL_PRECISION chose another:
    the manifest records which."""
    from kernels import matmul_precision

    _add_xla_flags(GPU_XLA_FLAGS)
    jax.config.update("jax_enable_x64", True)
    jax.config.update("jax_default_matmul_precision", matmul_precision())
    jax.config.update("jax_threefry_partitionable", False)
    limit_lapack_threads()


# XLA:GPU compiles each matmul of a program through Triton and autotunes its tiles unless told
# not to, and at true float32 precision that choice lands on cuBLAS anyway. On an H100 (jax
# 0.11.2) the classic grid's five families compiled in 85 s with it and 20 s without, ran in
# 1.63 and 1.58 s, and the run's own matmul measurement (2048^2) gave 32.7 and 34.2 TFLOP/s
# (README, "On a GPU"). XLA:CPU ignores the flag. A user's own setting of it in XLA_FLAGS wins.
GPU_XLA_FLAGS = ("--xla_gpu_enable_triton_gemm=false",)


def _add_xla_flags(flags: tuple[str, ...]) -> None:
    """Append ``flags`` to XLA_FLAGS where the user's XLA_FLAGS does not name them; XLA reads
    them when the backend starts (the first JAX computation), so this runs before it."""
    current = os.environ.get("XLA_FLAGS", "")
    named = {token.split("=")[0] for token in current.split()}
    missing = [f for f in flags if f.split("=")[0] not in named]
    if missing:
        os.environ["XLA_FLAGS"] = " ".join([current, *missing]).strip()


# Threads of each LAPACK call inside a compiled program (see limit_lapack_threads).
LAPACK_THREADS = 1


@cache
def limit_lapack_threads(threads: int = LAPACK_THREADS) -> int | None:
    """Give the BLAS behind the LAPACK calls of compiled programs ``threads`` threads; returns
    lapack_threads() after it.

    XLA:CPU runs Cholesky, triangular solves, eigh, SVD and QR as LAPACK calls that jaxlib takes
    from scipy.linalg.cython_lapack (SciPy's own OpenBLAS in a wheel install), from inside XLA's
    thread pool, which already runs independent work side by side. There, OpenBLAS's worker
    threads (one per core) spin beside XLA's: on 2 cores a pinv cell at d = 1024 with n = 8 took
    104-133 ms instead of 73-105 ms with one thread (fastest of 8 runs, three processes each),
    though its float64 Cholesky (128 rows) takes 0.2 ms alone (docs/performance-log.md: "LAPACK on
    one thread"). NumPy's BLAS (its own library in a wheel install) is left as it is; so is a
    BLAS that SciPy shares with NumPy (conda, a system BLAS: limiting it would change NumPy's
    too), and the suite then runs as before. A process calls this once (cached)."""
    blas = _scipy_blas()
    if blas is not None:
        blas.limit(limits=threads)
    return lapack_threads()


def lapack_threads() -> int | None:
    """Threads of the BLAS behind the compiled programs' LAPACK calls; None where SciPy has no
    BLAS of its own (one shared with NumPy is not told apart)."""
    blas = _scipy_blas()
    return None if blas is None else min(lib["num_threads"] for lib in blas.info())


def _scipy_blas():
    """A threadpoolctl controller of SciPy's own BLAS libraries, or None where it has none."""
    import scipy
    import scipy.linalg.cython_lapack  # noqa: F401  (loads SciPy's BLAS, as jaxlib's LAPACK does)
    from threadpoolctl import ThreadpoolController

    home = Path(scipy.__file__).resolve().parent
    own = (home, home.with_name(home.name + ".libs"))  # the package, and a wheel's bundled libraries
    controller = ThreadpoolController()  # after the import: it sees the libraries loaded by now
    paths = [lib["filepath"] for lib in controller.info() if lib["user_api"] == "blas"
             and any(Path(lib["filepath"]).resolve().is_relative_to(place) for place in own)]
    return controller.select(filepath=paths) if paths else None


def enable_compile_cache(path: Path) -> None:
    """JAX's persistent compilation cache: a second run of the same families loads its
    programs instead of compiling them (compile_s then measures the load)."""
    path.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def describe() -> dict[str, Any]:
    devices = jax.devices()
    return {
        "versions": {name: _version(name) for name in ("jax", "jaxlib", "numpy", "pyarrow", "pandas", "matplotlib")},
        "python": platform.python_version(),
        "backend": jax.default_backend(),
        "device_kind": devices[0].device_kind,
        "device_count": len(devices),
        "process_count": jax.process_count(),  # > 1 in a multi-process run (bench.cluster)
        "local_device_count": jax.local_device_count(),
        "matmul_precision": str(jax.config.jax_default_matmul_precision or "default"),
        "x64": bool(jax.config.jax_enable_x64),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "threefry_partitionable": bool(jax.config.jax_threefry_partitionable),
        "lapack_threads": lapack_threads(),
        "compile_cache": jax.config.jax_compilation_cache_dir,
        "host": socket.gethostname(),
        "platform": platform.platform(),
        **_git(),
    }


def device_memory_bytes() -> int | None:
    """Memory one device can hand a computation, or None when unknown."""
    device = jax.local_devices()[0]
    try:
        stats = device.memory_stats()
    except Exception:  # not every backend reports
        stats = None
    if stats and "bytes_limit" in stats:
        return int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))
    if device.platform == "cpu" and hasattr(os, "sysconf"):
        try:
            return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (ValueError, OSError):
            return None
    return None


def matmul_gflops(dtype: str = "float32", size: int = 2048, repeats: int = 5) -> float:
    """Achieved GFLOP/s of a square matmul on the default device, best of ``repeats``."""
    a = jnp.asarray(np.random.default_rng(0).standard_normal((size, size)), dtype)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    best = np.inf
    for _ in range(repeats):
        start = time.perf_counter()
        f(a).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


# A device whose float64 matmul runs below this fraction of its float32 rate (consumer GPUs:
# 1/32 to 1/64) solves least squares by the float32 QR (qr32) instead of float64 Gram sums.
# Data-centre GPUs (A100, H100: about 1/8 or more against their TF32 rate) and CPUs (1/2 to 1/4)
# keep gram64.
SLOW_FLOAT64 = 1 / 16


def auto_method(float32_gflops: float | None = None, *, backend: str | None = None,
                x64: bool | None = None) -> dict[str, Any]:
    """The least-squares method that ``--method auto`` resolves to on the default device, and
    why: {"auto_method", "auto_method_reason", "float64_over_float32"} (the measured ratio of
    float64 to float32 matmul rates, None where nothing was measured). qr32 where float64 is
    off or missing (TPU) or slow (SLOW_FLOAT64); gram64 on CPUs without measuring (float64 at
    1/2 to 1/4 of float32 there, and start-up time counts); other devices are measured.
    float32_gflops: the float32 rate if already measured; backend, x64: JAX's (default)."""
    from kernels import default_method

    backend = jax.default_backend() if backend is None else backend
    if default_method(backend, x64) == "qr32":
        return _choice("qr32", f"no float64 on {backend} (a TPU, or jax_enable_x64 off)")
    if backend == "cpu":
        return _choice("gram64", "CPUs run float64 matmuls at 1/2 to 1/4 of their float32 rate")
    ratio = matmul_gflops("float64") / (float32_gflops or matmul_gflops("float32"))
    if ratio < SLOW_FLOAT64:
        return _choice("qr32", f"float64 matmuls run at {ratio:.3f} of float32's rate on {backend} "
                               f"(below {SLOW_FLOAT64:.4g})", ratio)
    return _choice("gram64", f"float64 matmuls run at {ratio:.3f} of float32's rate on {backend}", ratio)


def _choice(method: str, reason: str, ratio: float | None = None) -> dict[str, Any]:
    return {"auto_method": method, "auto_method_reason": reason, "float64_over_float32": ratio}


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _git() -> dict[str, Any]:
    def run(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = run("rev-parse", "HEAD")
    status = run("status", "--porcelain", "--untracked-files=no")
    return {"git_commit": commit, "git_dirty": None if status is None else bool(status)}
