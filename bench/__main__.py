"""Run every benchmark module and write one JSON report.

A benchmark module is any `bench/<name>.py` with `async def run(smoke: bool) -> dict`. Each one
measures its figure and, in the same run, the raw ceiling it is bounded by (a bare gRPC echo, a
bare Redis pipeline, a bare `count(*)`), and reports both with their ratio: the machine is shared
and noisy, so ratios travel better than absolute numbers. `--smoke` runs tiny sizes, only to
prove the benchmarks still work.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import platform
import sys
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SKIP = {"__init__", "__main__", "common"}


def discover() -> list[str]:
    return sorted(
        p.stem for p in HERE.glob("*.py") if p.stem not in SKIP and not p.stem.endswith("datagen")
    )


async def run_all(names: list[str], smoke: bool) -> dict[str, Any]:
    report: dict[str, Any] = {
        "started": datetime.now(UTC).isoformat(),
        "smoke": smoke,
        "machine": {"python": platform.python_version(), "cpus": _cpus()},
        "benchmarks": {},
    }
    failed = []
    for name in names:
        module = importlib.import_module(f"bench.{name}")
        if not hasattr(module, "run"):
            continue
        print(f"== {name}", flush=True)
        started = time.perf_counter()
        try:
            result = await module.run(smoke)
        except Exception:
            traceback.print_exc()
            failed.append(name)
            result = {"error": traceback.format_exc(limit=3)}
        result["wall_seconds"] = round(time.perf_counter() - started, 2)
        report["benchmarks"][name] = result
        print(json.dumps(result, indent=2, default=str), flush=True)
    report["failed"] = failed
    return report


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, to prove they work")
    parser.add_argument("--output", type=Path, default=HERE / "results.json")
    parser.add_argument("names", nargs="*", help="only these benchmark modules")
    args = parser.parse_args()
    names = args.names or discover()
    report = asyncio.run(run_all(names, args.smoke))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(f"report written to {args.output}")
    return 1 if report["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
