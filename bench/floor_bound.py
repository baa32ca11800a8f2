"""The least time a pinv cell can take on this machine: a program that does only the work no
implementation can leave out, timed beside the FLOP floor at the matmul rate measured here.

    python -m bench.floor_bound 1024 1048576            # pairs drawn twice (memory independent of n)
    python -m bench.floor_bound 1024 4,64,32768 --keep  # pairs drawn once and kept (the sweep's cache)

The floor (kernels.matrix_flops over the measured float32 matmul rate) counts the products:
K^T [K | V] of the write, K W of the recall, and the accuracy sample's V R^T. A cell must also
draw its pairs: once when it keeps them, and once per pass when it cannot (under 1 GiB, a d = 1024
cell of n = 2^20 pairs cannot keep its 8 GiB of pairs, so it draws them for the write and again
for the recall). The bound program does those draws with the suite's own generator
(kernels.philox, the same call a cell makes) and those three products, a chunk of the family's
size at a time, and nothing else (no solve, no cosines, no masks): a cell of the suite does all
of it and more. "products" times the same products on one chunk held in memory, without draws.
"""

from __future__ import annotations

import json
import sys
import time


def bound_program(d: int, dv: int, chunk: int, queries: int, *, keep: bool, draw: bool = True):
    """(n int32, buffer (kept chunks, chunk, d + dv) float32, donated) -> (a scalar that depends
    on every product, buffer). keep: the write stores each chunk in the buffer (which must hold
    every chunk of n) and the recall reads it back; else the recall draws it again.
    draw=False: the products of one fixed chunk (plus the loop index), no generator."""
    import jax
    import jax.numpy as jnp
    from jax import lax

    from kernels import philox

    key = jax.random.key(0, impl="threefry2x32")
    fixed = philox.normal(key, (chunk, d + dv), jnp.float32)
    W = jnp.full((d, dv), 1e-3, jnp.float32)
    R_t = jnp.full((dv, queries), 1e-3, jnp.float32)

    def pairs(j):
        if draw:
            return philox.normal(key, (chunk, d + dv), jnp.float32, row0=j * chunk)
        return fixed + j.astype(jnp.float32)

    def program(n, buffer):
        chunks = (n + chunk - 1) // chunk

        def write(j, carry):
            gram, buffer = carry
            KV = pairs(j)
            if keep:
                buffer = lax.dynamic_update_index_in_dim(buffer, KV, j, 0)
            return gram + KV[:, :d].T @ KV, buffer

        gram, buffer = lax.fori_loop(0, chunks, write, (jnp.zeros((d, d + dv), jnp.float32), buffer))

        def score(j, total):
            KV = lax.dynamic_index_in_dim(buffer, j, 0, keepdims=False) if keep else pairs(j)
            K, V = KV[:, :d], KV[:, d:]
            return total + jnp.sum((K @ W) * V) + jnp.min(V @ R_t)

        return lax.fori_loop(0, chunks, score, jnp.sum(gram[:, 0])), buffer

    return program


def bound_bytes(d: int, chunk: int, queries: int, kept_chunks: int) -> int:
    """Bytes the bound program holds at once: W, R^T and the sums (3 d^2 + d * queries numbers),
    the kept chunks, and a few chunks' worth of temporaries (float32)."""
    return 4 * (3 * d * d + d * queries + (kept_chunks + 8) * chunk * max(2 * d, queries))


def measure(d: int, ns: list[int], *, keep: bool, chunk: int | None = None, repeats: int = 3) -> dict:
    """Best-of-``repeats`` seconds of the bound program with draws and without, per n, beside
    the floor at the matmul rate measured in this process. Raises ValueError (before any
    compiling) when the program would not fit in the device's memory."""
    from bench.environment import configure_jax, device_memory_bytes, matmul_gflops

    configure_jax()
    import jax
    import jax.numpy as jnp

    import kernels

    chunk = chunk or kernels.default_chunk(d, d)
    queries = kernels.MatrixFamily._field_defaults["queries"]  # the accuracy sample a sweep cell scores
    kept = -(-max(ns) // chunk) if keep else 1
    need, available = bound_bytes(d, chunk, queries, kept), device_memory_bytes()
    if available is not None and 2 * need > available:
        raise ValueError(f"d = {d}{' with --keep' if keep else ''} needs about {need / 2**30:.1f} GiB and "
                         f"{available / 2**30:.1f} GiB is free; lower d{' or n, or drop --keep' if keep else ''}")
    rate = matmul_gflops()
    best: dict[tuple[bool, int], float] = {}
    for draw in (True, False):  # one program, and its buffer, at a time
        program = jax.jit(bound_program(d, d, chunk, queries, keep=keep, draw=draw), donate_argnums=1)
        buffer = jnp.zeros((kept, chunk, 2 * d), jnp.float32)
        fn = program.lower(jnp.int32(chunk), buffer).compile()
        out, buffer = fn(jnp.int32(chunk), buffer)  # one untimed run: the buffers touched once
        jax.block_until_ready(out)
        for n in ns:
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                out, buffer = fn(jnp.int32(n), buffer)
                jax.block_until_ready(out)
                times.append(time.perf_counter() - start)
            best[draw, n] = min(times)
        del buffer
    rows = []
    for n in ns:
        floor = kernels.matrix_flops("pinv", n, d, d, queries) / (rate * 1e9)
        rows.append({"n": n, "floor_s": floor, "bound_s": best[True, n], "products_s": best[False, n],
                     "bound_over_floor": best[True, n] / floor, "products_over_floor": best[False, n] / floor})
    return {"d": d, "chunk": chunk, "keep": keep, "matmul_gflops": rate, "cells": rows}


# --keep holds every pair of the largest n: refuse what would not fit in this much.
KEEP_LIMIT_BYTES = 2**32


def main(argv: list[str] | None = None) -> int:
    from bench.cli import OneLineParser

    parser = OneLineParser(prog="python -m bench.floor_bound", description=__doc__.splitlines()[0])
    parser.add_argument("d", type=int, help="key and value dimension")
    parser.add_argument("ns", help="comma-separated numbers of stored pairs")
    parser.add_argument("--keep", action="store_true", help="draw each pair once and keep it (else draw it twice)")
    parser.add_argument("--chunk", type=int, help="pairs per chunk (default: kernels.default_chunk)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per n, best kept (default 3)")
    args = parser.parse_args(argv)
    try:
        ns = [int(x) for x in args.ns.split(",")]
    except ValueError:
        parser.error(f"ns must be comma-separated integers, got {args.ns!r}")
    if args.d < 1 or args.d > 2**16:
        parser.error(f"d = {args.d} is outside 1..65536")
    if any(not 1 <= n < 2**31 for n in ns):
        parser.error(f"every n must be in 1..2^31 - 1, got {args.ns}")
    if args.chunk is not None and not 1 <= args.chunk <= 2**16:
        parser.error(f"--chunk {args.chunk} is outside 1..65536")
    if args.repeats < 1:
        parser.error(f"--repeats {args.repeats} must be at least 1")
    kept_bytes = max(ns) * 2 * args.d * 4
    if args.keep and kept_bytes > KEEP_LIMIT_BYTES:
        parser.error(f"--keep would hold {kept_bytes / 2**30:.1f} GiB of pairs (at most {KEEP_LIMIT_BYTES / 2**30:.0f}); "
                     "drop --keep (pairs drawn twice) or lower n")
    try:
        report = measure(args.d, ns, keep=args.keep, chunk=args.chunk, repeats=args.repeats)
    except ValueError as error:  # the program would not fit in memory
        parser.error(str(error))
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
