"""Shared test settings: the suite's JAX configuration, a deterministic hypothesis profile,
the tolerance table, and NumPy float64 references."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

# On a GPU each test worker (pytest-xdist) is its own JAX process: by default the first would
# take 75% of the device's memory and the next ones fail. Subprocesses inherit the setting.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
from bench.environment import configure_jax  # noqa: E402

configure_jax()
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from kernels import streams  # noqa: E402

REPO = Path(__file__).resolve().parent.parent

settings.register_profile("ci", derandomize=True, max_examples=8, deadline=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# Absolute tolerances on recall metrics (cosine, and distance relative to the random baseline),
# keyed by dtype: the acceptance bar of the suite against float64 NumPy.
TOLERANCE = {"float32": {"cos": 1e-4, "dist_rel": 1e-3, "dist_base": 1e-4},
             "float64": {"cos": 1e-10, "dist_rel": 1e-8, "dist_base": 1e-10}}


def same_numbers(rtol: float = 0.0, atol: float = 0.0) -> dict[str, float]:
    """assert_allclose tolerances for two compiled programs that compute the same numbers in
    different ways (kept or redrawn pairs, blocked or not). XLA:CPU rounds them alike, bit for
    bit (rtol, atol: what a test allows there, 0 for exactly); GPU compilers fuse each program
    its own way: on an H100 such pairs differed by up to 1.6e-9 relative in cos_mean and by 2e-17
    in a cos_std that is zero but for rounding, so there float32 rounding (1e-6 relative) is allowed."""
    if jax.default_backend() == "cpu":
        return {"rtol": rtol, "atol": atol}
    return {"rtol": max(rtol, 1e-6), "atol": max(atol, 1e-12)}


def materialize(seed: int, n: int, family, table=None):
    """The exact pairs and standard normal query noise a cell streams (keys, values, noise),
    as float64 NumPy arrays. family: any family (d, dv, patterns, chunk, dtype)."""
    stream = streams.open_stream(seed, d=family.d, dv=family.dv, patterns=family.patterns, chunk=family.chunk,
                                 dtype=family.dtype, table=table)
    chunks = range(-(-n // family.chunk))
    cat = lambda xs: np.concatenate([np.asarray(x, np.float64) for x in xs])[:n]
    pairs = [stream.pairs(jnp.int32(j)) for j in chunks]
    return cat(p[0] for p in pairs), cat(p[1] for p in pairs), cat(stream.noise(jnp.int32(j)) for j in chunks)


def materialize_mask(seed: int, n: int, family, fraction: float):
    """The 0/1 query masks a cell applies (stream.mask of every chunk), float64."""
    stream = streams.open_stream(seed, d=family.d, dv=family.dv, patterns=family.patterns, chunk=family.chunk,
                                 dtype=family.dtype)
    masks = [stream.mask(jnp.int32(j), jnp.asarray(fraction, jnp.dtype(family.dtype)))
             for j in range(-(-n // family.chunk))]
    return np.concatenate([np.asarray(m, np.float64) for m in masks])[:n]


def reference_write(rule: str, K, V, lam=1.0, eta=1.0, passes=1):
    """float64 NumPy: the textbook form of every write rule."""
    if rule == "pinv":
        return np.linalg.lstsq(K, V, rcond=None)[0]
    if rule == "hebbian":
        return K.T @ V
    if rule == "ridge":
        return np.linalg.solve(K.T @ K + lam * np.eye(K.shape[1]), K.T @ V)
    if rule == "delta":
        W = np.zeros((K.shape[1], V.shape[1]))
        for _ in range(passes):
            for k, v in zip(K, V):
                norm = k @ k
                if norm > 0:
                    W += (eta / norm) * np.outer(k, v - k @ W)
        return W
    raise ValueError(rule)


def reference_metrics(K, V, E, W, noise_std, sample, mask=None):
    """cos mean/std, mean distance and nearest-neighbour accuracy, in float64."""
    R = ((K + noise_std * E) * (1.0 if mask is None else mask)) @ W
    rn, vn = np.linalg.norm(R, axis=1), np.linalg.norm(V, axis=1)
    cos = np.sum(R * V, axis=1) / np.where(rn * vn > 0, rn * vn, 1.0)
    dist = np.linalg.norm(R - V, axis=1)
    m = min(len(K), sample)
    d2 = ((R[:m, None, :] - V[None, :, :]) ** 2).sum(-1)
    own = d2[np.arange(m), np.arange(m)]
    d2[np.arange(m), np.arange(m)] = np.inf
    acc = float(np.mean(own < d2.min(axis=1))) if len(K) > 1 else 1.0
    return {"cos_mean": cos.mean(), "cos_std": cos.std(), "dist_mean": dist.mean(), "acc": acc}


_CACHE_HOME = tempfile.mkdtemp(prefix="amem-test-cache-")


def run_env(**extra) -> dict[str, str]:
    """Environment for a subprocess of the suite: repository importable, a private compile
    cache (never the user's), extras on top."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["XDG_CACHE_HOME"] = _CACHE_HOME
    env.update(extra)
    return env


PYTHON = sys.executable


@pytest.fixture
def repo() -> Path:
    return REPO


def sweep_into(spec, run_dir: Path, manifest: dict | None = None) -> dict:
    """Run ``spec``'s sweep into ``run_dir`` as bench.pipeline does (manifest held in memory,
    saved through the callback), without measuring the matmul rate. manifest: the run's (a
    resume passes the one read back); None writes a new one. Returns it."""
    from bench import store, sweep

    if manifest is None:
        manifest = {"run_id": run_dir.name, "spec": spec.to_dict(), "matmul_gflops": 100.0}
        store.write_manifest(run_dir, manifest)
    return sweep.run_sweep(spec, run_dir, manifest, save=lambda: store.write_manifest(run_dir, manifest),
                           progress=False)
