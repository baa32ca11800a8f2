"""Matrix associative memories: write rules that turn pairs (K, V) into W with V ~ K W.

Shapes, one item per row: keys K: (n, d), values V: (n, dv), W: (d, dv).

Every rule is a fold over fixed-size chunks of pairs, so the same code serves an array held
in memory (the public functions below) and a stream regenerated chunk by chunk from the PRNG
(the sweep, ``kernels.cell``): memory is O(d^2 + d * chunk) and the compiled program does
not depend on n.

Numerics of the least-squares rules (pinv, ridge). Normal equations square the condition
number, and at n = d a Gaussian K has cond ~ 2d, so float32 Gram matrices lose everything
in the weakest directions. Method ``gram64`` accumulates K^T K and K^T V in float64 (float32
products are exact in float64) while K is ill conditioned (n < PRECISE_RATIO * d) and in
float32 otherwise (cond(K)^2 < 9 there), then solves in float64: Cholesky of K^T K for
n >= d, Cholesky of the dual K K^T for n < d (minimum-norm solution), and an eigenvalue
pseudoinverse when K is rank deficient (e.g. duplicated +-1 keys). Where float64 is missing
(TPU, or jax_enable_x64 off), method ``qr32`` streams a float32 QR of [K | V] instead: it
never forms K^T K, so its error grows like cond(K), not cond(K)^2.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.scipy.linalg import cho_solve, solve_triangular

RULES = ("pinv", "hebbian", "ridge", "delta")
METHODS = ("gram64", "qr32")
# How each cell's solve went, stored per row (see METHOD_NAMES).
PRIMAL, DUAL, EIGH, QR, DIRECT = 0, 1, 2, 3, 4
METHOD_NAMES = ("gram64-cholesky", "gram64-dual-cholesky", "gram64-eigh", "qr32", "direct")
# Below this n/d ratio K is ill conditioned enough that Gram and recall run in float64.
PRECISE_RATIO = 4
# A Cholesky pivot below this fraction of the largest diagonal means K is rank deficient.
_PIVOT_FLOOR = 1e-12
DELTA_BLOCK = 64

ChunkSource = Callable[[jax.Array], tuple[jax.Array, jax.Array, jax.Array]]


class Params(NamedTuple):
    """Traced knobs of the rules, so one compiled program serves every value.

    lam: ridge lambda (absolute, added to K^T K). eta: delta-rule step relative to
    1/||k||^2 (eta = 1 is the classic normalised rule). passes: delta-rule epochs.
    """

    lam: jax.Array | float = 0.0
    eta: jax.Array | float = 1.0
    passes: jax.Array | int = 1


class Written(NamedTuple):
    """A written memory. W: (d, dv), in the accumulation dtype for pinv and ridge; ok: solve succeeded (else fall back to eigh);
    method: index into METHOD_NAMES; gram: (d, d) and cross: (d, dv), kept for the fallback."""

    W: jax.Array
    ok: jax.Array
    method: jax.Array
    gram: jax.Array
    cross: jax.Array


def default_method() -> str:
    """gram64 where float64 exists (CPU, GPU with x64 on), else qr32 (TPU)."""
    return "gram64" if jax.config.jax_enable_x64 and jax.default_backend() != "tpu" else "qr32"


def accumulate_dtype(dtype) -> jnp.dtype:
    return jnp.dtype(jnp.float64) if jax.config.jax_enable_x64 else jnp.dtype(dtype)


def is_precise(rule: str, n, d: int):
    """Whether K is ill conditioned enough that this rule needs float64 Gram and recall."""
    return jnp.logical_and(rule in ("pinv", "ridge"), n < PRECISE_RATIO * d)


# ---------------------------------------------------------------------------------------
# The write as a fold: init -> update(chunk) for every chunk (and pass) -> finalize. The sweep
# drives these three from its single loop; ``write`` drives them over any chunk source.


class Writer(NamedTuple):
    """Static description of a write: which rule, sizes, dtypes, and how to solve."""

    rule: str
    d: int
    dv: int
    chunk: int
    dtype: jnp.dtype
    method: str = "gram64"

    @property
    def acc(self) -> jnp.dtype:
        return accumulate_dtype(self.dtype)

    @property
    def stash(self) -> int:
        """Chunks kept as they are: the first d pairs, all of them when n < d (dual solve)."""
        return -(-self.d // self.chunk) if self.rule == "pinv" and self.method == "gram64" else 0

    @property
    def uses_qr(self) -> bool:
        return self.method == "qr32" and self.rule in ("pinv", "ridge")

    @property
    def can_fall_back(self) -> bool:
        """Whether a failed Cholesky can be redone by ``eigh_fallback`` (the Gram methods)."""
        return self.rule in ("pinv", "ridge") and not self.uses_qr

    def passes(self, params: Params):
        return params.passes if self.rule == "delta" else 1


class WriteState(NamedTuple):
    """What the fold carries. Fields a rule does not use are (1, 1) placeholders."""

    gram: jax.Array    # (d, d) K^T K, accumulation dtype
    cross: jax.Array   # (d, dv) K^T V, accumulation dtype
    W: jax.Array       # (d, dv) running memory of the delta rule
    R: jax.Array       # (d + dv, d + dv) triangular factor of [K | V] (qr32)
    first: tuple       # stashed (chunks, chunk, d) keys, (chunks, chunk, dv) values, (chunks, chunk) valid


def write_init(w: Writer, params: Params) -> WriteState:
    if w.rule not in RULES:
        raise ValueError(f"unknown matrix memory {w.rule!r}; use one of {', '.join(RULES)}")
    if w.method not in METHODS:
        raise ValueError(f"unknown method {w.method!r}; use one of {', '.join(METHODS)}")
    d, dv, acc, dtype = w.d, w.dv, w.acc, w.dtype
    placeholder = jnp.zeros((1, 1), dtype)
    gram = jnp.zeros((d, d), acc) if w.rule in ("pinv", "ridge") and not w.uses_qr else jnp.zeros((1, 1), acc)
    cross = jnp.zeros((d, dv), acc) if w.rule != "delta" and not w.uses_qr else jnp.zeros((1, 1), acc)
    W = jnp.zeros((d, dv), dtype) if w.rule == "delta" else placeholder
    if w.uses_qr:
        # Starting from R11 = sqrt(lam) I solves ridge: the QR of K stacked on sqrt(lam) I.
        lam = params.lam if w.rule == "ridge" else 0.0
        R = jnp.zeros((d + dv, d + dv), dtype).at[:d, :d].set(jnp.sqrt(jnp.asarray(lam, dtype)) * jnp.eye(d, dtype=dtype))
    else:
        R = placeholder
    rows = max(w.stash, 1)
    first = (jnp.zeros((rows, w.chunk, d), dtype), jnp.zeros((rows, w.chunk, dv), dtype),
             jnp.zeros((rows, w.chunk), bool))
    return WriteState(gram, cross, W, R, first)


def write_update(w: Writer, state: WriteState, K, V, valid, j, precise, params: Params) -> WriteState:
    """Fold chunk number j (keys K (c, d), values V (c, dv), valid (c,)) into the state."""
    K, V = K.astype(w.dtype), V.astype(w.dtype)
    acc = w.acc
    if w.rule == "delta":
        return state._replace(W=_delta_chunk(state.W, K, V, valid, params.eta, w.dtype))
    if w.uses_qr:
        p = w.d + w.dv
        stacked = jnp.concatenate([state.R, jnp.concatenate([K, V], axis=1)])
        return state._replace(R=jnp.linalg.qr(stacked, mode="r")[:p])
    first = state.first
    if w.stash:
        keep = lambda buf, x: lax.dynamic_update_index_in_dim(buf, x, jnp.minimum(j, w.stash - 1), 0)
        first = lax.cond(j < w.stash, lambda: tuple(keep(b, x) for b, x in zip(first, (K, V, valid))),
                         lambda: first)
    if w.rule == "hebbian":
        return state._replace(cross=state.cross + (K.T @ V).astype(acc))
    # float32 products are exact in float64; only ill-conditioned K pays for float64 sums.
    wide = lambda: (K.astype(acc).T @ K.astype(acc), K.astype(acc).T @ V.astype(acc))
    narrow = lambda: ((K.T @ K).astype(acc), (K.T @ V).astype(acc))
    g, c = lax.cond(precise, wide, narrow)
    return state._replace(gram=state.gram + g, cross=state.cross + c, first=first)


def write_finalize(w: Writer, state: WriteState, n, params: Params) -> Written:
    gram, cross = state.gram, state.cross
    if w.rule == "delta":
        return Written(state.W, jnp.bool_(True), jnp.int32(DIRECT), gram, cross)
    if w.uses_qr:
        return Written(_qr_solve(state.R, w.d, w.dtype), jnp.bool_(True), jnp.int32(QR), gram, cross)
    if w.rule == "hebbian":
        return Written(cross.astype(w.dtype), jnp.bool_(True), jnp.int32(DIRECT), gram, cross)
    if w.rule == "ridge":
        W, ok = _cholesky_solve(gram + params.lam * jnp.eye(w.d, dtype=w.acc), cross)
        return Written(W, ok, jnp.int32(PRIMAL), gram, cross)
    W, ok, how = lax.cond(
        n >= w.d,
        lambda: (*_cholesky_solve(gram, cross), jnp.int32(PRIMAL)),
        lambda: (*_dual_solve(*state.first, acc=w.acc), jnp.int32(DUAL)),
    )
    # W stays in the accumulation dtype: rounding it to float32 alone would cost cond(K) * eps.
    return Written(W, ok, how, gram, cross)


def write(rule: str, source: ChunkSource, n, params: Params, *, d: int, dv: int, chunk: int,
          dtype, method: str = "gram64") -> Written:
    """Fold the first n pairs of ``source`` (chunk j -> keys, values, valid) into a memory."""
    w = Writer(rule, d, dv, chunk, jnp.dtype(dtype), method)
    num_chunks = (n + chunk - 1) // chunk
    precise = is_precise(rule, n, d)

    def body(t, state):
        j = t % num_chunks
        K, V, valid = source(j)
        return write_update(w, state, K, V, valid, j, precise, params)

    state = lax.fori_loop(0, num_chunks * w.passes(params), body, write_init(w, params))
    return write_finalize(w, state, n, params)


def eigh_fallback(written: Written) -> Written:
    """The minimum-norm solution by an eigenvalue pseudoinverse of K^T K, for rank-deficient K."""
    gram = written.gram
    d = gram.shape[0]
    evals, evecs = jnp.linalg.eigh(gram)
    cutoff = evals[-1] * max(d, 1) * jnp.finfo(gram.dtype).eps * 10
    inv = jnp.where(evals > cutoff, 1.0 / jnp.where(evals > cutoff, evals, 1.0), 0.0)
    W = evecs @ (inv[:, None] * (evecs.T @ written.cross))
    return written._replace(W=W, ok=jnp.bool_(True), method=jnp.int32(EIGH))


def _cholesky_solve(gram, rhs):
    factor = jnp.linalg.cholesky(gram)
    pivots = jnp.diagonal(factor) ** 2
    ok = jnp.all(jnp.isfinite(factor)) & (jnp.min(pivots) > _PIVOT_FLOOR * jnp.max(jnp.diagonal(gram)))
    return cho_solve((factor, True), rhs), ok


def _dual_solve(K, V, valid, *, acc):
    """W = K^T (K K^T)^-1 V for n < d. K: (chunks, chunk, d), V: (chunks, chunk, dv), valid:
    (chunks, chunk): the stashed first chunks, whose first d rows hold every pair when n < d."""
    d = K.shape[-1]
    K = K.reshape(-1, d)[:d].astype(acc)
    V = V.reshape(-1, V.shape[-1])[:d].astype(acc)
    padding = ~valid.reshape(-1)[:d]
    # Padding rows are zero; a unit diagonal there keeps the dual Gram invertible and
    # leaves the solution untouched (those rows of V are zero).
    dual = K @ K.T + jnp.diag(padding.astype(acc))
    A, ok = _cholesky_solve(dual, V)
    return K.T @ A, ok


def _qr_solve(R, d, dtype):
    """W = R11^+ R12 from the triangular factor R = [[R11, R12], [0, R22]] of [K | V]."""
    u, s, vt = jnp.linalg.svd(R[:d, :d])
    # Rounding leaves exact zeros of a rank-deficient K at ~eps * ||K||; genuine singular
    # values of random K stay far above this at every n (smallest ~ ||K|| / (2d) at n = d).
    cutoff = s[0] * jnp.finfo(dtype).eps * 4 * math.sqrt(R.shape[0])
    inv = jnp.where(s > cutoff, 1.0 / jnp.where(s > cutoff, s, 1.0), 0.0)
    return vt.T @ (inv[:, None] * (u.T @ R[:d, d:]))


def _delta_chunk(W, K, V, valid, eta, dtype):
    """Delta rule W <- W + b_t k_t^T (v_t - k_t W), b_t = eta / ||k_t||^2, pair after pair,
    over one chunk, a block of pairs at a time (the WY form of DeltaNet's chunkwise rule).

    Within a block, the errors u_t = v_t - k_t W_{t-1} satisfy (I + L) U = V - K W_0 with
    L strictly lower triangular, L_ts = b_s k_t.k_s: one triangular solve replaces the
    sequential loop, and the update is W += K^T diag(b) U.
    """

    def block_update(W, block):
        K, V, valid = block
        norms = jnp.sum(K * K, axis=1)
        b = jnp.where(valid & (norms > 0), eta / jnp.where(norms > 0, norms, 1.0), 0.0).astype(dtype)
        L = jnp.tril(K @ K.T, -1) * b[None, :]
        eye = jnp.eye(K.shape[0], dtype=dtype)
        U = solve_triangular(eye + L, V - K @ W, lower=True, unit_diagonal=True)
        return W + K.T @ (b[:, None] * U), None

    c, d = K.shape
    blk = math.gcd(c, DELTA_BLOCK)
    blocks = (K.reshape(c // blk, blk, d), V.reshape(c // blk, blk, V.shape[1]), valid.reshape(c // blk, blk))
    return lax.scan(block_update, W, blocks)[0]


# ---------------------------------------------------------------------------------------
# Public API on arrays held in memory: jit-compiled, vmappable over a batch of trials.


def _array_source(K, V, chunk):
    n = K.shape[0]
    rows = -(-n // chunk) * chunk
    Kp = jnp.pad(K, ((0, rows - n), (0, 0)))
    Vp = jnp.pad(V, ((0, rows - n), (0, 0)))
    valid = jnp.arange(rows) < n

    def source(j):
        start = j * chunk
        return (lax.dynamic_slice_in_dim(Kp, start, chunk), lax.dynamic_slice_in_dim(Vp, start, chunk),
                lax.dynamic_slice_in_dim(valid, start, chunk))

    return source


def _write_arrays(rule, K, V, params, method):
    if K.ndim != 2 or V.ndim != 2 or K.shape[0] != V.shape[0]:
        raise ValueError(f"{rule}: expected K (n, d) and V (n, dv) with the same n, got {K.shape} and {V.shape}")
    dtype = jnp.result_type(K.dtype, V.dtype, jnp.float32)
    n, d = K.shape
    chunk = max(1, min(n, 256))
    method = default_method() if method == "auto" else method
    written = write(rule, _array_source(K.astype(dtype), V.astype(dtype), chunk), n, params,
                    d=d, dv=V.shape[1], chunk=chunk, dtype=dtype, method=method)
    if Writer(rule, d, V.shape[1], chunk, dtype, method).can_fall_back:
        written = lax.cond(written.ok, lambda: written, lambda: eigh_fallback(written))
    return written.W.astype(dtype)


@partial(jax.jit, static_argnames="method")
def pinv(K, V, *, method="auto"):
    """Optimal linear associative memory W = K^+ V (minimum-norm least squares).

    K: (n, d), V: (n, dv) -> W: (d, dv). Exact recall (K W = V) for n <= d."""
    return _write_arrays("pinv", K, V, Params(), method)


@jax.jit
def hebbian(K, V):
    """Correlation-matrix memory W = K^T V. K: (n, d), V: (n, dv) -> (d, dv)."""
    return _write_arrays("hebbian", K, V, Params(), "gram64")


@partial(jax.jit, static_argnames="method")
def ridge(K, V, lam, *, method="auto"):
    """Ridge memory W = (K^T K + lam I)^-1 K^T V, lam > 0. K: (n, d), V: (n, dv) -> (d, dv)."""
    return _write_arrays("ridge", K, V, Params(lam=lam), method)


@partial(jax.jit, static_argnames="form")
def delta(K, V, eta=1.0, passes=1, *, form="chunked"):
    """Delta rule / fast weights: W <- W + (eta / ||k||^2) k^T (v - k W) for each pair in
    order, ``passes`` times over the data, from W = 0.

    form: "chunked" (block-parallel WY form, fast) or "scan" (one pair per step).
    K: (n, d), V: (n, dv) -> (d, dv)."""
    if form == "chunked":
        return _write_arrays("delta", K, V, Params(eta=eta, passes=passes), "gram64")
    if form != "scan":
        raise ValueError(f"unknown delta form {form!r}; use 'chunked' or 'scan'")
    dtype = jnp.result_type(K.dtype, V.dtype, jnp.float32)
    K, V = K.astype(dtype), V.astype(dtype)

    def step(W, kv):
        k, v = kv
        norm = k @ k
        b = jnp.where(norm > 0, eta / jnp.where(norm > 0, norm, 1.0), 0.0)
        return W + b * jnp.outer(k, v - k @ W), None

    def epoch(_, W):
        return lax.scan(step, W, (K, V))[0]

    return lax.fori_loop(0, passes, epoch, jnp.zeros((K.shape[1], V.shape[1]), dtype))


def recall(W, Q):
    """Recall of a matrix memory: Q (q, d) @ W (d, dv) -> (q, dv)."""
    return Q @ W
