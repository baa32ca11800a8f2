"""Nested dictionaries: the generators make exactly the advertised structure, bad trees are
refused naming the path, and the attention read (kernels.nested) is exact with orthogonal keys
and top-1 selection, equals a float64 NumPy walk of the same dict in soft and sparse mode,
equals soft mode in top-k mode once the beam holds every node, and has gradients that match
finite differences."""

from __future__ import annotations

import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, strategies as st
from jax.test_util import check_grads

from kernels import nested as kn
from nested import build, flat, generate, learn, theory, validate


def _spec(form, depth=3, branching=4, **kw):
    return generate.TreeSpec(form, depth=depth, branching=branching, **kw)


# --- generators -------------------------------------------------------------------------------

@given(form=st.sampled_from(generate.FORMS), depth=st.integers(1, 4), branching=st.integers(1, 5),
       vary=st.booleans(), collision=st.sampled_from([0.0, 0.5, 1.0]), sharing=st.sampled_from([0.0, 0.5, 1.0]),
       seed=st.integers(0, 3))
def test_generated_trees_have_the_advertised_structure(form, depth, branching, vary, collision, sharing, seed):
    spec = generate.TreeSpec(form, depth, branching, vary, collision, sharing, seed)
    tree = generate.generate(spec)
    assert json.loads(json.dumps(tree)) == tree and generate.generate(spec) == tree  # JSON, deterministic
    assert validate.check(tree, rules=form == "dag") == depth  # reaches the full depth, obeys the rules

    def widths(node, level=0):
        yield level, len(node)
        for value in node.values():
            sub = validate._child(value, ())
            if sub is not None:
                yield from widths(sub, level + 1)

    for level, width in widths(tree):
        limit = min(branching, validate.RULE_WIDE) if form == "dag" and level == depth - 1 else branching
        assert 1 <= width <= limit
        if not vary and form in ("cartesian", "independent", "collision", "random"):
            assert width == branching


def test_cartesian_parents_hold_the_same_inner_dictionary_stored_once():
    tree = generate.generate(_spec("cartesian", depth=3, branching=3))
    inner = list(tree.values())
    assert all(x == inner[0] for x in inner)
    compiled = build.compile_tree(tree)
    assert [lev.keys.shape for lev in compiled.levels] == [(1, 3), (1, 3), (1, 3)]  # one node per level
    assert len(compiled.paths) == 27 and compiled.size == 9


def test_collision_keys_coincide_across_parents_with_different_values():
    tree = generate.generate(_spec("collision", depth=2, branching=4, collision=1.0))
    children = [v for v in tree.values() if isinstance(v, dict)]
    assert len(children) >= 2
    shared = set(children[0]) & set(children[1])
    assert shared  # the same inner key under two parents ...
    key = next(iter(shared))
    assert children[0][key] != children[1][key]  # ... meaning different things
    fresh = generate.generate(_spec("collision", depth=2, branching=4, collision=0.0))
    inner_keys = [set(v) for v in fresh.values() if isinstance(v, dict)]
    assert all(not (a & b) for i, a in enumerate(inner_keys) for b in inner_keys[i + 1:])  # no collision at 0


def test_dag_shares_sub_dictionaries_and_stores_them_once():
    spec = _spec("dag", depth=4, branching=5, sharing=1.0, seed=2)
    tree = generate.generate(spec)
    compiled = build.compile_tree(tree)
    copies = sum(1 for _ in _walk_dicts(tree))
    stored = sum(lev.keys.shape[0] for lev in compiled.levels)
    assert stored < copies  # shared sub-dictionaries are one node reachable by several paths
    reached_twice = any(np.bincount(lev.child[lev.child >= 0]).max() > 1 for lev in compiled.levels[:-1])
    assert reached_twice
    none = build.compile_tree(generate.generate(_spec("dag", depth=4, branching=5, sharing=0.0, seed=2)))
    assert sum(lev.keys.shape[0] for lev in none.levels) == sum(1 for _ in _walk_dicts(
        generate.generate(_spec("dag", depth=4, branching=5, sharing=0.0, seed=2))))


def _walk_dicts(node):
    yield node
    for value in node.values():
        sub = validate._child(value, ())
        if sub is not None:
            yield from _walk_dicts(sub)


