"""The documentation keeps up with the code: every config key documented, README short.

docs/configuration.md documents the daemon's TOML schema, which is the
dataclasses of edgeinfer.config. The schema's key paths are read from those
dataclasses (so a key added later is caught here), the documented ones from the
first column of docs/configuration.md's tables, and the two sets must be equal.
"""
from __future__ import annotations

import dataclasses
import re
import types
import typing
from pathlib import Path

from edgeinfer import config

ROOT = Path(__file__).resolve().parent.parent
CONFIGURATION_MD = ROOT / "docs" / "configuration.md"
README = ROOT / "README.md"
README_MAX_LINES = 200

# Dataclass fields that are not TOML keys: config._build never accepts them
# (the Config's `source` records the file the config came from).
NOT_KEYS = {"source"}

# A table row's first cell holding exactly one backticked key path: `server.listen`.
_FIRST_CELL_KEY = re.compile(r"^\|\s*`([A-Za-z_][\w.]*\.[\w.]+)`\s*\|")


def _dataclass_in(tp) -> typing.Optional[type]:
    """The dataclass a field's type holds a table of, directly, in a list (array of tables) or Optional."""
    if dataclasses.is_dataclass(tp):
        return tp
    origin = typing.get_origin(tp)
    if origin in (list, typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            found = _dataclass_in(arg)
            if found is not None:
                return found
    return None


def schema_keys(cls: type = config.Config, prefix: str = "") -> set[str]:
    """Every key path of the schema: tables and arrays of tables are walked, leaves are keys.

    [[models]] entries and their sub-tables become `models.<key>` and
    `models.<table>.<key>`, e.g. `models.batching.max_batch`.
    """
    keys: set[str] = set()
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if cls is config.Config and f.name in NOT_KEYS:  # [[streams]] source is a key
            continue
        path = f"{prefix}{f.name}"
        table = _dataclass_in(hints[f.name])
        if table is not None:
            keys |= schema_keys(table, path + ".")
        else:
            keys.add(path)
    return keys


def documented_keys(text: str) -> set[str]:
    """Backticked key paths in the first column of the Markdown tables."""
    keys = set()
    for line in text.splitlines():
        m = _FIRST_CELL_KEY.match(line.strip())
        if m:
            keys.add(m.group(1))
    return keys


def test_schema_walk_finds_nested_and_array_tables():
    keys = schema_keys()
    assert {"server.listen", "metrics.listen", "cache.dir", "models.name",
            "models.batching.max_batch", "models.tensorrt.profiles.min"} <= keys
    assert "source" not in keys and "streams.source" in keys


def test_every_config_key_is_documented_and_nothing_else():
    schema = schema_keys()
    documented = documented_keys(CONFIGURATION_MD.read_text(encoding="utf-8"))
    missing = sorted(schema - documented)
    extra = sorted(documented - schema)
    problems = []
    if missing:
        problems.append("in edgeinfer.config but not documented in docs/configuration.md "
                        "(add a table row whose first cell is the backticked key):\n  " + "\n  ".join(missing))
    if extra:
        problems.append("documented in docs/configuration.md but not in edgeinfer.config "
                        "(renamed or removed?):\n  " + "\n  ".join(extra))
    assert not problems, "\n".join(problems)


def test_readme_is_short():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, (
        f"README.md has {len(lines)} lines, at most {README_MAX_LINES}: move detail into docs/")
