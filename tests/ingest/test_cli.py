"""`upm source create|list|revoke` against a database."""

from __future__ import annotations

import argparse
import json

import pytest

from upm_ingest import cli


def run(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    commands = parser.add_subparsers(dest="command", required=True)
    cli.register(commands)
    args = parser.parse_args(argv)
    result: int = args.handler(args)
    return result


def test_create_list_revoke(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("UPM_DATABASE_URL", sqlite_url)
    assert run("source", "create", "Web shop", "--rate", "50", "--json") == 0
    created = json.loads(capsys.readouterr().out)
    assert created["write_key"].startswith(created["write_key_prefix"])
    assert created["limits"]["rate_per_second"] == 50
    assert run("source", "list") == 0
    listed = capsys.readouterr().out
    assert created["source_id"] in listed and "active" in listed
    assert created["write_key"] not in listed
    assert run("source", "revoke", created["source_id"]) == 0
    capsys.readouterr()
    assert run("source", "list", "--json") == 0
    assert json.loads(capsys.readouterr().out) == []
    assert run("source", "list", "--all", "--json") == 0
    [revoked] = json.loads(capsys.readouterr().out)
    assert revoked["revoked_time"] is not None
    assert run("source", "revoke", "src_missing") == 1
    assert "not found" in capsys.readouterr().err
