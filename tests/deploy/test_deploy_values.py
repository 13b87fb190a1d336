"""values.yaml, values.schema.json and README.md: strict, documented and consistent."""

from __future__ import annotations

import copy
import importlib.util
import json
import re
from typing import Any

import helm_python as helm
import pytest

from tests.deploy.chart_render import (
    CHART_DIR,
    KUBE_VERSION,
    VARIANTS,
    render,
    validate_object,
    variant_values,
)


@pytest.fixture(scope="module")
def chart() -> Any:
    with helm.Chart.load(CHART_DIR) as loaded:
        yield loaded


@pytest.mark.parametrize("variant", VARIANTS)
def test_variant_values_satisfy_the_schema(chart: Any, variant: str) -> None:
    chart.validate_schema(variant_values(variant))


BAD_VALUES = {
    "replicas zero": ({"profile": {"replicaCount": 0}}, "/profile/replicaCount"),
    "replicas negative": ({"segmentWorker": {"replicaCount": -1}}, "/segmentWorker/replicaCount"),
    "replicas as string": ({"ingest": {"replicaCount": "2"}}, "/ingest/replicaCount"),
    "hpa min zero": (
        {"ingest": {"autoscaling": {"minReplicas": 0}}},
        "/ingest/autoscaling/minReplicas",
    ),
    "unknown top-level key": ({"replicaCount": 3}, "replicaCount"),
    "typo in a nested key": ({"database": {"existingSecert": "db"}}, "existingSecert"),
    "typo in a component": ({"profileWorkers": {"replicaCount": 2}}, "profileWorkers"),
    "unknown component key": ({"ingest": {"replicas": 2}}, "replicas"),
    "wrong type object": ({"config": {"eventLog": "redis"}}, "/config/eventLog"),
    "wrong type boolean": ({"networkPolicy": {"enabled": "yes"}}, "/networkPolicy/enabled"),
    "unknown enum": ({"config": {"eventLog": {"backend": "kafka"}}}, "/config/eventLog/backend"),
    "bad log level": ({"config": {"logLevel": "INFO"}}, "/config/logLevel"),
    "bad digest": ({"image": {"digest": "latest"}}, "/image/digest"),
    "too many partitions": (
        {"config": {"eventLog": {"partitions": 5000}}},
        "/config/eventLog/partitions",
    ),
    "health port clashes with grpc": ({"tls": {"healthPort": 50051}}, "/tls/healthPort"),
    "database url not postgres": ({"database": {"url": "mysql://x@db/upm"}}, "/database/url"),
    "bad env name": ({"config": {"extraEnv": {"1BAD": "x"}}}, "1BAD"),
    "ingress on a worker": ({"profileWorker": {"ingress": {}}}, "ingress"),
    "bad ingress host": (
        {"ingest": {"ingress": {"hosts": ["Bad Host"]}}},
        "/ingest/ingress/hosts/0",
    ),
    "bad peer": ({"networkPolicy": {"ingestFrom": [{"podSelectr": {}}]}}, "podSelectr"),
}


@pytest.mark.parametrize("values,where", BAD_VALUES.values(), ids=BAD_VALUES.keys())
def test_schema_rejects_bad_values(chart: Any, values: dict[str, Any], where: str) -> None:
    with pytest.raises(helm.HelmValuesError, match=re.escape(where)):
        chart.validate_schema(values)
    # An install renders with the same check: the typo fails before anything reaches a cluster.
    with pytest.raises(helm.HelmValuesError):
        chart.render(values, name="upm", namespace="upm-test", is_install=True)


INCONSISTENT_VALUES = {
    "redis event log without redis": (
        {"redis": {"enabled": False}},
        "config.eventLog.backend=redis needs redis.enabled=true",
    ),
    "redis fatigue without redis": (
        {"redis": {"enabled": False}, "config": {"eventLog": {"backend": "sql"}}},
        "config.fatigueBackend=redis needs redis.enabled=true",
    ),
    "no database": ({"database": {"url": ""}}, "set database.url or database.existingSecret"),
    "no redis url": ({"redis": {"url": ""}}, "set redis.url or redis.existingSecret"),
    "tls without a secret": ({"tls": {"enabled": True}}, "tls.enabled needs tls.existingSecret"),
    "grace period shorter than the drain": (
        {"terminationGracePeriodSeconds": 25, "config": {"drainSeconds": 20.5}},
        "terminationGracePeriodSeconds must exceed preStopSleepSeconds + config.drainSeconds (26)",
    ),
    "ingress without hosts": (
        {"ingest": {"ingress": {"enabled": True}}},
        "ingest.ingress.enabled needs at least one host",
    ),
}


