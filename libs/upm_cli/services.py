"""The four services, where their settings and composition roots live."""

from __future__ import annotations

import importlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from upm_common.server import ServiceApp
from upm_common.settings import CommonSettings


@dataclass(frozen=True)
class ServiceEntry:
    """Where to find one service's settings class and `build_app`."""

    name: str
    settings_path: str
    build_path: str
    has_workers: bool

    def settings_class(self) -> type[CommonSettings]:
        cls: type[CommonSettings] = _load(self.settings_path)
        return cls

    def build_app(self) -> Callable[[Any], Awaitable[ServiceApp]]:
        build: Callable[[Any], Awaitable[ServiceApp]] = _load(self.build_path)
        return build


def _load(path: str) -> Any:
    module, _, attribute = path.partition(":")
    return getattr(importlib.import_module(module), attribute)


SERVICES: dict[str, ServiceEntry] = {
    entry.name: entry
    for entry in [
        ServiceEntry(
            "ingest", "upm_ingest.settings:IngestSettings", "upm_ingest.server:build_app", False
        ),
        ServiceEntry(
            "profile", "upm_profile.settings:ProfileSettings", "upm_profile.server:build_app", True
        ),
        ServiceEntry(
            "segment", "upm_segment.settings:SegmentSettings", "upm_segment.server:build_app", True
        ),
        ServiceEntry(
            "orchestrator",
            "upm_orchestrator.settings:OrchestratorSettings",
            "upm_orchestrator.server:build_app",
            True,
        ),
    ]
}

# Operator sub-commands contributed by services: `upm <name> ...`.
COMMAND_MODULES = {
    "source": "upm_ingest.cli",
    "profile": "upm_profile.cli",
    "segment": "upm_segment.cli",
    "policy": "upm_orchestrator.cli",
}
