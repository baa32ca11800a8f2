"""A small learning experiment through the nested read: paths of the collision form are queried
through an unknown linear distortion of the key space (a random rotation), and a linear
projection of the query path is learned by gradient descent (Adam, written out: five lines do
not need a dependency) so that each path retrieves its own leaf. The loss is the cross-entropy
of the read value against every stored value (logits: scaled cosines); accuracy is the share
of paths whose read value is nearest its own leaf. Gradients flow through the soft, sparse and
top-k (selected weights) reads alike.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from kernels import nested as kn
from nested import build, generate


class Curve(NamedTuple):
    mode: str
    loss: list[float]
    accuracy: list[float]


def _unit(x):
    # rsqrt(|x|^2 + eps), not x / max(|x|, eps): the norm's gradient at a zero read (a beam that
    # picked slots without values) is NaN even where the maximum clips it
    return x * jax.lax.rsqrt(jnp.sum(x * x, axis=-1, keepdims=True) + 1e-12)


def learn(mode: str, *, depth: int = 3, branching: int = 4, d: int = 16, steps: int = 150, lr: float = 0.03,
          beta: float = 1.0, k: int = 4, seed: int = 0, record_every: int = 10) -> Curve:
    """Train the projection for ``steps`` full-batch Adam steps; loss and accuracy every
    ``record_every`` steps (and at the start). The defaults learn in every mode; a sharper
    start (beta 4) stalls sparse and narrow-beam reads: branches outside the support or the
    beam get no gradient (README, nested dictionaries)."""
    tree = build.compile_tree(generate.generate(generate.TreeSpec("collision", depth=depth, branching=branching,
                                                                  collision=1.0, seed=seed)))
    K = build.gaussian_codebook(tree.key_symbols, d, seed)
    V = build.gaussian_codebook(tree.value_symbols, d, seed + 1)
    levels = build.device_levels(tree, K, V)
    paths, lengths, targets = build.query_paths(tree, K)
    rotation, _ = np.linalg.qr(np.random.default_rng(seed + 2).standard_normal((d, d)))
    seen = jnp.asarray(paths @ rotation, jnp.float32)  # the queries arrive distorted
    lengths, targets = jnp.asarray(lengths), jnp.asarray(targets)
    unit_values = _unit(jnp.asarray(V))

    def loss_and_acc(P):
        out = kn.read(levels, seen @ P, lengths, mode=mode, beta=beta, k=k).values
        logits = 10.0 * _unit(out) @ unit_values.T
        loss = jnp.mean(jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(logits, targets[:, None], 1)[:, 0])
        return loss, jnp.mean(jnp.argmax(logits, -1) == targets)

    grad = jax.jit(jax.value_and_grad(loss_and_acc, has_aux=True))
    P = jnp.eye(d, dtype=jnp.float32)
    m = v = jnp.zeros_like(P)
    losses, accs = [], []
    for step in range(steps + 1):
        (loss, acc), g = grad(P)
        if step % record_every == 0 or step == steps:
            losses.append(float(loss))
            accs.append(float(acc))
        if step == steps:
            break
        m = 0.9 * m + 0.1 * g
        v = 0.999 * v + 0.001 * g * g
        P = P - lr * (m / (1 - 0.9 ** (step + 1))) / (jnp.sqrt(v / (1 - 0.999 ** (step + 1))) + 1e-8)
    return Curve(mode, losses, accs)
