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

from kernels import names
from kernels.metrics import accumulate_dtype

METHODS = names.METHODS
# How each cell's solve went, stored per row (see METHOD_NAMES).
PRIMAL, DUAL, EIGH, QR, DIRECT = 0, 1, 2, 3, 4
METHOD_NAMES = ("gram64-cholesky", "gram64-dual-cholesky", "gram64-eigh", "qr32", "direct")
# Between d / PRECISE_RATIO^2 and PRECISE_RATIO d pairs, K is ill conditioned enough that Gram
# and recall run in float64 (see is_precise).
PRECISE_RATIO = 4
# A Cholesky pivot below this fraction of the largest diagonal means K is rank deficient.
_PIVOT_FLOOR = 1e-12
DELTA_BLOCK = 64
# Dual solves of n <= d / SMALL_DUAL pairs run at that size instead of d (see _dual_solve).
SMALL_DUAL = 8


class Params(NamedTuple):
    """Traced knobs of the rules, so one compiled program serves every value.

    lam: ridge lambda (absolute, added to K^T K). eta: delta-rule step relative to
    1/||k||^2 (eta = 1 is the classic normalised rule). passes: delta-rule epochs.
    min_norm: the pinv rule solves n < d pairs by the dual (the minimum-norm solution); False
    makes it the ridge rule at ``lam`` (so a sweep runs pinv and ridge cells in one program).
    """

    lam: jax.Array | float = 0.0  # pinv is ridge at lambda = 0; in the accumulation dtype (1e300 is valid)
    eta: jax.Array | float = names.default("eta")
    passes: jax.Array | int = names.default("passes")
    min_norm: jax.Array | bool = True


class Written(NamedTuple):
    """A written memory. W: (d, dv), in the accumulation dtype for pinv and ridge; ok: the
    solve succeeded (else fall back to eigh); method: index into METHOD_NAMES; gram (d, d)
    and cross (d, dv): kept for the fallback (None for rules that do not solve)."""

    W: jax.Array
    ok: jax.Array
    method: jax.Array
    gram: jax.Array | None = None
    cross: jax.Array | None = None


class First(NamedTuple):
    """The first pairs as stored: keys (rows, d), values (rows, dv), valid (rows,) (rows at
    or beyond n may hold anything: valid says which count). The dual solve reads the first
    d of them."""

    keys: jax.Array
    values: jax.Array
    valid: jax.Array


class Writer(NamedTuple):
    """Static description of a write: which rule, sizes, dtypes, and how to solve."""

    rule: str
    d: int
    dv: int
    chunk: int
    dtype: jnp.dtype
    method: str = "gram64"

    @property
    def wide(self) -> jnp.dtype:
        return accumulate_dtype(self.dtype)

    @property
    def uses_qr(self) -> bool:
        return self.method == "qr32" and RULES[self.rule].least_squares

    @property
    def can_fall_back(self) -> bool:
        """Whether a failed Cholesky can be redone by ``eigh_fallback`` (the Gram methods)."""
        return RULES[self.rule].least_squares and not self.uses_qr

    @property
    def first_rows(self) -> int:
        """Rows of First that finalize reads: the first d pairs for pinv's dual solve."""
        return self.d if self.rule == "pinv" and not self.uses_qr else 0


class Rule(NamedTuple):
    """One write rule: a fold over chunks of pairs, init -> update(chunk)* -> finalize.

    init(w, params) -> state; update(w, state, KV, precise, params) -> state, where KV
    (c, d + dv) holds the chunk's keys and values side by side (rows at or beyond n are zero);
    finalize(w, state, n, params, first: First) -> Written. write_flops(n, d, dv, passes):
    analytic floating-point operations of the write (multiply-add = 2). The knobs it reads
    and whether it solves least squares are declared once in ``kernels.names.MEMORIES`` (see
    ``knobs``, ``least_squares``)."""

    name: str
    init: Callable
    update: Callable
    finalize: Callable
    write_flops: Callable[[int, int, int, int], float]

    @property
    def knobs(self) -> tuple[str, ...]:
        return names.MEMORIES[self.name].knobs

    @property
    def least_squares(self) -> bool:
        """Solves K W ~ V: the float64 path, the methods and the fallback apply."""
        return names.MEMORIES[self.name].least_squares


