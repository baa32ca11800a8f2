"""kernels.names is the one list of memories, separations and knobs: every other module derives
from it, the kernels implement exactly it, and reading it starts no JAX."""

import dataclasses
import subprocess
import sys

import pyarrow as pa
import pytest

import kernels
from bench import cli, spec, store, summaries
from kernels import names


def test_registries_implement_exactly_the_declared_names():
    assert tuple(kernels.RULES) + ("attention",) == names.KERNELS
    assert {r for r, rule in kernels.RULES.items() if rule.least_squares} == set(names.LEAST_SQUARES) == {"pinv", "ridge"}
    assert tuple(kernels.SIMILARITY_REGISTRY) == names.SIMILARITIES
    assert tuple(kernels.SEPARATION_REGISTRY) == tuple(names.SEPARATIONS)
    assert kernels.SEPARATION_REGISTRY["topk"].knobs == ("beta", "topk")
    assert kernels.RULES["delta"].knobs == ("eta", "passes")


def test_a_registry_that_disagrees_fails_at_import_naming_both_places():
    with pytest.raises(ImportError, match="declare each separation in kernels/names.py"):
        names.check_implemented("separation", {"softmax": 0}, names.SEPARATIONS)
    with pytest.raises(ImportError, match="differs"):  # order matters too: it is the order of the CLI's help
        names.check_implemented("similarity", dict.fromkeys(reversed(names.SIMILARITIES)), names.SIMILARITIES)


def test_separation_knobs_are_derived_from_what_each_separation_reads():
    assert names.SEPARATION_KNOBS == {"beta": ("softmax", "topk"), "topk": ("topk",), "degree": ("polynomial",)}
    assert names.reads("attention", "beta", "softmax") and not names.reads("attention", "beta", "max")
    assert names.reads("attention", "heads", "max") and not names.reads("ridge", "beta")


def test_every_knob_is_a_spec_axis_a_flag_and_a_column_of_its_kind():
    arrow = {int: pa.int64(), float: pa.float64(), str: pa.string()}
    fields = {f.name: f for f in dataclasses.fields(spec.SweepSpec)}
    parser = cli.build_parser()
    for knob in names.KNOBS.values():
        assert fields[knob.name].default == knob.default, knob.name
        assert knob.name in spec.AXES and knob.name in cli.SPEC_FLAGS and knob.name in store.SETTING_FIELDS
        assert store.SCHEMA.field(knob.name).type == arrow[knob.kind], knob.name
        parsed = getattr(parser.parse_args([f"--{knob.name}", ",".join(map(str, knob.default))]), knob.name)
        assert parsed == knob.default and all(type(v) is knob.kind for v in parsed), knob.name
    assert set(cli.ATTENTION_FLAGS) == {"similarity", "separation", "beta", "topk", "degree", "heads", "steps"}


def test_one_label_for_cells_and_result_rows():
    cell = spec.Cell(kernel="attention", d=32, n=8, dv=32, noise=0.0, patterns="gaussian", dtype="float32",
                     similarity="scaled_dot", separation="topk", beta=1.0, topk=8, heads=1, steps=1)
    assert cell.knob_text() == "attention scaled_dot topk beta=1 topk=8"
    row = {**dataclasses.asdict(cell), "degree": float("nan"), "topk": 8.0}  # as pandas gives it back
    assert summaries.memory_name(row) == cell.knob_text()
    assert names.memory_label("ridge", {"lam": 0.01, "beta": 2.0}) == "ridge lam=0.01"
    assert names.memory_label("attention", {"similarity": "dot", "separation": "softmax", "beta": 2.0, "heads": 4,
                                            "steps": 1}) == "attention dot softmax beta=2 heads=4"


def test_the_names_spec_and_command_line_import_no_jax():
    code = ("import sys, kernels.names, bench.spec, bench.cli; bench.cli.build_parser(); "
            "bench.spec.SweepSpec(); print('jax' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
