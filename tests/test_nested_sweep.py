"""The nested-dictionary sweep (run_all.py --nested): padded reads equal unpadded ones, every
row's metrics equal a float64 NumPy computation of the same read, the weight on the true path
equals the one-hot read, the theories of greedy and beam selection and of the flat pinv memory
hold, sharing and drawn branching are axes, bad flags are one line and exit
2, and a run writes rows for every form and reader, resumes, and reports."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import subprocess
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bench import cli, nested_report, nested_sweep as ns, pipeline, spec as specs, store
from bench.spec import SweepSpec
from kernels import nested as kn
from nested import build, flat, generate, theory
from tests.conftest import PYTHON, REPO, run_env


def _cell(form="independent", mode="soft", depth=3, branching=4, d=16, k=None, composition=None, beta=4.0,
          queries=1024):
    return ns.NestedCell(form, depth, branching, 1.0 if form in ("collision", "random") else 0.0, d, mode,
                         composition, "dot", None if mode == "flat_pinv" else beta, k,
                         min(queries, ns.max_slots(depth, branching)), "float32")


def test_the_spec_knows_the_forms_readers_and_compositions():
    assert specs._FORMS == generate.FORMS and specs._READERS == ns.READERS
    assert specs._COMPOSITIONS == flat.COMPOSITIONS


@pytest.mark.parametrize("form", generate.FORMS)
@pytest.mark.parametrize("mode,k", [("soft", None), ("sparse", None), ("topk", 1), ("topk", 3)])
def test_padded_levels_read_as_the_tree_itself(form, mode, k):
    """Padding every seed to its family's shape (more nodes, wider levels, scatter instead of
    gather) changes no read, and the target slots follow the renumbering."""
    cell = _cell(form, mode, k=k)
    f = ns.family_of(cell)
    data = ns.seed_data(form, 3, 4, cell.collision, 16, cell.queries, 1)
    x = ns.inputs(f, data, 1, np.float32)
    padded_out, padded_target = ns.read_program(f)(x, jnp.float32(4.0))
    levels = build.device_levels(data.tree, data.keys, data.values)
    direct = kn.read(levels, jnp.asarray(data.paths), jnp.asarray(data.lengths), mode=mode, beta=4.0, k=k or 1,
                     targets=jnp.asarray(data.slots))
    q = len(data.targets)
    np.testing.assert_allclose(np.asarray(padded_out)[:q], np.asarray(direct.values), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(padded_target)[:q], np.asarray(direct.target), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mode,k", [("soft", 1), ("sparse", 1), ("topk", 4096)])
def test_the_weight_on_the_target_slot_is_the_one_hot_read(mode, k):
    """Read.target equals the read of one-hot values at the target (the path weight there);
    top-k with the whole tree in the beam gives the soft weights."""
    tree = build.compile_tree(generate.generate(generate.TreeSpec("dag", depth=3, branching=4, seed=3)))
    K = build.gaussian_codebook(tree.key_symbols, 8, 0)
    onehot = np.eye(len(tree.value_symbols), dtype=np.float32)
    paths, lengths, targets = build.query_paths(tree, K)
    levels = build.device_levels(tree, K, onehot)
    r = kn.read(levels, jnp.asarray(paths), jnp.asarray(lengths), mode=mode, beta=2.0, k=k,
                targets=jnp.asarray(build.target_slots(tree)))
    # the dense reads blend by path weight itself; the beam renormalises over its k (so: soft's)
    dense = kn.read(levels, jnp.asarray(paths), jnp.asarray(lengths), mode="soft" if mode == "topk" else mode, beta=2.0)
    want = np.asarray(dense.values)[np.arange(len(targets)), targets]
    np.testing.assert_allclose(np.asarray(r.target), want, rtol=1e-5, atol=1e-7)
    assert np.all(np.asarray(r.target) > 0)


def _numpy_metrics(out, V, targets):
    out, V = np.asarray(out, np.float64), np.asarray(V, np.float64)
    true = V[targets]
    cos = np.sum(out * true, 1) / (np.linalg.norm(out, axis=1) * np.linalg.norm(true, axis=1))
    nearest = np.argmin(((out[:, None, :] - V[None]) ** 2).sum(-1), 1)
    return cos, np.linalg.norm(out - true, axis=1), nearest == targets


@pytest.mark.parametrize("mode,composition,k", [("soft", None, None), ("topk", None, 2), ("flat_attention", "concat", None),
                                                ("flat_pinv", "hadamard", None), ("stacked", None, None)])
def test_row_metrics_equal_a_float64_numpy_computation(mode, composition, k):
    """A cell's rows: cosine, distance and nearest-value accuracy recomputed in float64 NumPy
    from the unpadded read of the same tree (the flat readers from nested.flat's own
    functions), and the analytic columns."""
    cell = _cell("collision", mode, depth=2, branching=5, d=12, k=k, composition=composition)
    rows = ns.measure(cell, 2, ns._Compiled(), "test")
    assert [r["status"] for r in rows] == ["ok", "ok"], rows[0].get("error")
    for seed, row in enumerate(rows):
        data = ns.seed_data(cell.form, 2, 5, 1.0, 12, cell.queries, seed)
        tree, K, V = data.tree, data.keys, data.values
        if mode in ns.HIERARCHICAL:
            out = kn.read(build.device_levels(tree, K, V), jnp.asarray(data.paths), jnp.asarray(data.lengths),
                          mode=mode, beta=4.0, k=k or 1).values
        elif mode == "stacked":
            out = flat.stacked_read(flat.stacked_memory(tree, K, V, seed), data.paths, data.lengths, beta=4.0)
        else:
            all_paths, all_lengths, all_targets = build.query_paths(tree, K)
            stored = flat.compose(all_paths, all_lengths, composition, seed).astype(np.float32)
            queries = flat.compose(data.paths, data.lengths, composition, seed).astype(np.float32)
            out = (flat.flat_attention(stored, V[all_targets], queries, beta=4.0) if mode == "flat_attention"
                   else flat.flat_pinv(stored, V[all_targets], queries))
        cos, dist, hit = _numpy_metrics(out, V, data.targets)
        assert row["n"] == len(tree.paths) and row["acc_queries"] == len(data.targets)
        assert row["cos_mean"] == pytest.approx(cos.mean(), abs=2e-5)
        assert row["dist_mean"] == pytest.approx(dist.mean(), abs=2e-5)
        assert row["acc"] == pytest.approx(hit.mean(), abs=1e-12)
        assert row["kernel"] == "nested" and row["mode"] == mode and row["composition"] == composition
        assert row["read_s"] > 0 and row["flops"] > 0 and row["gflops"] > 0
        assert (row["path_mass"] is None) == (mode not in ns.HIERARCHICAL)


def test_greedy_selection_follows_its_theory():
    """Top-1 reads at d = 8 (where greedy selection misses): the share of paths read right,
    over 40 trees, within 0.03 of s^m (nested.theory), and s itself against a Monte Carlo."""
    rng = np.random.default_rng(0)
    k = rng.standard_normal((100_000, 8)) / np.sqrt(8)
    sib = rng.standard_normal((100_000, 3, 8)) / np.sqrt(8)
    hit = np.mean(((sib * k[:, None]).sum(-1) < (k * k).sum(-1)[:, None]).all(1))
    assert theory.greedy_level_hit(4, 8) == pytest.approx(hit, abs=0.003)
    right, want = [], []
    family = ns.family_of(_cell("independent", "topk", depth=3, branching=4, d=8, k=1))
    program = jax.jit(ns.read_program(family))  # every tree padded to one shape: one compilation
    for seed in range(40):
        data = ns.seed_data("independent", 3, 4, 0.0, 8, family.queries, seed)
        out, _ = program(ns.inputs(family, data, seed, np.float32), jnp.float32(4.0))
        right += list(np.all(np.asarray(out)[:len(data.targets)] == data.values[data.targets], axis=1))
        want += [theory.greedy_path_hit(int(m), 4, 8) for m in data.lengths]
    assert np.mean(right) == pytest.approx(np.mean(want), abs=0.03)
    assert theory.greedy_level_hit(1, 8) == 1.0 and theory.greedy_level_hit(8, 64) > 0.999999


def test_path_competitors_count_the_siblings_a_selective_read_weighs():
    """Above a path's last key only the siblings that nest compete (a read descends only through
    those); at its last key every other slot of the node; -1 past the end."""
    tree = build.compile_tree({"a": {"x": "v1", "y": {"p": "v2"}}, "b": "v3", "c": {"z": "v4"}, "d": "v5"})
    competitors = dict(zip((tuple(tree.key_symbols[k] for k in keys) for keys, _ in tree.paths),
                           build.path_competitors(tree).tolist()))
    assert competitors == {("a", "x"): [1, 1, -1], ("a", "y", "p"): [1, 0, 0], ("b",): [3, -1, -1],
                           ("c", "z"): [1, 0, -1], ("d",): [3, -1, -1]}


def test_a_wider_beam_keeps_the_true_path_between_its_two_products():
    """Beams of k = 2 and 4 over 30 independent-form trees at d = 4, 8 (where they lose paths):
    the share of paths whose true slot keeps weight lies between the pessimistic product and
    the sibling-only one (nested.theory), within 0.02; s_k itself against a Monte Carlo; k = 1
    reduces to the greedy formula; a beam as wide as the siblings never loses the path there."""
    rng = np.random.default_rng(0)
    key = rng.standard_normal((200_000, 8)) / np.sqrt(8)
    sib = rng.standard_normal((200_000, 7, 8)) / np.sqrt(8)
    beaten = ((sib * key[:, None]).sum(-1) > (key * key).sum(-1)[:, None]).sum(1)
    assert theory.beam_level_hit(7, 8, 2) == pytest.approx(np.mean(beaten <= 1), abs=0.003)
    assert theory.beam_level_hit(7, 8, 1) == pytest.approx(theory.greedy_level_hit(8, 8), rel=1e-12)
    assert theory.beam_level_hit(3, 4, 4) == 1.0 and theory.beam_path_hit([-1, -1], 4, 2) == 1.0
    gaps = []
    for d in (4, 8):
        for k in (2, 4):
            cell = _cell("independent", "topk", depth=3, branching=8, d=d, k=k, queries=4096)
            family = ns.family_of(cell)
            program = jax.jit(ns.read_program(family))
            kept, high, low = [], [], []
            for seed in range(30):
                data = ns.seed_data("independent", 3, 8, 0.0, d, family.queries, seed)
                _, weight = program(ns.inputs(family, data, seed, np.float32), jnp.float32(4.0))
                kept += list(np.asarray(weight)[:len(data.targets)] > 0)
                t = ns.theory_values(cell, data, seed)
                high.append(t.hit)
                low.append(t.hit_low)
            measured, high, low = np.mean(kept), np.mean(high), np.mean(low)
            assert low - 0.02 <= measured <= high + 0.02, (d, k, low, measured, high)
            gaps.append(high - low)
    assert max(gaps) > 0.1  # at d = 4 the bracket is wide: the test would catch a beam outside it


def test_the_flat_pinv_memory_follows_its_leverage_theory():
    """The flat pinv rows' cosine against the mean sqrt(leverage) of the composite keys: within
    0.03 over 12 trees for circular binding (independent composites: rank = min(P, d)) and for
    summed keys of the collision form (rank far below P: paths (a, c), (b, c) ... are linearly
    dependent; the float32 rounding of those sums is not counted as rank)."""
    programs = ns._Compiled()
    for form, composition, d in (("independent", "circular", 16), ("collision", "sum", 16), ("random", "sum", 32)):
        cell = _cell(form, "flat_pinv", depth=3, branching=4, d=d, composition=composition)
        rows = ns.measure(cell, 12, programs, "t")
        measured = np.mean([r["cos_mean"] for r in rows])
        predicted = np.mean([r["theory_cos"] for r in rows])
        assert measured == pytest.approx(predicted, abs=0.03), (form, composition, measured, predicted)
        paths, lengths, _ = ns.seed_data(form, 3, 4, cell.collision, d, cell.queries, 0).stored
        t = theory.flat_pinv(flat.compose(paths, lengths, composition, 0))
        assert t.cos <= t.bound + 1e-12
        if composition == "circular":
            assert t.rank == min(len(paths), d)  # generic: the whole key space
        else:
            assert t.rank < min(len(paths), d)  # the bundling capacity coinciding keys cost
    exact = theory.flat_pinv(np.random.default_rng(0).standard_normal((10, 16)))
    assert exact.rank == 10 and exact.cos == pytest.approx(1.0) and exact.bound == 1.0
    assert math.isnan(theory.flat_pinv(np.zeros((0, 4))).cos)
    # no theory where a value is shared by several paths
    assert ns.measure(_cell("dag", "flat_pinv", composition="circular"), 1, programs, "t")[0]["theory_cos"] is None


def test_sharing_and_drawn_branching_are_sweep_axes(tmp_path):
    """--sharing (dag form only) and --vary-branching are axes: cells, rows and report tables
    for each value; the trees differ as generated; cells at the settings of older runs keep
    their ids (resume); a run of flat_pinv alone (no beta) builds its report."""
    spec = SweepSpec.from_preset("nested", form=("independent", "dag"), depth=(2,), branching=(4,), d=(8,),
                                 seeds=1, sharing=(0.0, 1.0), vary_branching=(False, True), mode=("topk", "flat_pinv"),
                                 composition=("circular",), beta=(4.0,), topk=(2,))
    cells = ns.cells(spec)
    assert {(c.form, c.sharing, c.vary_branching) for c in cells} == {
        ("independent", None, False), ("independent", None, True), ("dag", 0.0, False), ("dag", 0.0, True),
        ("dag", 1.0, False), ("dag", 1.0, True)} and len(cells) == 2 * 6 == spec.row_count()
    old = dataclasses.replace(cells[0], sharing=None, vary_branching=False)
    blob = {"kernel": "nested", **{k: v for k, v in dataclasses.asdict(old).items()
                                   if k not in ("sharing", "vary_branching")}}
    assert old.id == hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:16]
    assert dataclasses.replace(old, form="dag", sharing=ns.DEFAULT_SHARING).id != dataclasses.replace(
        old, form="dag", sharing=1.0).id != dataclasses.replace(old, vary_branching=True).id
    drawn = ns.seed_data("independent", 2, 4, 0.0, 8, 20, 0, None, True).tree
    widths = {int((lev.keys[n] >= 0).sum()) for lev in drawn.levels[1:] for n in range(lev.keys.shape[0])}
    assert len(widths) > 1 and max(widths) <= 4
    shared, fresh = (ns.seed_data("dag", 3, 4, 0.0, 8, 20, 0, s).tree for s in (1.0, 0.0))
    assert len(shared.levels[2].keys) < len(fresh.levels[2].keys)  # shared sub-dictionaries stored once
    run = pipeline.start(spec, tmp_path, ["test"], compile_cache=None)
    pipeline.execute(run, report=True, progress=False)
    df = store.load_results(run.run_dir)
    assert (df["status"] == "ok").all() and len(df) == len(cells)
    assert set(df[df["form"] == "dag"]["sharing"]) == {0.0, 1.0} and df[df["form"] != "dag"]["sharing"].isna().all()
    assert set(df["vary_branching"]) == {False, True}
    beam = df[df["mode"] == "topk"]
    assert beam["path_hit"].between(0, 1).all() and (beam["path_hit_theory_low"] <= beam["path_hit_theory"]).all()
    text = (run.run_dir / "report.md").read_text()
    assert "## Sharing: accuracy per reader" in text and "## Drawn branching: accuracy per reader" in text
    assert "top-k (k > 1): beam keeps the path" in text and "flat pinv: cosine (leverage)" in text
    alone = SweepSpec.from_preset("nested", form=("independent",), depth=(2,), branching=(3,), d=(8,), seeds=1,
                                  mode=("flat_pinv",), composition=("sum",))
    lone = pipeline.start(alone, tmp_path / "alone", ["test"], compile_cache=None)
    pipeline.execute(lone, report=True, progress=False)
    assert (lone.run_dir / "report.md").is_file()


def test_flat_read_ignores_padding_and_equals_flat_attention():
    rng = np.random.default_rng(1)
    keys, values, queries = (rng.standard_normal(s).astype(np.float32) for s in ((30, 8), (30, 5), (7, 8)))
    want = np.asarray(flat.flat_attention(keys, values, queries, beta=3.0))
    padded = kn.flat_read(jnp.asarray(np.concatenate([keys, 100 * np.ones((10, 8), np.float32)])),
                          jnp.asarray(np.concatenate([values, np.ones((10, 5), np.float32)])),
                          jnp.asarray(np.arange(40) < 30), jnp.asarray(queries), beta=3.0)
    np.testing.assert_allclose(np.asarray(padded), want, rtol=1e-5, atol=1e-6)
    huge = kn.flat_read(jnp.asarray(keys), jnp.asarray(values), jnp.ones(30, bool), jnp.asarray(queries), beta=1e12)
    assert np.all(np.isfinite(np.asarray(huge)))  # beta 1e12: the hard maximum, never NaN


BAD = [
    (["--form", "cartesian"], "--form applies to nested dictionaries; add --nested"),
    (["--depth", "3"], "--depth applies to nested dictionaries; add --nested"),
    (["--nested", "--kernels", "pinv"], "--kernels applies to the memory grid, not to --nested"),
    (["--nested", "--n", "4"], "--n applies to the memory grid"),
    (["--nested", "--separation", "topk"], "--separation applies to the memory grid"),
    (["--nested", "--preset", "quick"], "--nested is its own preset; drop --preset quick"),
    (["--nested", "--form", "tree"], "form: unknown form 'tree'"),
    (["--nested", "--mode", "hard"], "mode: unknown mode 'hard'"),
    (["--nested", "--composition", "xor"], "composition: unknown composition 'xor'"),
    (["--nested", "--depth", "9"], "depth: 9 is more levels"),
    (["--nested", "--depth", "0"], "depth: 0 is not a positive integer"),
    (["--nested", "--branching", "5000"], "branching: 5000 keys per node"),
    (["--nested", "--depth", "5", "--branching", "16"], "is more than the 262144 a sweep cell holds"),
    (["--nested", "--collision", "1.5"], "collision: 1.5 is not allowed"),
    (["--nested", "--collision", "nan"], "collision: nan is not allowed"),
    (["--nested", "--similarity", "dot,euclidean"], "give one similarity for --nested"),
    (["--nested", "--beta", "0"], "beta: 0.0 is not allowed"),
    (["--nested", "--topk", "0"], "topk: 0 is not a positive integer"),
    (["--nested", "--distributed"], "--nested runs in one process"),
    (["--sharing", "0.5"], "--sharing applies to nested dictionaries; add --nested"),
    (["--vary-branching", "yes"], "--vary-branching applies to nested dictionaries; add --nested"),
    (["--nested", "--sharing", "-0.1"], "sharing: -0.1 is not allowed"),
    (["--nested", "--sharing", "inf"], "sharing: inf is not allowed"),
    (["--nested", "--vary-branching", "maybe"], "'maybe' is not yes or no"),
    (["--nested", "--vary-branching", "yes,yes"], "vary_branching: [True, True] repeats a value"),
]


@pytest.mark.parametrize("argv,message", BAD)
def test_bad_nested_flags_are_one_line_exit_2_and_nothing_written(argv, message, tmp_path, capsys):
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        cli.main([*argv, "--out", str(out)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert not out.exists()


TINY = dict(depth=(2,), branching=(3,), d=(8,), seeds=2, beta=(4.0,), topk=(1,), composition=("sum", "concat"))


@pytest.fixture(scope="module")
def nested_run(tmp_path_factory):
    spec = SweepSpec.from_preset("nested", **TINY)
    run = pipeline.start(spec, tmp_path_factory.mktemp("nested"), ["test"], compile_cache=None)
    pipeline.execute(run, report=True, progress=False)
    return run.run_dir


@pytest.mark.xdist_group("nested_run")
def test_a_nested_run_writes_rows_for_every_form_and_reader(nested_run):
    df = store.load_results(nested_run)
    manifest = store.read_manifest(nested_run)
    assert (df["status"] == "ok").all()
    assert set(df["form"]) == set(generate.FORMS) and set(df["mode"]) == set(ns.READERS)
    expected = ns.cells(SweepSpec.from_preset("nested", **TINY))
    assert len(df) == 2 * len(expected) == SweepSpec.from_preset("nested", **TINY).row_count()
    # Grid columns are null in nested rows; nested columns carry the cell.
    assert df["lam"].isna().all() and df["separation"].isna().all()
    assert df[df["mode"].isin(["flat_pinv"])]["beta"].isna().all()
    assert df[df["mode"].isin(["flat_attention", "flat_pinv"])]["composition"].notna().all()
    assert df[df["mode"] == "topk"]["topk"].eq(1).all()
    assert df[df["mode"] == "soft"]["path_mass_theory"].notna().all()
    assert df[(df["mode"] == "topk")]["theory_acc"].notna().all()
    # one compiled program per family (reader, depth, branching, d, k, composition), every form and seed
    assert manifest["compiled_programs"] == len({ns.family_of(c) for c in expected})
    assert (df.groupby("cell_id")["compile_s"].apply(lambda s: s.nunique()) == 1).all()
    # the learning curves: every mode reaches the README's stated accuracy
    curves = pq.read_table(nested_run / nested_report.LEARNING).to_pandas()
    assert set(curves["mode"]) == set(nested_report.LEARN_MODES)
    assert (curves.groupby("mode")["accuracy"].last() == 1.0).all()


@pytest.mark.xdist_group("nested_run")
def test_a_nested_report_says_which_reader_wins_where(nested_run):
    text = (nested_run / "report.md").read_text()
    for heading in ("Which reader wins where", "Accuracy by reader and form", "Timings per reader",
                    "Capacity: the largest tree", "Theory against measurement", "Learning through the read"):
        assert f"## {heading}" in text
    assert "Most accurate reader per tree shape" in text and "Collision effect" in text
    figures = {p.stem for p in (nested_run / "figures").glob("*.png")}
    assert {"nested_accuracy_vs_depth_beta=4", "nested_accuracy_vs_branching_beta=4", "nested_collision_effect",
            "nested_hierarchical_vs_flat", "nested_capacity_vs_d", "nested_theory", "nested_learning"} <= figures
    html = (nested_run / "report.html").read_text()
    assert html.count("data:image/png;base64,") == len(figures)


@pytest.mark.xdist_group("nested_run")
def test_a_nested_run_resumes_only_what_is_missing(nested_run, tmp_path):
    copy = tmp_path / nested_run.name
    subprocess.run(["cp", "-r", str(nested_run), str(copy)], check=True)
    parts = sorted((copy / store.PARTS).glob("*.parquet"))
    gone = parts[::7]
    for p in gone:
        p.unlink()
    kept = {p.name: p.stat().st_mtime_ns for p in parts if p not in gone}
    run = pipeline.resume(copy, {}, None, compile_cache=None)
    pipeline.execute(run, report=False, progress=False)
    assert {p.name: p.stat().st_mtime_ns for p in (copy / store.PARTS).glob("*.parquet") if p.name in kept} == kept
    a, b = store.load_results(nested_run), store.load_results(copy)
    measured = ["cos_mean", "cos_std", "dist_mean", "acc", "baseline_cos", "path_mass", "n", "seed", "cell_id"]
    pd.testing.assert_frame_equal(a[measured].reset_index(drop=True), b[measured].reset_index(drop=True))


@pytest.mark.parametrize("first_new", ["form", "sharing"])
def test_parts_of_runs_before_nested_columns_are_kept_on_resume(tmp_path, first_new):
    """Parts written before the nested columns, and before the sharing / varying-branching /
    beam-hit columns, are read with those columns null."""
    run_dir = store.new_run_dir(tmp_path, {"spec": SweepSpec().to_dict()})
    old = pa.schema(list(store.SCHEMA)[:store.SCHEMA.get_field_index(first_new)])
    row = {f.name: None for f in old} | {"run_id": "r", "cell_id": "c", "kernel": "pinv", "status": "ok"}
    pq.write_table(pa.Table.from_pylist([row], schema=old), run_dir / store.PARTS / "c.parquet")
    assert store.set_aside_damaged_parts(run_dir) == []
    part = store.read_part(run_dir, "c")[0]
    assert part[first_new] is None and part["path_hit_theory_low"] is None


@pytest.mark.slow
def test_run_all_nested_end_to_end(tmp_path):
    """The command line: a whole --nested process with its report, then --resume of the
    finished run changes nothing."""
    out = tmp_path / "out"
    argv = [PYTHON, "run_all.py", "--nested", "--depth", "2", "--branching", "3", "--d", "8", "--seeds", "1",
            "--mode", "soft,topk,flat_attention", "--composition", "circular", "--out", str(out)]
    done = subprocess.run(argv, capture_output=True, text=True, env=run_env(), cwd=REPO, timeout=600)
    assert done.returncode == 0, done.stderr
    run_dir = Path(done.stdout.strip().splitlines()[-1].removeprefix("run written to "))
    df = store.load_results(run_dir)
    assert set(df["mode"]) == {"soft", "topk", "flat_attention"} and (df["status"] == "ok").all()
    assert json.loads((run_dir / store.MANIFEST).read_text())["spec"]["nested"] is True
    before = (run_dir / store.RESULTS).read_bytes()
    again = subprocess.run([PYTHON, "run_all.py", "--resume", str(run_dir), "--no-report"], capture_output=True,
                           text=True, env=run_env(), cwd=REPO, timeout=600)
    assert again.returncode == 0, again.stderr
    assert pq.read_table(run_dir / store.RESULTS).to_pandas().drop(columns=["run_id"]).equals(
        pq.read_table(pa.BufferReader(before)).to_pandas().drop(columns=["run_id"]))


@pytest.mark.xdist_group("nested_run")
def test_a_nested_report_rebuilds_to_the_same_bytes_and_compare_refuses_it(nested_run, tmp_path, capsys):
    from bench import compare, plots, report

    copy = tmp_path / nested_run.name
    subprocess.run(["cp", "-r", str(nested_run), str(copy)], check=True)
    for name in ("report.md", "report.html"):
        (copy / name).unlink()
    for figure in (copy / "figures").iterdir():
        figure.unlink()
    assert plots.main([str(copy)]) == 0 and report.main([str(copy)]) == 0
    for name in ("report.md", *(f"figures/{p.name}" for p in (nested_run / "figures").iterdir())):
        assert (copy / name).read_bytes() == (nested_run / name).read_bytes(), name
    capsys.readouterr()
    assert compare.main([str(nested_run), str(copy), "--out", str(tmp_path / "cmp")]) == 2
    err = capsys.readouterr().err.strip()
    assert "is a nested-dictionary run" in err and len(err.splitlines()) == 1


def test_the_nested_profile_runs_and_names_its_four_timings():
    from bench import profile_nested

    lines = profile_nested.profile(queries=8, tile_slots=64, d=8, rounds=1, branching=4, tiles=4)
    assert len(lines) == 5 and "products alone" in lines[1] and "whole tile body" in lines[2]
    assert "kernels.nested._dense_level" in lines[3] and all("x the floor" in line for line in lines[1:])
    assert "exponentials alone" in lines[4]


@pytest.mark.parametrize("mode,k", [("soft", 1), ("sparse", 1), ("topk", 3)])
def test_query_blocks_that_do_not_divide_the_batch_change_no_read(mode, k):
    tree = build.compile_tree(generate.generate(generate.TreeSpec("dag", depth=3, branching=4, seed=5)))
    K = build.gaussian_codebook(tree.key_symbols, 8, 0)
    V = build.gaussian_codebook(tree.value_symbols, 8, 1)
    paths, lengths, _ = build.query_paths(tree, K)
    levels, slots = build.device_levels(tree, K, V), jnp.asarray(build.target_slots(tree))
    whole = kn.read(levels, jnp.asarray(paths), jnp.asarray(lengths), mode=mode, k=k, beta=3.0, targets=slots)
    blocked = kn.read(levels, jnp.asarray(paths), jnp.asarray(lengths), mode=mode, k=k, beta=3.0, targets=slots,
                      query_block=7)
    assert len(paths) % 7
    for a, b in zip(whole, blocked):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
