"""What a nested dictionary may hold, checked once, with errors that name the path.

A nested dictionary maps string keys to values of three kinds:

- a leaf: a string (a symbol, mapped to a vector by a codebook);
- a nested dictionary (non-empty);
- a record value of the DAG form: a two-item list ``[qualifier, child]`` where the qualifier is
  a string (a leaf symbol) and the child a nested dictionary or None (JSON has no tuples).

No cycles, no empty levels, no other types, at most MAX_DEPTH levels. JSON is the only on-disk
form (``load`` / ``dump``); nothing is pickled.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

MAX_DEPTH = 16
# The DAG form's structural rules (nested.generate obeys them, check(rules=True) verifies):
# a level with more than RULE_WIDE keys holds at least one nested value, and a key that matches
# RULE_NESTED_KEY holds a nested value.
RULE_WIDE = 4
RULE_NESTED_KEY = re.compile(r"^n_")


def check(tree: Any, *, max_depth: int = MAX_DEPTH, rules: bool = False) -> int:
    """Raise ValueError (naming the path and the fix) unless ``tree`` is a valid nested
    dictionary; returns its depth (levels of keys on the longest path). rules: also check the
    DAG form's structural rules."""
    if not isinstance(tree, dict):
        raise ValueError(f"a nested dictionary must be a dict at the top, got {type(tree).__name__}")
    return _check(tree, (), set(), max_depth, rules)


def _where(path: tuple[str, ...]) -> str:
    return "/".join(path) if path else "the top level"


def _check(node: dict, path: tuple[str, ...], above: set[int], max_depth: int, rules: bool) -> int:
    if id(node) in above:
        raise ValueError(f"cycle at {_where(path)}: a dictionary contains itself; nest copies, not the same object")
    if len(path) >= max_depth:
        raise ValueError(f"{_where(path)} is deeper than {max_depth} levels; flatten it or raise max_depth")
    if not node:
        raise ValueError(f"empty level at {_where(path)}: every dictionary needs at least one key")
    above = above | {id(node)}
    deepest = 1
    nested_here = False
    for key, value in node.items():
        if not isinstance(key, str):
            raise ValueError(f"key {key!r} at {_where(path)} is a {type(key).__name__}; keys must be strings")
        child = _child(value, path + (key,))
        if child is not None:
            nested_here = True
            deepest = max(deepest, 1 + _check(child, path + (key,), above, max_depth, rules))
        elif rules and RULE_NESTED_KEY.match(key):
            raise ValueError(f"{_where(path + (key,))}: a key matching {RULE_NESTED_KEY.pattern} must hold a nested "
                             "value")
    if rules and len(node) > RULE_WIDE and not nested_here:
        raise ValueError(f"{_where(path)} has {len(node)} keys and no nested value; a level with more than "
                         f"{RULE_WIDE} keys must hold one")
    return deepest


def _child(value: Any, path: tuple[str, ...]) -> dict | None:
    """The nested dictionary a value holds, or None for a leaf; ValueError for anything else."""
    if isinstance(value, str):
        return None
    if isinstance(value, dict):
        return value
    if isinstance(value, (list, tuple)) and len(value) == 2 and isinstance(value[0], str) and (
            value[1] is None or isinstance(value[1], dict)):
        return value[1]
    raise ValueError(f"{_where(path)} holds {type(value).__name__} {_short(value)}; a value is a string, a nested "
                     "dictionary or [qualifier string, dictionary or None]")


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def dump(tree: dict, path: str | Path) -> None:
    """Write a checked nested dictionary as JSON."""
    check(tree)
    Path(path).write_text(json.dumps(tree, sort_keys=True))


def load(path: str | Path, *, max_depth: int = MAX_DEPTH) -> dict:
    """Read a nested dictionary from JSON and check it."""
    try:
        tree = json.loads(Path(path).read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not JSON ({e.msg} at line {e.lineno}); nested dictionaries are stored as "
                         "JSON") from None
    except RecursionError:
        raise ValueError(f"{path} nests deeper than Python can read; at most {max_depth} levels") from None
    check(tree, max_depth=max_depth)
    return tree
