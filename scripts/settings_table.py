"""Render (or check) the README's table of configuration variables from the settings classes.

`python scripts/settings_table.py` rewrites the block between the settings-table markers in
README.md; `--check` fails when the README is out of date. The table is generated so that it
can never forget a variable.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from pydantic_core import PydanticUndefined

from upm_cli.services import SERVICES
from upm_common.settings import ENV_PREFIX, CommonSettings

README = Path(__file__).resolve().parent.parent / "README.md"
START, END = "<!-- settings-table:start -->", "<!-- settings-table:end -->"


def _default(field: Any) -> str:
    value = field.default
    if value is PydanticUndefined and field.default_factory is not None:
        value = field.default_factory()
    if value is PydanticUndefined:
        return "*(required)*"
    if value is None:
        return "*(unset)*"
    if isinstance(value, bool):
        value = str(value).lower()
    if isinstance(value, list | tuple):
        value = ",".join(str(v) for v in value)
    return f"`{value}`"


def render() -> str:
    rows: dict[str, dict[str, Any]] = {}
    classes: list[tuple[str, type[CommonSettings]]] = [("all", CommonSettings)]
    classes += [(name, entry.settings_class()) for name, entry in SERVICES.items()]
    for owner, cls in classes:
        for name, field in cls.model_fields.items():
            variable = f"{ENV_PREFIX}{name.upper()}"
            row = rows.setdefault(
                variable,
                {"owners": [], "description": field.description or "", "defaults": {}},
            )
            if owner != "all" and name in CommonSettings.model_fields:
                if _default(field) != _default(CommonSettings.model_fields[name]):
                    row["defaults"][owner] = _default(field)
                continue
            row["owners"].append(owner)
            row["defaults"].setdefault(owner, _default(field))
    lines = ["| variable | services | default | what it sets |", "|---|---|---|---|"]
    for variable, row in rows.items():
        defaults = row["defaults"]
        if len(defaults) == len(SERVICES) + 1:
            # Every service sets its own default: the shared one is never used.
            defaults = {k: v for k, v in defaults.items() if k != "all"}
        if len(set(defaults.values())) <= 1:
            default = next(iter(defaults.values()), "")
        else:
            default = "; ".join(f"{k}: {v}" for k, v in defaults.items())
        owners = ", ".join(row["owners"])
        description = row["description"].replace("|", "\\|")
        lines.append(f"| `{variable}` | {owners} | {default} | {description} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    text = README.read_text()
    head, _, rest = text.partition(START)
    _, _, tail = rest.partition(END)
    updated = f"{head}{START}\n{render()}\n{END}{tail}"
    if args.check:
        if updated != text:
            print("README.md's configuration table is stale: run `make docs`")
            return 1
        return 0
    README.write_text(updated)
    return 0


if __name__ == "__main__":
    sys.exit(main())
