"""Fail when the committed gen/python differs from what the protos generate now."""

from __future__ import annotations

import filecmp
import sys
import tempfile
from pathlib import Path

from gen_protos import DEFAULT_OUT, generate


def differences(expected: Path, actual: Path) -> list[str]:
    """Relative paths that are missing, extra or different between two trees."""
    found: list[str] = []
    compare = filecmp.dircmp(expected, actual, ignore=["__pycache__"])

    def walk(cmp: filecmp.dircmp[str], prefix: str) -> None:
        found.extend(f"{prefix}{n} (not committed)" for n in cmp.left_only)
        found.extend(f"{prefix}{n} (no longer generated)" for n in cmp.right_only)
        found.extend(f"{prefix}{n} (changed)" for n in cmp.diff_files)
        for name, sub in cmp.subdirs.items():
            walk(sub, f"{prefix}{name}/")

    walk(compare, "")
    return found


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        fresh = Path(tmp)
        generate(fresh)
        drift = differences(fresh / "upm", DEFAULT_OUT / "upm")
    if drift:
        print("gen/python is stale; run `make protos` and commit:", *drift, sep="\n  ")
        return 1
    print("gen/python matches protos/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
