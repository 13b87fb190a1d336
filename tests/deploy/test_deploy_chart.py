"""The rendered chart: valid Kubernetes objects, wired together correctly, secure by default."""

from __future__ import annotations

import base64
import re
from typing import Any

import helm_python as helm
import pytest
import yaml

from tests.deploy.chart_render import (
    CHART_DIR,
    KUBE_VERSION,
    NAMESPACE,
    OLDEST_KUBE_VERSION,
    VARIANTS,
    Rendered,
    validate_object,
    variant_values,
)

FULLNAME = "upm"
SERVERS = {
    "ingest": "upm.ingest.v1.IngestService",
    "profile": "upm.profile.v1.ProfileService",
    "segment": "upm.segment.v1.SegmentService",
    "orchestrator": "upm.orchestrator.v1.OrchestratorService",
}
WORKERS = {"profile-worker": ["worker", "profile"], "segment-worker": ["worker", "segment"]}
COMPONENTS = [*SERVERS, *WORKERS]
VALUES_KEYS = {
    "ingest": "ingest",
    "profile": "profile",
    "segment": "segment",
    "orchestrator": "orchestrator",
    "profile-worker": "profileWorker",
    "segment-worker": "segmentWorker",
}
# Custom resources kubernetes-validate has no schema for; they get their own checks below.
CUSTOM_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor")}
STANDARD_LABELS = {
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/version",
    "app.kubernetes.io/managed-by",
    "app.kubernetes.io/part-of",
    "helm.sh/chart",
}
# user:password@ in a URL.
URL_PASSWORD = re.compile(r"://[^/@\s:]*:[^@/\s]+@")


