"""The Philox4x32-10 generator behind the pair streams: known answers, the two multiply paths,
chunk independence, vmap identity and the normal distribution it draws."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from kernels import philox, streams

# Random123's known-answer vectors for philox4x32 with 10 rounds (kat_vectors):
# counter words, key words -> output words.
KNOWN_ANSWERS = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


@pytest.mark.parametrize("wide", [True, False])
@pytest.mark.parametrize("counter,key,expected", KNOWN_ANSWERS)
def test_known_answers(counter, key, expected, wide):
    got = philox.philox4x32([np.uint32(c) for c in counter], [np.uint32(k) for k in key], wide=wide)
    assert tuple(int(w) for w in got) == expected


def test_limb_products_equal_64_bit_products():
    rng = np.random.default_rng(0)
    counter = [jnp.asarray(rng.integers(0, 2**32, 4096, dtype=np.uint32)) for _ in range(4)]
    key = [np.uint32(rng.integers(0, 2**32)) for _ in range(2)]
    for a, b in zip(philox.philox4x32(counter, key, wide=True), philox.philox4x32(counter, key, wide=False)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_rows_do_not_depend_on_the_chunk_they_are_drawn_in(dtype):
    key = jax.random.key(7)
    whole = np.asarray(philox.normal(key, (96, 10), dtype))
    parts = [np.asarray(philox.normal(key, (32, 10), dtype, row0=r)) for r in (0, 32, 64)]
    np.testing.assert_array_equal(whole, np.concatenate(parts))
    traced = jax.jit(lambda r: philox.normal(key, (32, 10), dtype, row0=r))(jnp.int32(32))
    np.testing.assert_array_equal(np.asarray(traced), parts[1])


def test_a_vmapped_batch_of_keys_draws_each_keys_own_numbers():
    # What keeps a 4-device run (one seed per device) identical to a 1-device run (4 seeds vmapped).
    keys = jax.vmap(jax.random.key)(jnp.arange(4))
    batched = np.asarray(jax.vmap(lambda k: philox.normal(k, (16, 8)))(keys))
    for i in range(4):
        np.testing.assert_array_equal(batched[i], np.asarray(philox.normal(jax.random.key(i), (16, 8))))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_normal_numbers_are_standard_normal_and_independent(dtype):
    x = np.asarray(philox.normal(jax.random.key(3), (2048, 256), dtype), np.float64)
    assert x.dtype == np.float64 and np.all(np.isfinite(x))
    flat = x.ravel()
    assert abs(flat.mean()) < 4 / np.sqrt(flat.size) and abs(flat.var() - 1) < 6 * np.sqrt(2 / flat.size)
    assert stats.kstest(flat[:200_000], "norm").pvalue > 1e-3
    # Neighbouring columns (the same Philox call's words) and rows are uncorrelated.
    for a, b in ((x[:, 0], x[:, 1]), (x[:, 0], x[:, 64]), (x[:-1, 5], x[1:, 5])):
        assert abs(np.corrcoef(a, b)[0, 1]) < 4 / np.sqrt(len(a))
    # Salts and keys give independent streams.
    other = np.asarray(philox.normal(jax.random.key(3), (2048, 256), dtype, salt=1), np.float64).ravel()
    assert abs(np.corrcoef(flat, other)[0, 1]) < 4 / np.sqrt(flat.size)


def test_float64_numbers_carry_more_than_float32_bits():
    x = np.asarray(philox.normal(jax.random.key(1), (256, 64), "float64"))
    assert np.any(x != x.astype(np.float32).astype(np.float64))
    assert len(np.unique(x)) == x.size


def test_unsupported_dtype_is_refused():
    with pytest.raises(ValueError, match="float32 or float64"):
        philox.normal(jax.random.key(0), (2, 2), jnp.float16)


def test_pair_streams_do_not_depend_on_the_chunk_size():
    key = streams.stream_key(0, 8, 4, "gaussian")
    big = streams.draw_pairs(key, 1, chunk=64, d=8, dv=4, dist="gaussian", dtype=jnp.float32)
    small = [streams.draw_pairs(key, j, chunk=16, d=8, dv=4, dist="gaussian", dtype=jnp.float32) for j in (4, 5, 6, 7)]
    for i in range(2):
        np.testing.assert_array_equal(np.asarray(big[i]), np.concatenate([np.asarray(s[i]) for s in small]))


def test_a_chunk_drawn_as_an_array_of_its_own_is_the_same_chunk():
    """streams._own_array (the pairs computed once, in a conditional on CPU): the same numbers
    as the draw itself, with a traced chunk index, under vmap and with a Python one."""
    key = streams.stream_key(3, 8, 4, "gaussian")
    draw = lambda j: philox.normal(key, (16, 12), jnp.float32, row0=j * 16)
    own = jax.jit(lambda j: streams._own_array(lambda: draw(j), j))
    for j in (0, 5):
        np.testing.assert_array_equal(np.asarray(own(jnp.int32(j))), np.asarray(draw(j)))
    batched = jax.vmap(lambda j: streams._own_array(lambda: draw(j), j))(jnp.arange(3, dtype=jnp.int32))
    np.testing.assert_array_equal(np.asarray(batched), np.stack([np.asarray(draw(j)) for j in range(3)]))
    np.testing.assert_array_equal(np.asarray(streams._own_array(lambda: draw(2), 2)), np.asarray(draw(2)))
