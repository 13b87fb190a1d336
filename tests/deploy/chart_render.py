"""Render the Helm chart with the real Helm engine (no helm binary, no cluster)."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import kubernetes_validate.utils
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART_DIR = REPO / "deploy" / "k8s" / "upm"
VALUES_DIR = Path(__file__).resolve().parent / "values"
RELEASE = "upm"
NAMESPACE = "upm-test"
# Rendered objects are validated against the newest Kubernetes kubernetes-validate knows and the
# oldest the chart supports (Chart.yaml kubeVersion).
KUBE_VERSION = "1.37"
OLDEST_KUBE_VERSION = "1.30"

VARIANTS = ["default", "minimal", "production", "mtls"]

# kubernetes-validate re-reads its JSON schema files (megabytes) for every object it checks;
# they are only read, so cache them for the test session (a sevenfold speed-up).
if not hasattr(kubernetes_validate.utils.schema_contents, "cache_info"):
    kubernetes_validate.utils.schema_contents = functools.lru_cache(maxsize=None)(
        kubernetes_validate.utils.schema_contents
    )


def validate_object(obj: dict[str, Any], version: str) -> None:
    """Validate one object against the Kubernetes API schema, rejecting unknown fields."""
    kubernetes_validate.validate(obj, version, strict=True)


def variant_values(variant: str) -> dict[str, Any]:
    """The user-supplied values of a variant (the chart defaults for "default")."""
    if variant == "default":
        return {}
    loaded = yaml.safe_load((VALUES_DIR / f"{variant}.yaml").read_text())
    assert isinstance(loaded, dict)
    return loaded


@dataclass
class Rendered:
    """One variant rendered: the merged values, the objects and NOTES.txt."""

    variant: str
    values: dict[str, Any]
    objects: list[dict[str, Any]]
    notes: str
    sources: dict[str, str] = field(default_factory=dict)

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [obj for obj in self.objects if obj["kind"] == kind]

    def get(self, kind: str, name: str) -> dict[str, Any]:
        matches = [o for o in self.of_kind(kind) if o["metadata"]["name"] == name]
        assert len(matches) == 1, f"expected one {kind} {name}, found {len(matches)}"
        return matches[0]

    def names(self, kind: str) -> set[str]:
        return {o["metadata"]["name"] for o in self.of_kind(kind)}


def render(values: dict[str, Any]) -> Rendered:
    """Render the chart as `helm install` would (schema checked, hooks included)."""
    with helm.Chart.load(CHART_DIR) as chart:
        merged = chart.merge_values(values)
        manifests = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    objects: list[dict[str, Any]] = []
    notes = ""
    for path, text in sorted(manifests.items()):
        if path.endswith("NOTES.txt"):
            notes = text
            continue
        for document in yaml.safe_load_all(text):
            if document is not None:
                objects.append(document)
    return Rendered(variant="", values=merged, objects=objects, notes=notes, sources=manifests)