def is_precise(rule: str, n, d: int):
    """Whether K is ill conditioned enough that this rule needs float64 Gram and recall: a
    Gaussian K (n, d) has cond(K) = (1 + sqrt(r)) / (1 - sqrt(r)), r = min(n, d) / max(n, d),
    so cond(K)^2 < 9 outside d / PRECISE_RATIO^2 < n < PRECISE_RATIO d, and float32 suffices
    there (the dual solve of n < d is float64 whatever this says)."""
    return RULES[rule].least_squares & (n * PRECISE_RATIO**2 > d) & (n < PRECISE_RATIO * d)


def default_method(backend: str | None = None, x64: bool | None = None) -> str:
    """gram64 where float64 exists (CPU, GPU with x64 on), else qr32 (TPU). backend, x64:
    JAX's unless given (bench.environment.auto_method also asks whether float64 is fast)."""
    backend = jax.default_backend() if backend is None else backend
    x64 = jax.config.jax_enable_x64 if x64 is None else x64
    return "gram64" if x64 and backend != "tpu" else "qr32"


# --- least squares (pinv, ridge): float64 Gram sums and Cholesky, or a streamed float32 QR ----


# Well-conditioned chunks' products K^T [K | V] are summed in float32 over at most this many
# rows (as one float32 matmul of that inner size would), then added to the float64 sums:
# converting and adding a float64 (d, d + dv) array per chunk was 15% of a large cell's time.
PARTIAL_ROWS = 8192


class Sums(NamedTuple):
    """State of the Gram methods: full = [K^T K | K^T V] in the accumulation dtype; partial:
    the float32 sum of the well-conditioned chunks since the last flush; count: chunks folded."""

    full: jax.Array
    partial: jax.Array
    count: jax.Array

    def total(self):
        return self.full + self.partial.astype(self.full.dtype)


def _ls_init(w: Writer, params: Params):
    if w.uses_qr:
        # Starting from R11 = sqrt(lam) I solves ridge: the QR of K stacked on sqrt(lam) I
        # (pinv: lam = 0, the minimum-norm solution by the cut-off in _qr_solve).
        eye = jnp.sqrt(jnp.asarray(ridge_lam(w, params), w.dtype)) * jnp.eye(w.d, dtype=w.dtype)
        return jnp.zeros((w.d + w.dv, w.d + w.dv), w.dtype).at[:w.d, :w.d].set(eye)
    shape = (w.d, w.d + w.dv)  # [K^T K | K^T V]
    return Sums(jnp.zeros(shape, w.wide), jnp.zeros(shape, w.dtype), jnp.int32(0))


def ridge_lam(w: Writer, params: Params):
    """The lambda a least-squares rule adds: ridge's; pinv's is 0 unless it runs as ridge
    (params.min_norm False)."""
    if w.rule == "ridge":
        return params.lam
    return jnp.where(jnp.asarray(params.min_norm, bool), 0.0, params.lam)