@pytest.mark.parametrize("field, value, message", [
    ("form", "tree", "form 'tree': use one of cartesian"),
    ("depth", 0, "depth = 0: use 1..16"),
    ("branching", 0, "branching = 0"),
    ("collision", 1.5, "collision = 1.5: use a fraction in [0, 1]"),
    ("branching", 4096, "more than 2^24 leaves"),
])
def test_bad_specs_name_the_field(field, value, message):
    kw = {"form": "independent", "depth": 3, "branching": 4, field: value}
    with pytest.raises(ValueError, match=re.escape(message)):
        generate.TreeSpec(**kw)


# --- bad trees ---------------------------------------------------------------------------------

def _cyclic():
    a = {"x": "v"}
    a["self"] = a
    return a


@pytest.mark.parametrize("tree, message", [
    ({1: "v"}, "key 1 at the top level is a int; keys must be strings"),
    ({"a": {"b": {}}}, "empty level at a/b"),
    ({"a": 3.5}, "a holds float 3.5; a value is a string"),
    ({"a": ["q", "not a dict"]}, "a holds list"),
    ({"a": ["q", None, None]}, "a holds list"),
    (_cyclic(), "cycle at self"),
    ([], "must be a dict at the top, got list"),
])
def test_bad_trees_are_refused_naming_the_path(tree, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        validate.check(tree)


def test_depth_limit_and_json_files(tmp_path):
    deep = "v"
    for _ in range(20):
        deep = {"k": deep}
    with pytest.raises(ValueError, match="deeper than 16 levels"):
        validate.check(deep)
    assert validate.check(deep, max_depth=32) == 20
    path = tmp_path / "t.json"
    tree = generate.generate(_spec("dag"))
    validate.dump(tree, path)
    assert validate.load(path) == tree
    path.write_text("{not json")
    with pytest.raises(ValueError, match="is not JSON"):
        validate.load(path)
    path.write_text("[" * 100000 + "]" * 100000)
    with pytest.raises(ValueError, match="deeper than Python can read|must be a dict"):
        validate.load(path)
    with pytest.raises(ValueError, match="n_0: a key matching"):
        validate.check({"n_0": "v"}, rules=True)
    with pytest.raises(ValueError, match="has 5 keys and no nested value"):
        validate.check({f"k{i}": "v" for i in range(5)}, rules=True)


# --- reads ------------------------------------------------------------------------------------

def _setup(tree, d=None, dv=16, orthogonal=False, seed=0, dtype=np.float32):
    compiled = build.compile_tree(tree)
    if orthogonal:
        K = np.eye(len(compiled.key_symbols), dtype=dtype)
    else:
        K = build.gaussian_codebook(compiled.key_symbols, d, seed, dtype=dtype)
    V = build.gaussian_codebook(compiled.value_symbols, dv, seed + 1, dtype=dtype)
    return compiled, K, V, build.device_levels(compiled, K, V)


@pytest.mark.parametrize("form", generate.FORMS)
def test_orthogonal_keys_and_top_1_read_every_path_exactly(form):
    tree = generate.generate(_spec(form, depth=3, branching=3, seed=1, collision=1.0))
    compiled, K, V, levels = _setup(tree, orthogonal=True)
    paths, lengths, targets = build.query_paths(compiled, K)
    got = kn.read(levels, jnp.asarray(paths), jnp.asarray(lengths), mode="topk", k=1)
    np.testing.assert_array_equal(np.asarray(got.values), V[targets])
    # soft and sparse at a large beta agree (sparsemax is exact already at beta 2: a gap of 1)
    sparse = kn.read(levels, jnp.asarray(paths), jnp.asarray(lengths), mode="sparse", beta=2.0)
    np.testing.assert_allclose(np.asarray(sparse.values), V[targets], atol=1e-6)
    soft = kn.read(levels, jnp.asarray(paths), jnp.asarray(lengths), mode="soft", beta=60.0)
    np.testing.assert_allclose(np.asarray(soft.values), V[targets], atol=1e-5)


def _numpy_walk(tree, compiled, K, V, q, m, beta, mode):
    """float64 reference: recurse the Python dict itself (copies of shared nodes walked
    separately), softmax or sparsemax of beta * dot over each node's children."""
    kid = {s: i for i, s in enumerate(compiled.key_symbols)}
    vid = {s: i for i, s in enumerate(compiled.value_symbols)}

    def local(z):
        if mode == "soft":
            e = np.exp(z - z.max())
            return e / e.sum()
        zs = np.sort(z)[::-1]
        cum = np.cumsum(zs)
        k = np.arange(1, len(z) + 1)
        kz = k[1 + k * zs > cum].max()
        return np.maximum(z - (cum[kz - 1] - 1) / kz, 0)

    def walk(node, level, w):
        items = list(node.items())
        a = local(beta * np.array([q[level] @ K[kid[key]] for key, _ in items], np.float64))
        out = np.zeros(V.shape[1])
        for (key, value), aj in zip(items, a):
            sub = validate._child(value, ())
            symbol = value if isinstance(value, str) else (value[0] if isinstance(value, list) else None)
            if level == m - 1:
                if symbol is not None:
                    out += w * aj * V[vid[symbol]]
            elif sub is not None:
                out += walk(sub, level + 1, w * aj)
        return out

    return walk(tree, 0, 1.0)


@pytest.mark.parametrize("mode", ["soft", "sparse"])
@pytest.mark.parametrize("form", generate.FORMS)
def test_dense_modes_equal_a_float64_numpy_walk(form, mode):
    tree = generate.generate(_spec(form, depth=3, branching=3, seed=3, collision=0.5))
    compiled, K, V, levels = _setup(tree, d=8, dtype=np.float64)
    paths, lengths, _ = build.query_paths(compiled, K)
    noisy = paths + 0.3 * np.random.default_rng(0).standard_normal(paths.shape)  # soft, not one-hot weights
    got = np.asarray(kn.read(levels, jnp.asarray(noisy), jnp.asarray(lengths), mode=mode, beta=2.0).values)
    want = np.stack([_numpy_walk(tree, compiled, K, V, q, m, 2.0, mode) for q, m in zip(noisy, lengths)])
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
    got32 = kn.read(build.device_levels(compiled, K.astype(np.float32), V.astype(np.float32)),
                    jnp.asarray(noisy, jnp.float32), jnp.asarray(lengths), mode=mode, beta=2.0).values
    np.testing.assert_allclose(np.asarray(got32), want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("beta", [2.0, 10.0, 300.0, 1e12])
def test_soft_reads_shifted_by_the_score_bound_or_the_maximum_equal_the_numpy_walk(beta):
    """Soft mode shifts each node's exponents by the Cauchy-Schwarz bound on beta |s| where
    exp(-2 bound) stays normal (beta 2, 10 at d = 8: 2 bound < 79 in float32), and by the node's
    maximum beyond (beta 300; 1e12: the hard maximum): float32 reads of both kinds equal the
    float64 walk of the dict, and the two shifts give the same weights."""
    tree = generate.generate(_spec("independent", depth=3, branching=3, seed=3))
    compiled, K, V, _ = _setup(tree, d=8, dtype=np.float64)
    paths, lengths, _ = build.query_paths(compiled, K)
    noisy = paths + 0.3 * np.random.default_rng(0).standard_normal(paths.shape)
    widest_shift = 2 * beta * np.linalg.norm(noisy, axis=-1).max() * np.linalg.norm(K, axis=-1).max()
    assert (widest_shift < -np.log(np.finfo(np.float32).tiny) - 8) == (beta < 100)  # the branch meant
    levels32 = build.device_levels(compiled, K.astype(np.float32), V.astype(np.float32))
    got = kn.read(levels32, jnp.asarray(noisy, jnp.float32), jnp.asarray(lengths), mode="soft", beta=beta)
    want = np.stack([_numpy_walk(tree, compiled, K, V, q, m, beta, "soft") for q, m in zip(noisy, lengths)])
    np.testing.assert_allclose(np.asarray(got.values), want, rtol=1e-4, atol=2e-5)
    assert np.all(np.isfinite(np.asarray(got.mass)))
    rng = np.random.default_rng(1)
    s = jnp.asarray(rng.uniform(-1, 1, (5, 4, 6)), jnp.float32)
    mask = jnp.asarray(rng.random((4, 6)) < 0.7).at[2].set(False)  # node 2: no valid child
    parent = jnp.asarray(rng.random((5, 4)), jnp.float32)
    bound = jnp.full((5, 4), 30.0, jnp.float32)  # |beta s| <= 30 for beta 30
    shifted = kn._bounded_children(30.0 * s, mask, parent, bound)
    by_max = kn._weighted_children("soft", s, mask, parent, jnp.float32(30.0))
    for a, b in zip(shifted, by_max):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-6, atol=1e-12)
    assert float(jnp.abs(shifted[0][:, 2]).max()) == 0.0 and float(jnp.abs(shifted[1][:, 2]).max()) == 0.0


@pytest.mark.parametrize("form", ["cartesian", "independent"])
def test_top_k_with_the_whole_level_in_the_beam_equals_soft(form):
    tree = generate.generate(_spec(form, depth=3, branching=3, seed=4))
    compiled, K, V, levels = _setup(tree, d=8)
    paths, lengths, _ = build.query_paths(compiled, K)
    noisy = jnp.asarray(paths + 0.3 * np.random.default_rng(1).standard_normal(paths.shape).astype(np.float32))
    soft = kn.read(levels, noisy, jnp.asarray(lengths), mode="soft", beta=2.0)
    # a beam holds paths, not nodes (a node reached by several paths fills several entries)
    prefixes = {keys[:i] for keys, _ in compiled.paths for i in range(1, len(keys) + 1)}
    widest = max(np.bincount([len(p) for p in prefixes]))
    beam = kn.read(levels, noisy, jnp.asarray(lengths), mode="topk", beta=2.0, k=int(widest))
    # top-k renormalises over the paths it read out; soft keeps the weight that reached the level
    np.testing.assert_allclose(np.asarray(beam.mass), np.asarray(soft.mass), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(beam.values) * np.asarray(beam.mass)[:, None], np.asarray(soft.values),
                               rtol=1e-4, atol=1e-6)
    if form == "cartesian":  # every path reaches the read-out level: no renormalisation at all
        np.testing.assert_allclose(np.asarray(soft.mass), 1.0, rtol=1e-5)
        np.testing.assert_allclose(np.asarray(beam.values), np.asarray(soft.values), rtol=1e-4, atol=1e-6)
    smaller = kn.read(levels, noisy, jnp.asarray(lengths), mode="topk", beta=2.0, k=2)
    assert np.abs(np.asarray(smaller.values) - np.asarray(beam.values)).max() > 1e-3  # a narrow beam differs


@pytest.mark.parametrize("mode, k", [("soft", 1), ("sparse", 1), ("topk", 2)])
def test_gradients_match_finite_differences(mode, k):
    tree = generate.generate(_spec("collision", depth=2, branching=3, seed=5, collision=0.5))
    compiled, K, V, levels = _setup(tree, d=6, dv=4, dtype=np.float64)
    paths, lengths, targets = build.query_paths(compiled, K, which=range(4))
    rng = np.random.default_rng(2)
    queries = jnp.asarray(paths + 0.2 * rng.standard_normal(paths.shape))
    lengths = jnp.asarray(lengths)

    def loss(queries, keys0, values1):
        lv = list(levels)
        lv[0] = lv[0]._replace(keys=keys0)
        lv[1] = lv[1]._replace(values=values1)
        out = kn.read(tuple(lv), queries, lengths, mode=mode, beta=1.5, k=k).values
        return jnp.sum((out - V[targets]) ** 2)

    args = (queries, levels[0].keys, levels[1].values)
    check_grads(loss, args, order=1, modes=["rev"], atol=1e-6, rtol=1e-6, eps=1e-6)
    grads = jax.grad(loss, argnums=(0, 1, 2))(*args)
    assert all(bool(jnp.all(jnp.isfinite(g))) and float(jnp.abs(g).max()) > 0 for g in grads)


def test_bad_read_arguments():
    compiled, K, V, levels = _setup(generate.generate(_spec("independent", depth=2, branching=2)), d=4)
    paths, lengths, _ = build.query_paths(compiled, K)
    for kw, message in (({"mode": "hard"}, "unknown mode 'hard'"), ({"similarity": "l3"}, "unknown similarity"),
                        ({"mode": "topk", "k": 0}, "k = 0")):
        with pytest.raises(ValueError, match=message):
            kn.read(levels, jnp.asarray(paths), jnp.asarray(lengths), **kw)
    with pytest.raises(ValueError, match=r"paths must be \(Q, 2, d\)"):
        kn.read(levels, jnp.asarray(paths[:, :1]), jnp.asarray(lengths))


# --- flat baselines -----------------------------------------------------------------------------

def test_compositions():
    rng = np.random.default_rng(0)
    paths = rng.standard_normal((5, 3, 8))
    lengths = np.array([3, 3, 2, 1, 3])
    s = flat.compose(paths, lengths, "sum")
    np.testing.assert_allclose(s[0], paths[0].sum(0))
    np.testing.assert_allclose(s[3], paths[3, 0])  # levels past the length do not count
    swapped = paths[:, [1, 0, 2]]
    np.testing.assert_allclose(flat.compose(swapped, lengths, "sum")[0], s[0])  # bundling is order-blind ...
    assert not np.allclose(flat.compose(swapped, lengths, "hadamard")[0], flat.compose(paths, lengths, "hadamard")[0])
    c = flat.compose(paths, lengths, "concat")
    assert c.shape == (5, 24) and np.all(c[2, 16:] == 0) and np.allclose(c[0, 8:16], paths[0, 1])
    circ = flat.compose(paths, lengths, "circular")
    two = np.real(np.fft.ifft(np.fft.fft(paths[2, 0]) * np.fft.fft(paths[2, 1])))  # circular convolution
    np.testing.assert_allclose(circ[2], two, atol=1e-12)
    np.testing.assert_allclose(circ[3], paths[3, 0], atol=1e-12)  # one level: itself
    with pytest.raises(ValueError, match="unknown composition 'xor'"):
        flat.compose(paths, lengths, "xor")


def _metrics(out, V, targets):
    out = np.asarray(out, np.float64)
    want = V[targets]
    cos = np.sum(out * want, 1) / (np.linalg.norm(out, axis=1) * np.linalg.norm(want, axis=1))
    return cos.mean(), np.mean(np.argmax(out @ V.T - 0.5 * np.sum(V * V, 1), 1) == targets)


def test_flat_baselines_where_they_must_be_exact_and_where_they_cannot_be():
    # fresh keys, fewer paths than L d: concatenated keys are independent, so the pseudoinverse is exact
    tree = build.compile_tree(generate.generate(_spec("independent", depth=3, branching=4, seed=1)))
    K = build.gaussian_codebook(tree.key_symbols, 32, 0)
    V = build.gaussian_codebook(tree.value_symbols, 32, 1)
    paths, lengths, targets = build.query_paths(tree, K)
    assert len(targets) < 3 * 32
    C = flat.compose(paths, lengths, "concat").astype(np.float32)
    cos, acc = _metrics(flat.flat_pinv(C, V[targets], C), V, targets)
    assert cos > 0.9999 and acc == 1.0
    # every key coincides across parents: concatenations span only depth x branching dimensions, and
    # a linear memory of them cannot tell paths apart; the nested read can
    tree = build.compile_tree(generate.generate(_spec("collision", depth=3, branching=4, collision=1.0, seed=1)))
    K = build.gaussian_codebook(tree.key_symbols, 32, 0)
    V = build.gaussian_codebook(tree.value_symbols, 32, 1)
    paths, lengths, targets = build.query_paths(tree, K)
    C = flat.compose(paths, lengths, "concat").astype(np.float32)
    assert np.linalg.matrix_rank(C) <= len(tree.key_symbols) < len(targets)
    cos, _ = _metrics(flat.flat_pinv(C, V[targets], C), V, targets)
    assert cos < 0.7
    nested_read = kn.read(build.device_levels(tree, K, V), jnp.asarray(paths), jnp.asarray(lengths), mode="topk", k=1)
    assert _metrics(nested_read.values, V, targets)[1] == 1.0


def test_stacked_reads_walk_the_tree_with_hard_selection():
    tree = build.compile_tree(generate.generate(_spec("collision", depth=3, branching=3, collision=1.0, seed=2)))
    K = np.eye(len(tree.key_symbols), 48, dtype=np.float32)
    V = build.gaussian_codebook(tree.value_symbols, 48, 1)
    memory = flat.stacked_memory(tree, K, V, seed=3)
    assert len(memory.keys) == tree.size
    paths, lengths, targets = build.query_paths(tree, K)
    out = flat.stacked_read(memory, paths, lengths, separation="max")
    np.testing.assert_allclose(out, V[targets], atol=1e-5)  # each read lands on the right slot
    with pytest.raises(ValueError, match="values need d = 48 coordinates"):
        flat.stacked_memory(tree, K, V[:, :16])


# --- learning through the read ------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["soft", "sparse", "topk"])
def test_a_learned_projection_retrieves_every_collision_path(mode):
    """Queries through a random rotation: the identity projection finds almost no leaf; 150
    Adam steps through the read find every one (fixed seed), in every mode."""
    curve = learn.learn(mode, steps=150)
    assert curve.accuracy[0] <= 0.1 and curve.accuracy[-1] == 1.0
    assert curve.loss[-1] < 0.1 * curve.loss[0] and all(np.isfinite(curve.loss))


def test_a_sharp_start_stalls_sparse_selection_but_not_soft():
    """At beta 4 sparsemax's support is one branch: the others get no gradient, and learning stalls."""
    assert learn.learn("soft", beta=4.0, steps=60).accuracy[-1] == 1.0
    assert learn.learn("sparse", beta=4.0, steps=60).accuracy[-1] < 0.5


def test_parent_gather_equals_the_scatter_and_counts_every_parent_of_a_shared_node():
    tree = generate.generate(_spec("dag", depth=4, branching=5, sharing=1.0, seed=2))
    compiled, K, V, levels = _setup(tree, d=8)
    assert max(lev.parents.shape[1] for lev in levels[1:]) > 1  # some node has several parents
    for l in range(1, len(levels)):
        above = compiled.levels[l - 1].child.reshape(-1)
        for node, slots in enumerate(np.asarray(levels[l].parents)):
            assert sorted(s for s in slots if s >= 0) == sorted(np.flatnonzero(above == node))
    paths, lengths, _ = build.query_paths(compiled, K)
    scatter = tuple(lev._replace(parents=None) for lev in levels)
    for mode in ("soft", "sparse"):
        a = kn.read(levels, jnp.asarray(paths), jnp.asarray(lengths), mode=mode, beta=2.0)
        b = kn.read(scatter, jnp.asarray(paths), jnp.asarray(lengths), mode=mode, beta=2.0)
        np.testing.assert_allclose(np.asarray(a.values), np.asarray(b.values), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("branching, d, beta, depth", [(8, 256, 2.0, 3), (16, 256, 3.0, 3), (32, 128, 2.0, 2),
                                                       (8, 64, 1.0, 3), (4, 512, 1.5, 4)])
def test_soft_weight_on_the_true_path_follows_the_mean_field_product(branching, d, beta, depth):
    """One-hot values make the read's value at the target exactly the path weight on the true
    leaf; its mean over the paths of each length (50 or more) is within 10% of p^length."""
    tree = build.compile_tree(generate.generate(_spec("independent", depth=depth, branching=branching, seed=0)))
    K = build.gaussian_codebook(tree.key_symbols, d, 0)
    V = np.eye(len(tree.value_symbols), dtype=np.float32)
    paths, lengths, targets = build.query_paths(tree, K)
    out = np.asarray(kn.read(build.device_levels(tree, K, V), jnp.asarray(paths), jnp.asarray(lengths), mode="soft",
                             beta=beta).values)
    weight = out[np.arange(len(targets)), targets]
    checked = 0
    for m in set(lengths.tolist()):
        here = lengths == m
        if here.sum() >= 50:
            want = theory.true_path_weight(m, branching, d, beta)
            assert abs(weight[here].mean() - want) <= 0.1 * want, (m, weight[here].mean(), want)
            checked += 1
    assert checked >= 1
    assert theory.level_weight(1, d, beta) == 1.0 and theory.true_path_weight(0, branching, d, beta) == 1.0
