"""The README's promises: its two commands lead, CI runs the second one verbatim, and the
schema section documents every column."""

from __future__ import annotations

import re

from bench.store import SCHEMA
from tests.conftest import REPO

INSTALL_AND_RUN = "pip install -e . && python run_all.py"
INSTALL_AND_TEST = "pip install -e '.[test]' && pytest && pytest -m slow"


def _readme() -> str:
    return (REPO / "README.md").read_text()


def test_readme_begins_with_the_two_commands():
    head = _readme()[:1500]
    assert INSTALL_AND_RUN in head and INSTALL_AND_TEST in head
    assert head.index(INSTALL_AND_RUN) < head.index(INSTALL_AND_TEST)


def test_ci_runs_the_readme_test_command_exactly():
    lines = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()]
    assert INSTALL_AND_TEST in lines


def test_every_result_column_is_documented():
    schema_section = _readme().split("## Result schema", 1)[1]
    documented = set(re.findall(r"^\| `([a-z_]+)` \|", schema_section, flags=re.M))
    assert documented == set(SCHEMA.names), set(SCHEMA.names) ^ documented
