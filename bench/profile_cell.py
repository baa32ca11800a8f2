"""Time one matrix-memory family: compile once, then each n (best of 3), against its FLOP
floor at the matmul rate measured in the same process.

    python -m bench.profile_cell pinv 1024 4,64,2048,32768 [--keep N] [--seeds S] [--chunk C] [--with-baselines]

The family is compiled as a sweep compiles it, except that the sweep uses XLA:CPU's quicker
emitters for small families (bench.sweep.compiler_options) and leaves the random baselines to a
program of their own (--with-baselines puts their loop back into the cell program).
"""

from __future__ import annotations

import argparse
import sys
import time


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile_cell", description=__doc__.splitlines()[0])
    parser.add_argument("rule", help="pinv, hebbian, ridge or delta")
    parser.add_argument("d", type=int)
    parser.add_argument("ns", help="comma-separated numbers of stored pairs")
    parser.add_argument("--keep", type=int, help="pairs the cache keeps (default: the largest n)")
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--chunk", type=int, help="pairs per chunk (default: kernels.default_chunk)")
    parser.add_argument("--with-baselines", action="store_true",
                        help="compute the random baselines in the cell program (a sweep computes them once per stream)")
    args = parser.parse_args(argv)
    ns = [int(x) for x in args.ns.split(",")]

    from bench.environment import configure_jax, matmul_gflops

    configure_jax()
    import jax
    import jax.numpy as jnp

    import kernels
    from kernels.streams import new_cache

    rate = matmul_gflops()
    keep = max(ns) if args.keep is None else args.keep
    family = kernels.MatrixFamily(args.rule, args.d, args.d, "gaussian", chunk=args.chunk or kernels.default_chunk(args.d, args.d),
                                  keep=keep, baseline=args.with_baselines)
    seeds = jnp.arange(args.seeds, dtype=jnp.int32)
    cache = new_cache(family, args.seeds)
    start = time.perf_counter()
    lowered = jax.jit(kernels.matrix_cell_program(family), donate_argnums=1).lower(
        seeds, cache, *kernels.matrix_args(family, 4, 0.0))
    traced = time.perf_counter()
    compiled = lowered.compile()
    print(f"{args.rule} d={args.d} chunk={family.chunk} keep={keep}: trace+lower {traced - start:.2f} s, "
          f"compile {time.perf_counter() - traced:.2f} s, matmul {rate:.0f} GFLOP/s")
    total = 0.0
    for n in ns:
        cell_args = kernels.matrix_args(family, n, 0.0)
        out, cache = compiled(seeds, cache, *cell_args)
        best = float("inf")
        for _ in range(3):
            start = time.perf_counter()
            out, cache = compiled(seeds, cache, *cell_args)
            jax.block_until_ready(out)
            best = min(best, time.perf_counter() - start)
        floor = kernels.matrix_flops(args.rule, n, args.d, args.d, family.queries) * args.seeds / (rate * 1e9)
        total += best
        print(f"n={n}: {best * 1e3:.1f} ms, floor {floor * 1e3:.2f} ms ({best / floor:.1f}x), "
              f"cos {float(out.cos_mean[0]):.5f}")
    print(f"all {len(ns)} cells: {total * 1e3:.0f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