def _ls_update(w: Writer, state, KV, precise, params):
    if w.uses_qr:
        return jnp.linalg.qr(jnp.concatenate([state, KV]), mode="r")[:w.d + w.dv]
    K, wide = KV[:, :w.d], w.wide
    # Gram and cross term in one product K^T [K | V]. float32 products are exact in float64;
    # only ill-conditioned K pays for float64 sums, chunk by chunk. Well-conditioned chunks
    # (cond(K)^2 < 9) are summed in float32 over PARTIAL_ROWS rows at most, then flushed.
    full, part = lax.cond(precise, lambda: (state.full + K.astype(wide).T @ KV.astype(wide), state.partial),
                          lambda: (state.full, state.partial + K.T @ KV))
    if wide == w.dtype:
        return Sums(full, part, state.count + 1)
    flush = (state.count + 1) % max(1, PARTIAL_ROWS // w.chunk) == 0
    full, part = lax.cond(flush, lambda: (full + part.astype(wide), jnp.zeros_like(part)),
                          lambda: (full, part))
    return Sums(full, part, state.count + 1)


def _ls_finalize(ridge: bool):
    """finalize of pinv (minimum norm: the dual solve below d pairs, unless params.min_norm is
    False: then ridge at params.lam) or ridge (lam added)."""
    def finalize(w: Writer, state, n, params, first: First) -> Written:
        if w.uses_qr:
            return Written(_qr_solve(state, w.d, w.dtype), jnp.bool_(True), jnp.int32(QR))
        total = state.total()
        gram, cross = total[:, :w.d], total[:, w.d:]
        if ridge:
            W, ok = _cholesky_solve(gram + params.lam * jnp.eye(w.d, dtype=w.wide), cross)
            return Written(W, ok, jnp.int32(PRIMAL), gram, cross)
        lam = ridge_lam(w, params)  # 0 for pinv proper: adding it changes no bit
        primal = lambda: (*_cholesky_solve(gram + lam * jnp.eye(w.d, dtype=w.wide), cross), jnp.int32(PRIMAL))
        W, ok, how = lax.cond((n >= w.d) | ~jnp.asarray(params.min_norm, bool), primal,
                              lambda: (*_dual_solve(first, n, w.d, w.wide), jnp.int32(DUAL)))
        # W stays in the accumulation dtype: rounding it to float32 alone would cost cond(K) * eps.
        return Written(W, ok, how, gram, cross)
    return finalize


def _ls_flops(with_dual: bool):
    def flops(n, d, dv, passes):
        solve = (n**3 / 3 + 2 * n**2 * d + 2 * n * d * dv) if (with_dual and n < d) else (d**3 / 3 + 2 * d**2 * dv)
        return 2 * n * d * d + 2 * n * d * dv + solve
    return flops


# --- hebbian: W = K^T V ------------------------------------------------------------------------


def _hebbian_update(w: Writer, cross, KV, precise, params):
    return cross + (KV[:, :w.d].T @ KV[:, w.d:]).astype(w.wide)


# --- delta rule: pair by pair, a block at a time -------------------------------------------------


def _delta_update(w: Writer, W, KV, precise, params):
    K, V = KV[:, :w.d], KV[:, w.d:]
    valid = jnp.any(K != 0, axis=1)  # padding rows are zero and must not move W
    return _delta_chunk(W, K, V, valid, params.eta, w.dtype)


RULES: dict[str, Rule] = {rule.name: rule for rule in (
    Rule("pinv", _ls_init, _ls_update, _ls_finalize(ridge=False), _ls_flops(with_dual=True)),
    Rule(
        "hebbian", lambda w, p: jnp.zeros((w.d, w.dv), w.wide), _hebbian_update,
        lambda w, cross, n, p, first: Written(cross.astype(w.dtype), jnp.bool_(True), jnp.int32(DIRECT)),
        lambda n, d, dv, passes: 2 * n * d * dv),
    Rule("ridge", _ls_init, _ls_update, _ls_finalize(ridge=True), _ls_flops(with_dual=False)),
    Rule(
        "delta", lambda w, p: jnp.zeros((w.d, w.dv), w.dtype), _delta_update,
        lambda w, W, n, p, first: Written(W, jnp.bool_(True), jnp.int32(DIRECT)),
        lambda n, d, dv, passes: passes * (4 * n * d * dv + 2 * n * DELTA_BLOCK * (d + dv))),
)}
names.check_implemented("matrix memory", RULES, [m for m in names.MEMORIES if m != "attention"])


def fold(w: Writer, source: Callable, n, params: Params, carry=None):
    """Fold the first n pairs into the rule's state, a chunk at a time: source(j, carry) ->
    (pairs (c, d + dv): keys and values side by side, rows at or beyond n zeroed; carry).
    Side by side because the least-squares rules' product is K^T [K | V]: a source that
    draws them together hands over that array instead of two that the rule would concatenate
    into a copy. One loop, one random-number call site (inside ``source``). Returns (state,
    carry)."""
    if w.rule not in RULES:
        raise ValueError(f"unknown matrix memory {w.rule!r}; use one of {', '.join(RULES)}")
    if w.method not in METHODS:
        raise ValueError(f"unknown method {w.method!r}; use one of {', '.join(METHODS)}")
    rule = RULES[w.rule]
    num_chunks = (n + w.chunk - 1) // w.chunk
    precise = is_precise(w.rule, n, w.d)
    passes = params.passes if "passes" in rule.knobs else 1

    def body(t, loop):
        state, carry = loop
        pairs, carry = source(t % num_chunks, carry)
        return rule.update(w, state, pairs.astype(w.dtype), precise, params), carry

    return lax.fori_loop(0, num_chunks * passes, body, (rule.init(w, params), carry))


def finalize(w: Writer, state, n, params: Params, first: First) -> Written:
    """The memory from a folded state; ``first`` holds at least the first w.first_rows pairs."""
    return RULES[w.rule].finalize(w, state, n, params, first)


def eigh_fallback(written: Written, lam=0.0) -> Written:
    """The minimum-norm solution of (K^T K + lam I) W = K^T V by an eigenvalue pseudoinverse,
    for rank-deficient K (lam: ridge's, 0 for pinv; the fallback must solve the same problem)."""
    gram = written.gram
    d = gram.shape[0]
    evals, evecs = jnp.linalg.eigh(gram)
    evals = evals + jnp.asarray(lam, gram.dtype)
    cutoff = evals[-1] * max(d, 1) * jnp.finfo(gram.dtype).eps * 10
    inv = jnp.where(evals > cutoff, 1.0 / jnp.where(evals > cutoff, evals, 1.0), 0.0)
    W = evecs @ (inv[:, None] * (evecs.T @ written.cross))
    return written._replace(W=W, ok=jnp.bool_(True), method=jnp.int32(EIGH))


def _cholesky_solve(gram, rhs):
    factor = jnp.linalg.cholesky(gram)
    pivots = jnp.diagonal(factor) ** 2
    ok = jnp.all(jnp.isfinite(factor)) & (jnp.min(pivots) > _PIVOT_FLOOR * jnp.max(jnp.diagonal(gram)))
    return cho_solve((factor, True), rhs), ok


def _dual_solve(first: First, n, d: int, wide):
    """W = K^T (K K^T)^-1 V for n < d, from the first d stored pairs (all of them when n < d).
    Padded to d rows, except that n <= d / SMALL_DUAL solves at d / SMALL_DUAL rows: the padded
    float64 d x d solve was most of a small cell's time (70 of 170 ms at d = 1024, n = 4)."""
    def solve(rows: int):
        valid = first.valid[:rows]
        K = jnp.where(valid[:, None], first.keys[:rows], 0).astype(wide)
        V = jnp.where(valid[:, None], first.values[:rows], 0).astype(wide)
        # Padding rows are zero; a unit diagonal there keeps the dual Gram invertible and
        # leaves the solution untouched (those rows of V are zero).
        A, ok = _cholesky_solve(K @ K.T + jnp.diag((~valid).astype(wide)), V)
        return K.T @ A, ok

    small = d // SMALL_DUAL
    if small < 16:
        return solve(d)
    return lax.cond(n <= small, lambda: solve(small), lambda: solve(d))


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


def _write_arrays(rule, K, V, params, method):
    if K.ndim != 2 or V.ndim != 2 or K.shape[0] != V.shape[0]:
        raise ValueError(f"{rule}: expected K (n, d) and V (n, dv) with the same n, got {K.shape} and {V.shape}")
    dtype = jnp.result_type(K.dtype, V.dtype, jnp.float32)
    n, d = K.shape
    chunk = max(1, min(n, 256))
    method = default_method() if method == "auto" else method
    w = Writer(rule, d, V.shape[1], chunk, jnp.dtype(dtype), method)
    rows = max(-(-n // chunk) * chunk, d)  # whole chunks, and at least the d rows of a dual solve
    # Keys and values side by side, as fold's source hands them over; padded once.
    KVp = jnp.pad(jnp.concatenate([K.astype(dtype), V.astype(dtype)], axis=1), ((0, rows - n), (0, 0)))
    source = lambda j, carry: (lax.dynamic_slice_in_dim(KVp, j * chunk, chunk), carry)
    state, _ = fold(w, source, n, params)
    written = finalize(w, state, n, params, First(KVp[:, :d], KVp[:, d:], jnp.arange(rows) < n))
    if w.can_fall_back:
        written = lax.cond(written.ok, lambda: written, lambda: eigh_fallback(written, ridge_lam(w, params)))
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
