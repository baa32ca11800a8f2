"""Where the soft nested read's time goes: one tile of nodes (kernels.nested._dense_level's loop
body) timed as its two products alone, as the whole body and as the level loop, and the tile's
exponentials alone (one per slot and query, on a tile in cache), against the matmul rate.

    python -m bench.profile_nested [--queries 256] [--tile-slots 4096] [--d 64] [--rounds 3]

The soft read's FLOP floor counts only the products; this says how far the products themselves
(with an inner dimension of d) are from the 2048^3 matmul rate, and what the per-node softmax adds.
"""

from __future__ import annotations

import sys
import time


def profile(queries: int, tile_slots: int, d: int, rounds: int, branching: int = 32, tiles: int = 256) -> list[str]:
    from bench.environment import configure_jax, matmul_gflops

    configure_jax()
    import jax
    import jax.numpy as jnp
    import numpy as np

    from kernels import nested as kn

    tn = max(tile_slots // branching, 1)
    rng = np.random.default_rng(0)
    keys = jnp.asarray((rng.standard_normal((tiles, tn, branching, d)) / np.sqrt(d)).astype(np.float32))
    values = jnp.asarray((rng.standard_normal((tiles, tn, branching, d)) / np.sqrt(d)).astype(np.float32))
    mask = jnp.ones((tiles, tn, branching), bool)
    parent = jnp.asarray(rng.random((tiles, queries, tn)).astype(np.float32))
    # queries like the stored keys (norm ~1), so the level loop shifts by the score bound as a read does
    q = jnp.asarray((rng.standard_normal((queries, d)) / np.sqrt(d)).astype(np.float32))
    beta = jnp.float32(8.0)
    level = kn.Level(keys.reshape(tiles * tn, branching, d), mask.reshape(tiles * tn, branching), None,
                     values.reshape(tiles * tn, branching, d))
    w_level = parent.transpose(1, 0, 2).reshape(queries, tiles * tn)
    t_level = jnp.zeros((queries,), jnp.int32)

    def program(whole: bool):
        def run(q, keys, values, mask, parent, beta):
            def body(acc, x):
                k, v, m, w = x
                s = (q @ k.reshape(tn * branching, d).T).reshape(queries, tn, branching)
                if whole:
                    s = kn._weighted_children("soft", s, m, w, beta)[0]
                return acc + s.reshape(queries, tn * branching) @ v.reshape(tn * branching, d), None
            return jax.lax.scan(body, jnp.zeros((queries, d), jnp.float32), (keys, values, mask, parent))[0]
        compiled = jax.jit(run)  # arrays as arguments, as in a read (not constants folded into the program)
        return lambda: compiled(q, keys, values, mask, parent, beta)

    level_loop = jax.jit(lambda q, lev, w, t, beta: kn._dense_level(
        lev, q, w, jnp.ones(q.shape[0], bool), t, mode="soft", sim=kn.SIMILARITY_REGISTRY["dot"], beta=beta,
        keep=False)[0])  # built once: a jit made inside the timed call would be traced and lowered each time
    scores = jnp.asarray(rng.uniform(-1, 0, (queries, tn * branching)).astype(np.float32))

    @jax.jit
    def exponentials(scores, beta):
        # the same tile each step, scaled per step so the exponential is not hoisted out of the loop
        step = lambda i, acc: acc + jnp.exp(scores * (beta + i.astype(scores.dtype) * 1e-6))  # noqa: E731
        return jax.lax.fori_loop(0, tiles, step, jnp.zeros_like(scores))

    programs = {"products alone": program(False), "whole tile body (shift by each node's maximum)": program(True),
                "kernels.nested._dense_level": lambda: level_loop(q, level, w_level, t_level, beta),
                "exponentials alone (one per slot and query, tile in cache)": lambda: exponentials(scores, beta)}
    for f in programs.values():
        f().block_until_ready()
    flops = tiles * 2 * 2 * queries * tn * branching * d
    best = {name: float("inf") for name in programs}
    rates = []
    for _ in range(rounds):
        rates.append(matmul_gflops())
        for name, f in programs.items():
            start = time.perf_counter()
            f().block_until_ready()
            best[name] = min(best[name], time.perf_counter() - start)
    rate = max(rates)
    lines = [f"{tiles} tiles of {tn * branching} slots, {queries} queries, d = {d}; matmul {min(rates):.0f}-"
             f"{rate:.0f} GFLOP/s"]
    for name, t in best.items():
        got = flops / t / 1e9
        lines.append(f"{name}: {t:.3f} s, {got:.0f} GFLOP/s = {rate / got:.2f}x the floor at the best matmul rate")
    return lines


def main(argv: list[str] | None = None) -> int:
    from bench.cli import OneLineParser

    parser = OneLineParser(prog="python -m bench.profile_nested", description=__doc__.split("\n\n")[0])
    parser.add_argument("--queries", type=int, default=256)
    parser.add_argument("--tile-slots", type=int, default=4096)
    parser.add_argument("--d", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    for name in ("queries", "tile_slots", "d", "rounds"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} {getattr(args, name)}: use a whole number >= 1")
    print("\n".join(profile(args.queries, args.tile_slots, args.d, args.rounds)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