def pod_templates(r: Rendered) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(owner, pod template) of every Deployment and Job."""
    return [(obj, obj["spec"]["template"]) for obj in r.of_kind("Deployment") + r.of_kind("Job")]


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    result: dict[str, Any] = containers[0]
    return result


def env_of(c: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in c.get("env", [])}


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def is_hook(obj: dict[str, Any]) -> bool:
    return "helm.sh/hook" in obj["metadata"].get("annotations", {})


# --- Helm's own checks -------------------------------------------------------------------------


def test_chart_declares_the_oldest_kubernetes_it_is_validated_for() -> None:
    metadata = yaml.safe_load((CHART_DIR / "Chart.yaml").read_text())
    assert metadata["kubeVersion"] == f">={OLDEST_KUBE_VERSION}.0-0"


@pytest.mark.parametrize("variant", VARIANTS)
def test_chart_passes_strict_lint(variant: str) -> None:
    report = helm.lint(
        CHART_DIR,
        variant_values(variant),
        strict=True,
        namespace=NAMESPACE,
        kube_version=f"v{KUBE_VERSION}.0",
    )
    assert report["errors"] == []
    # Severity 2 is a warning, 3 an error; infos ("icon is recommended") are fine.
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


def test_every_object_is_valid_kubernetes_in_strict_mode(rendered: Rendered) -> None:
    assert rendered.objects
    for obj in rendered.objects:
        if (obj["apiVersion"], obj["kind"]) in CUSTOM_KINDS:
            continue
        for version in (KUBE_VERSION, OLDEST_KUBE_VERSION):
            validate_object(obj, version)


def test_objects_are_namespaced_and_named_uniquely(rendered: Rendered) -> None:
    keys = [(o["kind"], o["metadata"]["name"]) for o in rendered.objects]
    assert len(keys) == len(set(keys))
    for kind, name in keys:
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", name) and len(name) <= 63, (
            kind,
            name,
        )


def test_standard_labels_on_every_object(rendered: Rendered) -> None:
    for obj in rendered.objects:
        labels = obj["metadata"]["labels"]
        assert labels.keys() >= STANDARD_LABELS, obj["metadata"]["name"]
        assert labels["app.kubernetes.io/instance"] == "upm"
        assert labels["app.kubernetes.io/managed-by"] == "Helm"


# --- What is rendered ---------------------------------------------------------------------------


def test_a_deployment_service_account_and_services_per_component(rendered: Rendered) -> None:
    v = rendered.values
    assert rendered.names("Deployment") == {f"{FULLNAME}-{c}" for c in COMPONENTS}
    expected_services = {f"{FULLNAME}-{s}" for s in SERVERS} | {
        f"{FULLNAME}-{s}-headless" for s in SERVERS
    }
    if v["metrics"]["enabled"]:
        expected_services |= {f"{FULLNAME}-{w}-metrics" for w in WORKERS}
    assert rendered.names("Service") == expected_services
    accounts = {a["metadata"]["name"] for a in rendered.of_kind("ServiceAccount")}
    if v["serviceAccount"]["create"]:
        assert accounts == {f"{FULLNAME}-{c}" for c in COMPONENTS} | {f"{FULLNAME}-migrate"}
        for _, pod in pod_templates(rendered):
            assert pod["spec"]["serviceAccountName"] in accounts
    else:
        assert accounts == set()
    for account in rendered.of_kind("ServiceAccount"):
        assert account["automountServiceAccountToken"] is False


def test_hpa_replaces_replicas_and_targets_its_deployment(rendered: Rendered) -> None:
    hpas = {h["metadata"]["name"]: h for h in rendered.of_kind("HorizontalPodAutoscaler")}
    for component in COMPONENTS:
        values = rendered.values[VALUES_KEYS[component]]
        deployment = rendered.get("Deployment", f"{FULLNAME}-{component}")
        name = f"{FULLNAME}-{component}"
        if values["autoscaling"]["enabled"]:
            assert "replicas" not in deployment["spec"]
            target = hpas[name]["spec"]["scaleTargetRef"]
            assert (target["kind"], target["name"]) == ("Deployment", name)
            assert hpas[name]["spec"]["minReplicas"] == values["autoscaling"]["minReplicas"]
            assert hpas[name]["spec"]["minReplicas"] >= 1
        else:
            assert name not in hpas
            assert deployment["spec"]["replicas"] == values["replicaCount"] >= 1
    if rendered.variant == "production":
        assert len(hpas) == len(COMPONENTS)


def test_pod_disruption_budgets_follow_values(rendered: Rendered) -> None:
    pdbs = rendered.names("PodDisruptionBudget")
    for component in COMPONENTS:
        enabled = rendered.values[VALUES_KEYS[component]]["podDisruptionBudget"]["enabled"]
        assert (f"{FULLNAME}-{component}" in pdbs) == enabled
    if rendered.variant == "minimal":
        assert pdbs == set()


def test_service_monitor_only_when_asked(rendered: Rendered) -> None:
    monitors = rendered.of_kind("ServiceMonitor")
    if rendered.variant != "production":
        assert monitors == []
        return
    (monitor,) = monitors
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == ["metrics"]
    selector = monitor["spec"]["selector"]["matchLabels"]
    scraped = [
        s
        for s in rendered.of_kind("Service")
        if selects(selector, s["metadata"]["labels"])
        and any(p["name"] == "metrics" for p in s["spec"]["ports"])
    ]
    scraped_components = {s["metadata"]["labels"]["app.kubernetes.io/component"] for s in scraped}
    assert scraped_components == set(COMPONENTS)
    assert len(scraped) == len(COMPONENTS), "every pod is scraped through exactly one Service"


# --- Wiring ------------------------------------------------------------------------------------


def test_deployment_selectors_match_their_pod_labels(rendered: Rendered) -> None:
    for deployment in rendered.of_kind("Deployment"):
        selector = deployment["spec"]["selector"]["matchLabels"]
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert selects(selector, labels)
        assert selector["app.kubernetes.io/component"] == labels["app.kubernetes.io/component"]
    # No two Deployments select each other's pods.
    deployments = rendered.of_kind("Deployment")
    for a in deployments:
        for b in deployments:
            if a is not b:
                assert not selects(
                    a["spec"]["selector"]["matchLabels"],
                    b["spec"]["template"]["metadata"]["labels"],
                )


def test_every_selector_selects_exactly_one_workload(rendered: Rendered) -> None:
    pods = [
        (owner["metadata"]["name"], t["metadata"]["labels"]) for owner, t in pod_templates(rendered)
    ]

    def selected(selector: dict[str, str]) -> list[str]:
        return [name for name, labels in pods if selects(selector, labels)]

    for service in rendered.of_kind("Service"):
        component = service["metadata"]["labels"]["app.kubernetes.io/component"]
        assert selected(service["spec"]["selector"]) == [f"{FULLNAME}-{component}"]
    for pdb in rendered.of_kind("PodDisruptionBudget"):
        assert selected(pdb["spec"]["selector"]["matchLabels"]) == [pdb["metadata"]["name"]]
    for policy in rendered.of_kind("NetworkPolicy"):
        assert selected(policy["spec"]["podSelector"]["matchLabels"]) == [
            policy["metadata"]["name"]
        ]


def test_service_ports_are_named_and_target_container_ports(rendered: Rendered) -> None:
    for service in rendered.of_kind("Service"):
        component = service["metadata"]["labels"]["app.kubernetes.io/component"]
        deployment = rendered.get("Deployment", f"{FULLNAME}-{component}")
        container_ports = {p["name"]: p["containerPort"] for p in container(deployment)["ports"]}
        ports = {p["name"]: p for p in service["spec"]["ports"]}
        for port in ports.values():
            assert port["targetPort"] in container_ports
        name = service["metadata"]["name"]
        if component in SERVERS:
            assert ports["grpc"]["port"] == container_ports["grpc"] == 50051
            assert ports["grpc"]["appProtocol"] == "grpc"
        metrics = {"metrics"} if rendered.values["metrics"]["enabled"] else set()
        if name.endswith("-headless"):
            assert service["spec"]["clusterIP"] == "None"
            assert set(ports) == {"grpc"} | metrics
        elif component in WORKERS:
            assert service["spec"]["clusterIP"] == "None"
            assert set(ports) == {"metrics"}
        else:
            # The virtual-IP Service may be a LoadBalancer: it never exposes metrics.
            assert set(ports) == ({"grpc", "http"} if component == "ingest" else {"grpc"})
        if "metrics" in ports:
            assert ports["metrics"]["port"] == container_ports["metrics"] == 9090
    ingest = rendered.get("Service", f"{FULLNAME}-ingest")
    assert ingest["spec"]["type"] == rendered.values["ingest"]["service"]["type"]


def test_probes_ask_the_grpc_health_service_of_their_component(rendered: Rendered) -> None:
    tls = rendered.values["tls"]
    probe_port = tls["healthPort"] if tls["enabled"] else 50051
    for component in COMPONENTS:
        c = container(rendered.get("Deployment", f"{FULLNAME}-{component}"))
        ports = {p["containerPort"] for p in c["ports"]}
        expected_service = SERVERS.get(component, "")
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            grpc = c[probe]["grpc"]
            assert grpc["port"] == probe_port, (component, probe)
            assert probe_port in ports
        assert c["readinessProbe"]["grpc"]["service"] == expected_service
        assert c["startupProbe"]["grpc"]["service"] == expected_service
        assert c["livenessProbe"]["grpc"]["service"] == ""


def test_commands_ports_and_worker_split(rendered: Rendered) -> None:
    for component, health in SERVERS.items():
        c = container(rendered.get("Deployment", f"{FULLNAME}-{component}"))
        assert c["args"] == ["serve", component], health
        env = env_of(c)
        if component in {"profile", "segment"}:
            # Their workers have Deployments of their own.
            assert env["UPM_RUN_WORKERS"]["value"] == "false"
        else:
            # Ingest's suppression feed runs in every ingest pod; there is no ingest worker.
            assert "UPM_RUN_WORKERS" not in env
        assert ("UPM_HTTP_PORT" in env) == (component == "ingest")
        if component == "ingest":
            assert env["UPM_HTTP_PORT"]["value"] == "8088"
            assert env["UPM_HTTP_HOST"]["value"] == "0.0.0.0"
    for component, args in WORKERS.items():
        c = container(rendered.get("Deployment", f"{FULLNAME}-{component}"))
        assert c["args"] == args
        assert "UPM_RUN_WORKERS" not in env_of(c)
    config = rendered.get("ConfigMap", f"{FULLNAME}-config")["data"]
    assert config["UPM_GRPC_PORT"] == "50051"
    assert config["UPM_GRPC_HOST"] == "0.0.0.0"
    assert config["UPM_METRICS_PORT"] == ("9090" if rendered.values["metrics"]["enabled"] else "0")
    assert config["UPM_EVENT_LOG_BACKEND"] == rendered.values["config"]["eventLog"]["backend"]
    assert config["UPM_EVENT_LOG_PARTITIONS"] == str(
        rendered.values["config"]["eventLog"]["partitions"]
    )
    groups = rendered.values["config"]["eventLog"]["consumerGroups"]
    assert config["UPM_PROFILE_CONSUMER_GROUP"] == groups["profile"]
    assert config["UPM_SEGMENT_CONSUMER_GROUP"] == groups["segment"]


def test_peer_addresses_follow_the_load_balancing_mode(rendered: Rendered) -> None:
    config = rendered.get("ConfigMap", f"{FULLNAME}-config")["data"]
    services = rendered.names("Service")
    for peer in ("profile", "segment", "orchestrator"):
        address = config[f"UPM_{peer.upper()}_ADDRESS"]
        if rendered.values["loadBalancing"]["mode"] == "clientSide":
            host = f"{FULLNAME}-{peer}-headless"
            assert address == f"dns:///{host}.{NAMESPACE}.svc.cluster.local:50051"
        else:
            host = f"{FULLNAME}-{peer}"
            assert address == f"{host}:50051"
        assert host in services


def test_every_pod_consumes_the_shared_config_map(rendered: Rendered) -> None:
    config_maps = rendered.names("ConfigMap")
    for deployment in rendered.of_kind("Deployment"):
        refs = [e["configMapRef"]["name"] for e in container(deployment)["envFrom"]]
        assert refs == [f"{FULLNAME}-config"]
        assert set(refs) <= config_maps
        annotations = deployment["spec"]["template"]["metadata"]["annotations"]
        assert {"checksum/config", "checksum/secret"} <= annotations.keys()


# --- Secrets -----------------------------------------------------------------------------------


def existing_secret_names(values: dict[str, Any]) -> set[str]:
    names = {values["database"]["existingSecret"], values["redis"]["existingSecret"]}
    names.add(values["tls"]["existingSecret"])
    names |= {s["name"] for s in values["imagePullSecrets"]}
    names |= {t["secretName"] for t in values["ingest"]["ingress"]["tls"]}
    return names - {""}


def test_every_secret_reference_exists(rendered: Rendered) -> None:
    secrets = {s["metadata"]["name"]: s for s in rendered.of_kind("Secret")}
    existing = existing_secret_names(rendered.values)
    assert not secrets.keys() & existing, "a Secret named as existing must not be rendered"
    references = 0
    for owner, pod in pod_templates(rendered):
        spec = pod["spec"]
        for c in spec["containers"]:
            for env in c.get("env", []):
                ref = env.get("valueFrom", {}).get("secretKeyRef")
                if ref is None:
                    continue
                references += 1
                name, key = ref["name"], ref["key"]
                if name in secrets:
                    assert key in secrets[name]["data"], (owner["metadata"]["name"], name, key)
                    # A hook needs a Secret that exists before the release's objects do.
                    assert is_hook(secrets[name]) == is_hook(owner), name
                else:
                    assert name in existing, (owner["metadata"]["name"], name)
            for source in c.get("envFrom", []):
                assert "secretRef" not in source
        for volume in spec.get("volumes", []):
            if "secret" in volume:
                references += 1
                assert volume["secret"]["secretName"] in secrets.keys() | existing
        for pull in spec.get("imagePullSecrets", []):
            assert pull["name"] in existing
    for ingress in rendered.of_kind("Ingress"):
        for tls in ingress["spec"].get("tls", []):
            references += 1
            assert tls["secretName"] in existing
    assert references >= len(COMPONENTS)


def test_connection_strings_come_from_secrets(rendered: Rendered) -> None:
    values = rendered.values
    for deployment in rendered.of_kind("Deployment"):
        env = env_of(container(deployment))
        db = env["UPM_DATABASE_URL"]["valueFrom"]["secretKeyRef"]
        if values["database"]["existingSecret"]:
            assert db == {
                "name": values["database"]["existingSecret"],
                "key": values["database"]["existingSecretKey"],
            }
        else:
            secret = rendered.get("Secret", db["name"])
            decoded = base64.b64decode(secret["data"][db["key"]]).decode()
            assert decoded == values["database"]["url"]
        assert ("UPM_REDIS_URL" in env) == values["redis"]["enabled"]
        if values["redis"]["enabled"] and values["redis"]["existingSecret"]:
            assert (
                env["UPM_REDIS_URL"]["valueFrom"]["secretKeyRef"]["name"]
                == (values["redis"]["existingSecret"])
            )
    if values["database"]["existingSecret"] and values["redis"]["existingSecret"]:
        assert [s for s in rendered.of_kind("Secret") if not is_hook(s)] == []


def test_no_password_in_any_config_map(rendered: Rendered) -> None:
    passwords = {
        m.group(1)
        for url in (rendered.values["database"]["url"], rendered.values["redis"]["url"])
        for m in [re.search(r"://[^/@:]*:([^@/]+)@", url)]
        if m
    }
    if rendered.variant in {"minimal", "mtls"}:
        assert passwords, "the variant must carry a password for this test to mean something"
    for config_map in rendered.of_kind("ConfigMap"):
        for key, value in config_map["data"].items():
            assert not URL_PASSWORD.search(value), key
            assert not any(p in value for p in passwords), key
    for obj in rendered.objects:
        if obj["kind"] != "Secret":
            text = repr(obj)
            assert not any(p in text for p in passwords), obj["metadata"]["name"]


# --- Security ----------------------------------------------------------------------------------


def test_pods_run_non_root_with_read_only_root_and_no_capabilities(rendered: Rendered) -> None:
    for owner, pod in pod_templates(rendered):
        spec = pod["spec"]
        name = owner["metadata"]["name"]
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        assert spec["securityContext"]["runAsUser"] != 0
        assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
        assert spec["automountServiceAccountToken"] is False
        volumes = {v["name"]: v for v in spec["volumes"]}
        for c in spec["containers"]:
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True, name
            assert sc["allowPrivilegeEscalation"] is False
            assert sc["capabilities"]["drop"] == ["ALL"]
            assert "add" not in sc["capabilities"]
            tmp = [m for m in c["volumeMounts"] if m["mountPath"] == "/tmp"]
            assert len(tmp) == 1 and "emptyDir" in volumes[tmp[0]["name"]], name
            assert c["resources"]["requests"], name
            assert c["resources"]["limits"]["memory"], name


def test_mtls_mounts_the_certificate_secret(rendered: Rendered) -> None:
    config = rendered.get("ConfigMap", f"{FULLNAME}-config")["data"]
    tls = rendered.values["tls"]
    if not tls["enabled"]:
        assert not any(k.startswith("UPM_TLS_") for k in config)
        return
    assert config["UPM_HEALTH_PORT"] == str(tls["healthPort"])
    for deployment in rendered.of_kind("Deployment"):
        spec = deployment["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in spec["volumes"]}
        mounts = {m["mountPath"]: m for m in container(deployment)["volumeMounts"]}
        mount = mounts["/etc/upm/tls"]
        assert mount["readOnly"] is True
        assert volumes[mount["name"]]["secret"]["secretName"] == tls["existingSecret"]
        for variable, file in [
            ("UPM_TLS_CERT_FILE", "tls.crt"),
            ("UPM_TLS_KEY_FILE", "tls.key"),
            ("UPM_TLS_CA_FILE", "ca.crt"),
        ]:
            assert config[variable] == f"/etc/upm/tls/{file}"


# --- Migrations --------------------------------------------------------------------------------


def test_migrations_run_in_a_pre_install_and_pre_upgrade_hook(rendered: Rendered) -> None:
    job = rendered.get("Job", f"{FULLNAME}-migrate")
    annotations = job["metadata"]["annotations"]
    assert set(annotations["helm.sh/hook"].split(",")) == {"pre-install", "pre-upgrade"}
    assert "before-hook-creation" in annotations["helm.sh/hook-delete-policy"]
    c = job["spec"]["template"]["spec"]["containers"][0]
    assert c["args"] == ["migrate"]
    job_weight = int(annotations["helm.sh/hook-weight"])
    # Everything the Job uses is a hook created before it, or exists outside the chart.
    for obj in rendered.objects:
        if is_hook(obj) and obj is not job:
            assert int(obj["metadata"]["annotations"]["helm.sh/hook-weight"]) < job_weight
    account = job["spec"]["template"]["spec"].get("serviceAccountName")
    if account:
        assert is_hook(rendered.get("ServiceAccount", account))
    for deployment in rendered.of_kind("Deployment"):
        assert not is_hook(deployment)


# --- NetworkPolicy -----------------------------------------------------------------------------


def ingress_peers(policy: dict[str, Any], port: str) -> list[Any] | None:
    """The peers allowed on a named port; [] when anyone may connect, None when nobody."""
    peers: list[Any] | None = None
    for rule in policy["spec"]["ingress"]:
        if any(p["port"] == port for p in rule["ports"]):
            if "from" not in rule:
                return []
            peers = [*(peers or []), *rule["from"]]
    return peers


def components_in(peers: list[Any]) -> set[str]:
    return {
        p["podSelector"]["matchLabels"]["app.kubernetes.io/component"]
        for p in peers
        if "podSelector" in p
    }


def test_network_policies_allow_only_what_must_talk(rendered: Rendered) -> None:
    policies = {p["metadata"]["name"]: p for p in rendered.of_kind("NetworkPolicy")}
    if not rendered.values["networkPolicy"]["enabled"]:
        assert policies == {}
        return
    assert set(policies) == {f"{FULLNAME}-{c}" for c in COMPONENTS} | {f"{FULLNAME}-migrate"}
    for policy in policies.values():
        assert set(policy["spec"]["policyTypes"]) == {"Ingress", "Egress"}

    def policy(component: str) -> dict[str, Any]:
        return policies[f"{FULLNAME}-{component}"]

    assert components_in(ingress_peers(policy("profile"), "grpc") or []) == {
        "segment",
        "segment-worker",
        "orchestrator",
    }
    assert components_in(ingress_peers(policy("segment"), "grpc") or []) == {"orchestrator"}
    for worker in WORKERS:
        assert ingress_peers(policy(worker), "grpc") is None
    assert ingress_peers(policy("ingest"), "http") == ingress_peers(policy("ingest"), "grpc")
    np = rendered.values["networkPolicy"]
    for component, key in [("ingest", "ingestFrom"), ("orchestrator", "orchestratorFrom")]:
        # A public entry point: open to anyone, or to its listed callers and the operators.
        expected = [*np[key], *np["operatorsFrom"]] if np[key] else []
        assert ingress_peers(policy(component), "grpc") == expected
    for component in ("profile", "segment"):
        peers = ingress_peers(policy(component), "grpc") or []
        assert all(p in peers for p in np["operatorsFrom"])
        assert peers, "internal services are never open to anyone"

    def dialled(component: str) -> set[str]:
        found: set[str] = set()
        for rule in policy(component)["spec"]["egress"]:
            if any(p["port"] == 50051 for p in rule["ports"]):
                found |= components_in(rule["to"])
        return found

    assert dialled("orchestrator") == {"profile", "segment"}
    assert dialled("segment") == {"profile"}
    assert dialled("ingest") == set()
    assert dialled("profile-worker") == set()
    database_ports = set(np["database"]["ports"])
    for p in policies.values():
        egress_ports = {port["port"] for rule in p["spec"]["egress"] for port in rule["ports"]}
        assert database_ports <= egress_ports
        assert 53 in egress_ports
        if rendered.values["redis"]["enabled"]:
            assert set(np["redisEgress"]["ports"]) <= egress_ports
    if rendered.variant == "production":
        db_rule = next(
            r for r in policy("profile")["spec"]["egress"] if r["ports"][0]["port"] == 5432
        )
        assert db_rule["to"] == [{"ipBlock": {"cidr": "10.20.0.0/24"}}]


def test_notes_tell_how_to_reach_the_services(rendered: Rendered) -> None:
    for component in SERVERS:
        assert f"{FULLNAME}-{component}.{NAMESPACE}.svc:50051" in rendered.notes
    assert "8088" in rendered.notes
    if rendered.values["tls"]["enabled"]:
        assert "-cacert" in rendered.notes


def test_collector_ingress_routes_only_the_http_api(rendered: Rendered) -> None:
    ingresses = rendered.of_kind("Ingress")
    settings = rendered.values["ingest"]["ingress"]
    if not settings["enabled"]:
        assert ingresses == []
        return
    (ingress,) = ingresses
    service = rendered.get("Service", f"{FULLNAME}-ingest")
    port_names = {p["name"] for p in service["spec"]["ports"]}
    assert [r["host"] for r in ingress["spec"]["rules"]] == settings["hosts"]
    for rule in ingress["spec"]["rules"]:
        (path,) = rule["http"]["paths"]
        assert (path["path"], path["pathType"]) == ("/v1", "Prefix")
        backend = path["backend"]["service"]
        assert backend["name"] == service["metadata"]["name"]
        assert backend["port"]["name"] == "http" and "http" in port_names
    assert ingress["spec"]["tls"] == settings["tls"]