@pytest.mark.parametrize(
    "values,message", INCONSISTENT_VALUES.values(), ids=INCONSISTENT_VALUES.keys()
)
def test_inconsistent_values_fail_with_a_message(
    chart: Any, values: dict[str, Any], message: str
) -> None:
    chart.validate_schema(values)
    with pytest.raises(helm.HelmRenderError, match=re.escape(message)):
        chart.render(values, name="upm", namespace="upm-test", is_install=True)


def test_schema_is_strict_everywhere_it_describes_an_object() -> None:
    schema = json.loads((CHART_DIR / "values.schema.json").read_text())
    # Kubernetes objects passed through as they are (affinity, security contexts, ...) are
    # checked by kubernetes-validate on the rendered output instead.
    passthrough = {"k8sObject", "k8sList", "stringMap", "envMap", "resourceList"}

    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict):
            if node.get("type") == "object" and "properties" in node:
                assert node.get("additionalProperties") is False, path
            for key, child in node.items():
                if not (path == "$defs" and key in passthrough):
                    walk(child, key if path == "" else f"{path}/{key}")
        elif isinstance(node, list):
            for child in node:
                walk(child, path)

    walk(schema, "")
    assert schema["additionalProperties"] is False
    assert schema["properties"]["ingest"] == {"$ref": "#/$defs/ingestServer"}
    for component in ("profile", "segment", "orchestrator"):
        assert schema["properties"][component] == {"$ref": "#/$defs/server"}
    assert schema["$defs"]["server"]["properties"]["replicaCount"]["minimum"] == 1


def test_minimal_values_with_network_policies_render_closed_workers() -> None:
    values = copy.deepcopy(variant_values("minimal"))
    values["networkPolicy"] = {"enabled": True}
    rendered = render(values)
    for policy in rendered.of_kind("NetworkPolicy"):
        validate_object(policy, KUBE_VERSION)
    worker = rendered.get("NetworkPolicy", "upm-profile-worker")
    assert worker["spec"]["ingress"] == []


# --- Documentation -----------------------------------------------------------------------------

KEY_LINE = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z][A-Za-z0-9]*):(?P<rest>.*)$")


def documented_keys() -> tuple[list[str], list[str]]:
    """(documented dotted keys, keys lacking a description) of values.yaml.

    A key is documented by a "# --" comment block right above it; a map without one must
    consist of documented keys. Keys inside a documented value (a block default) are part of it.
    """
    documented: list[str] = []
    undocumented: list[str] = []
    stack: list[tuple[int, str, bool]] = []  # (indent, key, documented)
    previous_comment = ""
    for line in (CHART_DIR / "values.yaml").read_text().splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            if stripped.startswith("# --"):
                previous_comment = "doc"
            elif previous_comment != "doc":
                previous_comment = "other"
            continue
        match = KEY_LINE.match(line)
        if not match:
            if stripped == "":
                previous_comment = ""
            continue
        indent = len(match.group("indent"))
        while stack and stack[-1][0] >= indent:
            stack.pop()
        inside_documented = any(doc for _, _, doc in stack)
        path = ".".join([k for _, k, _ in stack] + [match.group("key")])
        is_doc = previous_comment == "doc"
        leaf = match.group("rest").strip() != ""
        if is_doc and not inside_documented:
            documented.append(path)
        elif leaf and not inside_documented:
            undocumented.append(path)
        stack.append((indent, match.group("key"), is_doc))
        previous_comment = ""
    return documented, undocumented


def test_every_value_is_documented_in_values_yaml() -> None:
    documented, undocumented = documented_keys()
    assert undocumented == []
    assert len(documented) > 100


def test_readme_table_lists_every_documented_value() -> None:
    readme = (CHART_DIR / "README.md").read_text()
    rows = set(re.findall(r"^\| `([^`]+)` \|", readme, flags=re.MULTILINE))
    documented, _ = documented_keys()
    assert sorted(set(documented) - rows) == []
    assert sorted(rows - set(documented)) == []


def test_readme_table_is_current() -> None:
    spec = importlib.util.spec_from_file_location(
        "values_table", CHART_DIR.parent / "values_table.py"
    )
    assert spec is not None and spec.loader is not None
    values_table = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(values_table)
    readme = (CHART_DIR / "README.md").read_text()
    values_text = (CHART_DIR / "values.yaml").read_text()
    assert values_table.START in readme
    assert values_table.updated_readme(readme, values_text) == readme, (
        "README.md is out of date: run python deploy/k8s/values_table.py"
    )
