"""`upm policy create|list|show|delete` against a served orchestrator."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from upm.orchestrator.v1 import orchestrator_service_pb2_grpc as pb_grpc
from upm_orchestrator import cli

POLICY = {
    "policyId": "default",
    "rules": [
        {
            "ruleId": "email-daily",
            "frequencyCap": {
                "count": 2,
                "windowKind": "WINDOW_KIND_CALENDAR_DAY",
                "scope": {"kind": "SCOPE_KIND_CHANNEL", "value": "email"},
            },
        }
    ],
}


def test_register_adds_the_policy_commands() -> None:
    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["policy", "show", "default", "--version", "2"])
    assert (args.policy_id, args.version) == ("default", 2)
    assert callable(args.handler)


async def test_policy_commands(
    stub: pb_grpc.OrchestratorServiceStub, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "policy.json"
    source.write_text(json.dumps(POLICY))
    await cli._create(stub, argparse.Namespace(file=str(source), update=False))
    created = json.loads(capsys.readouterr().out)
    assert created["version"] == "1"
    await cli._create(stub, argparse.Namespace(file=str(source), update=True))
    assert json.loads(capsys.readouterr().out)["version"] == "2"
    await cli._list(stub, argparse.Namespace())
    listing = capsys.readouterr().out.splitlines()
    assert listing[1].split()[:3] == ["default", "2", "1"]
    await cli._show(stub, argparse.Namespace(policy_id="default", version=1))
    assert json.loads(capsys.readouterr().out)["rules"][0]["ruleId"] == "email-daily"
    await cli._delete(stub, argparse.Namespace(policy_id="default"))
    assert "deleted policy default" in capsys.readouterr().out
