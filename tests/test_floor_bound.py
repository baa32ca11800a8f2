"""bench.floor_bound: the bound program does the work its docstring names (every chunk's draws
and three products, kept or drawn again), against float64 NumPy; its command line."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bench import floor_bound
from kernels import philox


def _reference(d: int, n: int, chunk: int, queries: int) -> float:
    """What the bound program computes, in float64 NumPy on the same draws: sum_i (K^T K)_{i0}
    over all chunks' pairs, plus per chunk sum((K W) * V) + min(V R^T)."""
    key = jax.random.key(0, impl="threefry2x32")
    chunks = -(-n // chunk)
    KV = np.concatenate([np.asarray(philox.normal(key, (chunk, 2 * d), jnp.float32, row0=j * chunk), np.float64)
                         for j in range(chunks)])
    W = np.full((d, d), np.float32(1e-3), np.float64)
    R_t = np.full((d, queries), np.float32(1e-3), np.float64)
    gram = KV[:, :d].T @ KV
    total = gram[:, 0].sum()
    for j in range(chunks):
        K, V = KV[j * chunk:(j + 1) * chunk, :d], KV[j * chunk:(j + 1) * chunk, d:]
        total += np.sum((K @ W) * V) + np.min(V @ R_t)
    return float(total)


@pytest.mark.parametrize("keep", [True, False])
@pytest.mark.parametrize("n", [8, 40])  # one chunk; several, the last one partly beyond n (drawn whole)
def test_bound_program_draws_and_multiplies_every_chunk(keep, n):
    d, chunk, queries = 16, 8, 12
    program = jax.jit(floor_bound.bound_program(d, d, chunk, queries, keep=keep))
    buffer = jnp.zeros((-(-n // chunk) if keep else 1, chunk, 2 * d), jnp.float32)
    total, _ = program(jnp.int32(n), buffer)
    assert float(total) == pytest.approx(_reference(d, n, chunk, queries), rel=1e-5)


def test_bound_program_without_draws_does_the_same_products():
    """draw=False: the same loops over one fixed chunk (plus the loop index), no generator."""
    d, chunk, queries, n = 16, 8, 12, 24
    program = jax.jit(floor_bound.bound_program(d, d, chunk, queries, keep=False, draw=False))
    total, _ = program(jnp.int32(n), jnp.zeros((1, chunk, 2 * d), jnp.float32))
    fixed = np.asarray(philox.normal(jax.random.key(0, impl="threefry2x32"), (chunk, 2 * d), jnp.float32), np.float64)
    W, R_t = np.full((d, d), np.float32(1e-3), np.float64), np.full((d, queries), np.float32(1e-3), np.float64)
    chunks = [fixed + j for j in range(n // chunk)]
    expected = sum((KV[:, :d].T @ KV)[:, 0].sum() for KV in chunks)
    expected += sum(np.sum((KV[:, :d] @ W) * KV[:, d:]) + np.min(KV[:, d:] @ R_t) for KV in chunks)
    assert float(total) == pytest.approx(expected, rel=1e-5)


def test_command_line_reports_each_n_against_its_floor(capsys):
    assert floor_bound.main(["16", "8,40", "--chunk", "8", "--repeats", "1", "--keep"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["d"], report["chunk"], report["keep"]) == (16, 8, True)
    assert report["matmul_gflops"] > 0
    assert [cell["n"] for cell in report["cells"]] == [8, 40]
    for cell in report["cells"]:
        assert cell["floor_s"] > 0 and cell["bound_s"] > 0 and cell["products_s"] > 0
        assert cell["bound_over_floor"] == pytest.approx(cell["bound_s"] / cell["floor_s"])


@pytest.mark.parametrize("argv,words", [
    (["16", "4,x"], "comma-separated integers"),
    (["0", "4"], "d = 0"),
    (["16", "0"], "every n"),
    (["16", "4", "--chunk", "0"], "--chunk 0"),
    (["16", "4", "--repeats", "0"], "--repeats 0"),
    (["1024", "1048576", "--keep"], "8.0 GiB"),  # the d = 1024, n = 2^20 cell cannot keep its pairs
])
def test_bad_arguments_are_one_line_and_exit_2(argv, words, capsys):
    with pytest.raises(SystemExit) as stop:
        floor_bound.main(argv)
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and words in err and err.startswith("bench.floor_bound: error:")


def test_a_program_beyond_free_memory_is_refused_before_compiling(monkeypatch, capsys):
    """d = 16384 holds about 3.2 GiB (W, R^T and the sums): with 1 GiB free it is one line and
    exit 2, and nothing is compiled or run."""
    from bench import environment

    monkeypatch.setattr(environment, "device_memory_bytes", lambda: 2**30)
    monkeypatch.setattr(environment, "matmul_gflops", lambda *a, **k: pytest.fail("measured after the refusal"))
    with pytest.raises(SystemExit) as stop:
        floor_bound.main(["16384", "4"])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "needs about 3.1 GiB and 1.0 GiB is free; lower d" in err
