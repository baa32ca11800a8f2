"""SweepSpec validates itself (field, value and fix in one line), expands to the right cells,
and a Cell's id is a true hash of everything that decides its numbers."""

from __future__ import annotations

import dataclasses

import pytest

from bench.spec import KERNELS, PRESETS, Cell, SpecError, SweepSpec


@pytest.mark.parametrize("field,value,message", [
    ("d", (0,), "d: 0 is not a positive integer"),
    ("n", (2**31,), "n: 2147483648 is too many pairs"),
    ("seeds", 0, "seeds: 0"),
    ("noise", (float("nan"),), "noise: nan"),
    ("lam", (-1.0,), "lam: -1.0"),
    ("beta", (0.0,), "beta: 0.0"),
    ("mask", (1.0,), "mask: 1.0"),
    ("kernels", ("pinv", "nope"), "unknown kernel 'nope'"),
    ("patterns", ("glove",), None),  # valid with d <= 50 below
    ("d", (64, 64), "repeats a value"),
])
def test_bad_values_name_the_field_and_the_fix(field, value, message):
    base = dict(kernels=("pinv",), d=(16,), n=(4,), seeds=1)
    if message is None:
        SweepSpec(**{**base, field: value})
        return
    with pytest.raises(SpecError, match=message.replace("(", r"\(")):
        SweepSpec(**{**base, field: value})


def test_every_preset_is_valid_and_expands_to_grouped_cells():
    for name in PRESETS:
        spec = SweepSpec.from_preset(name)
        cells = spec.cells(auto_method="gram64")
        assert {c.kernel for c in cells} == set(KERNELS)
        # Cells of one setting are contiguous (a family's cells run together), n in spec order.
        settings = [dataclasses.replace(c, n=0) for c in cells]
        for i in range(0, len(cells), len(spec.n)):
            assert len(set(settings[i:i + len(spec.n)])) == 1
            assert [c.n for c in cells[i:i + len(spec.n)]] == list(spec.n)


def test_knobs_a_memory_does_not_read_are_none():
    spec = SweepSpec(kernels=("ridge", "attention"), d=(8,), n=(4,), seeds=1, separation=("max", "topk"))
    for cell in spec.cells():
        if cell.kernel == "ridge":
            assert cell.lam == 1.0 and cell.similarity is None and cell.method == "auto"
        elif cell.separation == "max":
            assert cell.beta is None and cell.topk is None and cell.method is None
        else:
            assert cell.beta == 1.0 and cell.topk == 8


def test_cell_ids_hash_every_setting_that_decides_the_numbers():
    cell = Cell("pinv", 64, 128, 64, 0.0, "gaussian", "float32", method="gram64")
    assert cell.id == Cell("pinv", 64, 128, 64, 0.0, "gaussian", "float32", method="gram64").id  # stable
    assert cell.id != dataclasses.replace(cell, queries=64).id
    assert cell.id != dataclasses.replace(cell, method="qr32").id
    assert cell.id != dataclasses.replace(cell, n=129).id
    # The legacy id ignores the two settings older runs did not hash.
    assert cell.legacy_id == dataclasses.replace(cell, queries=64, method="qr32").legacy_id


def test_auto_method_is_resolved_into_the_cells():
    spec = SweepSpec(kernels=("pinv", "hebbian"), d=(8,), n=(4,), seeds=1)
    assert {c.method for c in spec.cells(auto_method="qr32")} == {"qr32", None}
    assert {c.method for c in SweepSpec(kernels=("pinv",), d=(8,), n=(4,), seeds=1, method="gram64").cells(
        auto_method="qr32")} == {"gram64"}


def test_spec_round_trips_through_its_dict():
    spec = SweepSpec.from_preset("quick", seeds=5)
    assert SweepSpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(SpecError, match="unknown fields"):
        SweepSpec.from_dict({**spec.to_dict(), "bogus": 1})
