"""Nested reads against the flat baselines on every form, and the learning curves: a table on
stdout (until the sweep integration writes rows, figures and a report section).

    python -m nested.demo [--depth 3] [--branching 6] [--d 64] [--beta 8] [--seed 0]
"""

from __future__ import annotations

import argparse
import sys

import numpy as np


def _metrics(out, V, targets) -> str:
    out = np.asarray(out, np.float64)
    want = V[targets]
    cos = np.sum(out * want, 1) / np.maximum(np.linalg.norm(out, axis=1) * np.linalg.norm(want, axis=1), 1e-30)
    acc = np.mean(np.argmax(out @ V.T - 0.5 * np.sum(V * V, 1), 1) == targets)
    return f"{cos.mean():.3f}/{acc:.3f}"


def table(depth: int, branching: int, d: int, beta: float, seed: int) -> list[str]:
    import jax.numpy as jnp

    from kernels import nested as kn
    from nested import build, flat, generate

    columns = (["soft", "sparse", "top-1", "top-4"] + [f"attn {c}" for c in flat.COMPOSITIONS]
               + [f"pinv {c}" for c in flat.COMPOSITIONS] + ["stacked"])
    lines = ["| form | paths | " + " | ".join(columns) + " |", "|---|---|" + "---|" * len(columns)]
    for form in generate.FORMS:
        tree = build.compile_tree(generate.generate(generate.TreeSpec(form, depth=depth, branching=branching,
                                                                      collision=1.0, seed=seed)))
        K = build.gaussian_codebook(tree.key_symbols, d, seed)
        V = build.gaussian_codebook(tree.value_symbols, d, seed + 1)
        levels = build.device_levels(tree, K, V)
        paths, lengths, targets = build.query_paths(tree, K)
        cells = []
        for mode, k in (("soft", 1), ("sparse", 1), ("topk", 1), ("topk", 4)):
            cells.append(_metrics(kn.read(levels, jnp.asarray(paths), jnp.asarray(lengths), mode=mode, beta=beta,
                                          k=k).values, V, targets))
        composite = {c: flat.compose(paths, lengths, c).astype(np.float32) for c in flat.COMPOSITIONS}
        cells += [_metrics(flat.flat_attention(C, V[targets], C, beta=beta), V, targets) for C in composite.values()]
        cells += [_metrics(flat.flat_pinv(C, V[targets], C), V, targets) for C in composite.values()]
        cells.append(_metrics(flat.stacked_read(flat.stacked_memory(tree, K, V, seed), paths, lengths, beta=beta),
                              V, targets))
        lines.append(f"| {form} | {len(targets)} | " + " | ".join(cells) + " |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nested.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--branching", type=int, default=6)
    parser.add_argument("--d", type=int, default=64)
    parser.add_argument("--beta", type=float, default=8.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    from bench.environment import configure_jax

    configure_jax()
    from nested import generate, learn

    try:
        generate.TreeSpec("independent", depth=args.depth, branching=args.branching)
        if args.d < 1 or not args.beta > 0:
            raise ValueError(f"--d {args.d} / --beta {args.beta}: use d >= 1 and beta > 0")
    except ValueError as e:
        print(f"nested.demo: error: {e}", file=sys.stderr)
        return 2
    print(f"Every readable path queried exactly (collision fraction 1, beta {args.beta:g}, d = {args.d}): "
          "mean cosine / nearest-value accuracy")
    print("\n".join(table(args.depth, args.branching, args.d, args.beta, args.seed)))
    print("\nLearning a projection of rotated query paths (collision form, depth 3, branching 4, d = 16, beta 1, "
          "top-4 beam): accuracy every 10 Adam steps")
    for mode in ("soft", "sparse", "topk"):
        curve = learn.learn(mode)
        print(f"{mode:7s} " + " ".join(f"{a:.2f}" for a in curve.accuracy) + f"   loss {curve.loss[0]:.2f} -> "
              f"{curve.loss[-1]:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
