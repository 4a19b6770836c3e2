"""The rendered chart: valid Kubernetes objects that wire together correctly.

Every test runs against the default, small and large values files, so a
component that is only switched on in one of them is still checked.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import json
import re
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests.deploy.helmchart import CHART, GET_HELM, HELM_SHA256, ROOT, VALUES_FILES

from postwarden.cli import build_parser
from postwarden.config import Settings, TenantsFile, load_settings
from postwarden.keyring import Keyring
from postwarden.topics import ALL_TOPICS

# Oldest and newest minor versions the chart targets that kubernetes-validate ships.
K8S_VERSIONS = ("1.30.0", "1.33.0")
# Custom resources of optional operators: no upstream schema to check against.
OPERATOR_KINDS = {"KafkaTopic"}
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "Job"}
LONG_RUNNING = {"Deployment", "StatefulSet"}
POSTWARDEN_IMAGE = "postwarden/postwarden"

ARGS = {
    "ingest": ["ingest"],
    "worker": ["worker"],
    "stats": ["sink", "stats"],
    "delivery": ["sink", "delivery"],
    "notifier": ["sink", "notify"],
    "web": ["web"],
}
ALL_WORKLOADS = {("Deployment", "ingest"), ("StatefulSet", "worker"), ("Deployment", "stats"),
                 ("Deployment", "clamav"), ("Job", "migrate"), ("Deployment", "delivery"),
                 ("Deployment", "notifier"), ("Deployment", "web")}
# Every component is on by default now that all of them have landed.
EXPECTED_WORKLOADS = {"default": ALL_WORKLOADS, "small": ALL_WORKLOADS, "large": ALL_WORKLOADS}
# Containers that read the keys file (postwarden.keyring), and only those.
KEY_HOLDERS = {"worker", "web", "notifier"}
KEYS_FILE = "/etc/postwarden/keys/keys.json"
VALUE_SETS = list(VALUES_FILES)


def component(obj: dict) -> str:
    return obj["metadata"]["labels"]["app.kubernetes.io/component"]


def of_kind(docs: list[dict], *kinds: str) -> list[dict]:
    return [d for d in docs if d["kind"] in kinds]


def workloads(docs: list[dict], kinds=WORKLOAD_KINDS) -> list[dict]:
    return of_kind(docs, *kinds)


def one(docs: list[dict], kind: str, comp: str) -> dict:
    found = [d for d in of_kind(docs, kind) if component(d) == comp]
    assert len(found) == 1, f"expected one {kind} for {comp}, found {len(found)}"
    return found[0]


def pod_spec(workload: dict) -> dict:
    return workload["spec"]["template"]["spec"]


def pod_labels(workload: dict) -> dict:
    return workload["spec"]["template"]["metadata"]["labels"]


def all_containers(workload: dict) -> list[dict]:
    spec = pod_spec(workload)
    return spec.get("initContainers", []) + spec["containers"]


def selects(selector: dict, labels: dict) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


# What the downward API would give a pod, for expanding $(VAR) references.
POD_FIELDS = {"status.podIP": "10.1.2.3", "metadata.name": "pw-postwarden-worker-0"}


def container_env(docs: list[dict], container: dict, expand: bool = False) -> dict[str, object]:
    """The container's environment as Kubernetes would assemble it (literal values
    as strings, references as their valueFrom). With expand, fieldRefs take the
    values in POD_FIELDS and $(VAR) references to earlier entries are replaced,
    as the kubelet does."""
    env: dict[str, object] = {}
    configmaps = {d["metadata"]["name"]: d for d in of_kind(docs, "ConfigMap")}
    for source in container.get("envFrom", []):
        ref = source["configMapRef"]["name"]
        assert ref in configmaps, f"envFrom names ConfigMap {ref}, which the chart does not render"
        env.update(configmaps[ref]["data"])
    for item in container.get("env", []):
        if "value" in item:
            value = item["value"]
            if expand:
                def sub(m: re.Match) -> str:
                    assert isinstance(env.get(m.group(1)), str), \
                        f"{item['name']} refers to $({m.group(1)}), which is not defined before it"
                    return env[m.group(1)]
                value = re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", sub, value)
            env[item["name"]] = value
        elif expand and "fieldRef" in item["valueFrom"]:
            env[item["name"]] = POD_FIELDS[item["valueFrom"]["fieldRef"]["fieldPath"]]
        else:
            env[item["name"]] = item["valueFrom"]
    return env


def only_container(docs: list[dict], kind: str, comp: str) -> dict:
    (container,) = pod_spec(one(docs, kind, comp))["containers"]
    return container


def mounts(container: dict) -> dict[str, dict]:
    return {m["mountPath"]: m for m in container.get("volumeMounts", [])}


def volume(workload: dict, name: str) -> dict:
    (found,) = [v for v in pod_spec(workload)["volumes"] if v["name"] == name]
    return found


@pytest.fixture(params=VALUE_SETS)
def values_name(request) -> str:
    return request.param


@pytest.fixture
def docs(values_name, rendered) -> list[dict]:
    return rendered[values_name]


# --- tooling --------------------------------------------------------------


def test_get_helm_is_pinned_and_idempotent(helm):
    assert hashlib.sha256(helm.binary.read_bytes()).hexdigest() == HELM_SHA256
    before = helm.binary.stat().st_mtime_ns
    out = subprocess.run(["bash", str(GET_HELM)], capture_output=True, text=True, check=True).stdout
    assert Path(out.strip()) == helm.binary
    assert helm.binary.stat().st_mtime_ns == before, "a second run must keep the verified binary"
    assert "v3." in helm.run("version", "--short", check=True).stdout


@pytest.mark.parametrize("name", VALUE_SETS)
def test_lint_strict(helm, name):
    args = ["lint", "--strict", str(CHART)]
    if VALUES_FILES[name] is not None:
        args += ["-f", str(VALUES_FILES[name])]
    proc = helm.run(*args)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 chart(s) failed" in proc.stdout


# --- schema validity of every object --------------------------------------


def test_validator_catches_bad_objects():
    """The validation below is only worth something if it can fail."""
    bad = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x"},
           "spec": {"replicas": "two", "selector": {}, "template": {}}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSIONS[0], strict=True)
    typo = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "x"}, "spec": {"portz": []}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(typo, K8S_VERSIONS[0], strict=True)
    with pytest.raises(kubernetes_validate.SchemaNotFoundError):
        kubernetes_validate.validate({"apiVersion": "x.example/v1", "kind": "Nope", "metadata": {"name": "x"}},
                                     K8S_VERSIONS[0], strict=True)


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_every_object_is_valid_kubernetes(docs, version):
    assert version.rsplit(".", 1)[0] in {v.rsplit(".", 1)[0] for v in kubernetes_validate.utils.all_versions()}
    errors = []
    for doc in docs:
        where = f"{doc['kind']}/{doc['metadata']['name']}"
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.SchemaNotFoundError:
            if doc["kind"] not in OPERATOR_KINDS:
                errors.append(f"{where}: no schema for this kind in Kubernetes {version}")
        except kubernetes_validate.ValidationError as exc:
            errors.append(f"{where}: {exc.caught.message} at {list(exc.caught.path)}")
    assert not errors, "\n".join(errors)


def test_names_are_unique_per_kind(docs):
    seen = [(d["kind"], d["metadata"]["name"]) for d in docs]
    assert len(seen) == len(set(seen))


# --- workloads ------------------------------------------------------------


def test_expected_workloads_and_args(docs, values_name):
    name = values_name
    found = {(w["kind"], component(w)) for w in workloads(docs)}
    assert found == EXPECTED_WORKLOADS[name]
    for w in workloads(docs, LONG_RUNNING):
        comp = component(w)
        if comp in ARGS:
            (container,) = pod_spec(w)["containers"]
            assert container["image"].startswith(POSTWARDEN_IMAGE + ":")
            assert container["args"] == ARGS[comp]


def test_ingest_ports_and_service(docs, values_name):
    large = values_name == "large"
    ingest = one(docs, "Deployment", "ingest")
    (container,) = pod_spec(ingest)["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"smtp": 2525, "health": 8080}
    env = container_env(docs, container)
    assert env["POSTWARDEN_SMTP_HOST"] == "0.0.0.0"
    assert env["POSTWARDEN_SMTP_PORT"] == "2525"
    assert env["POSTWARDEN_PROXY_PROTOCOL"] == ("true" if large else "false")

    svc = one(docs, "Service", "ingest")
    assert svc["spec"]["type"] == "LoadBalancer"
    assert svc["spec"]["externalTrafficPolicy"] == "Local"
    service_ports = {p["port"]: p["targetPort"] for p in svc["spec"]["ports"]}
    assert service_ports == ({25: "smtp", 587: "smtp"} if large else {25: "smtp"})


def test_health_port_on_every_postwarden_container(docs):
    for w in workloads(docs, LONG_RUNNING):
        if component(w) == "clamav":
            continue
        for c in pod_spec(w)["containers"]:
            ports = {p["name"]: p["containerPort"] for p in c["ports"]}
            assert ports.get("health") == 8080, f"{component(w)} has no health port 8080"
            assert container_env(docs, c)["POSTWARDEN_HEALTH_PORT"] == "8080"


def test_web_and_clamav_ports(docs, values_name):
    clamav = one(docs, "Deployment", "clamav")
    (c,) = pod_spec(clamav)["containers"]
    assert c["image"].startswith("clamav/clamav:")
    assert {p["containerPort"] for p in c["ports"]} == {3310}
    assert {p["port"] for p in one(docs, "Service", "clamav")["spec"]["ports"]} == {3310}
    if values_name == "large":
        (c,) = pod_spec(one(docs, "Deployment", "web"))["containers"]
        assert {p["name"]: p["containerPort"] for p in c["ports"]}["http"] == 8000
        ingress = one(docs, "Ingress", "web")
        backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
        assert backend["name"] == one(docs, "Service", "web")["metadata"]["name"]


def test_worker_statefulset(docs):
    sts = one(docs, "StatefulSet", "worker")
    svc = one(docs, "Service", "worker")
    assert svc["spec"]["clusterIP"] == "None"
    assert sts["spec"]["serviceName"] == svc["metadata"]["name"]
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    (c,) = pod_spec(sts)["containers"]
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    assert mounts[claim["metadata"]["name"]] == "/var/lib/postwarden"
    assert container_env(docs, c)["POSTWARDEN_DATA_DIR"] == "/var/lib/postwarden"
    assert claim["metadata"]["name"] not in {v["name"] for v in pod_spec(sts)["volumes"]}
    partitions = int(container_env(docs, c)["POSTWARDEN_TOPIC_PARTITIONS"])
    assert 1 <= sts["spec"]["replicas"] <= partitions, "workers beyond the partition count sit idle"


def test_probes_on_every_long_running_container(docs):
    # Job containers are one-shot and init containers may not carry probes.
    for w in workloads(docs, LONG_RUNNING):
        for c in pod_spec(w)["containers"]:
            port_names = {p["name"] for p in c["ports"]}
            for probe in ("livenessProbe", "readinessProbe"):
                assert probe in c, f"{component(w)}/{c['name']} lacks {probe}"
                action = c[probe].get("httpGet") or c[probe].get("tcpSocket")
                assert action and action["port"] in port_names
            if c["image"].startswith(POSTWARDEN_IMAGE):
                assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
                assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"


def test_security_contexts_everywhere(docs):
    for w in workloads(docs):
        spec = pod_spec(w)
        psc = spec["securityContext"]
        assert psc["runAsNonRoot"] is True, component(w)
        assert psc["seccompProfile"]["type"] == "RuntimeDefault", component(w)
        assert spec.get("automountServiceAccountToken") is False, component(w)
        tmp_volumes = {v["name"] for v in spec["volumes"] if "emptyDir" in v}
        for c in all_containers(w):
            sc = c["securityContext"]
            where = f"{component(w)}/{c['name']}"
            assert sc["allowPrivilegeEscalation"] is False, where
            assert sc["readOnlyRootFilesystem"] is True, where
            assert sc["capabilities"]["drop"] == ["ALL"], where
            assert not sc.get("privileged"), where
            tmp = [m for m in c["volumeMounts"] if m["mountPath"] == "/tmp"]
            assert tmp and tmp[0]["name"] in tmp_volumes, f"{where}: /tmp must be a writable emptyDir"
            if c["image"].startswith(POSTWARDEN_IMAGE):
                assert psc["runAsUser"] == 10001, where


def test_resources_everywhere(docs):
    for w in workloads(docs):
        for c in all_containers(w):
            res = c["resources"]
            for part in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(res.get(part, {})), f"{component(w)}/{c['name']} {part}"


# --- wiring between objects -----------------------------------------------


def test_service_selectors_match_pods(docs):
    for svc in of_kind(docs, "Service"):
        matched = [w for w in workloads(docs, LONG_RUNNING) if selects(svc["spec"]["selector"], pod_labels(w))]
        assert len(matched) == 1, f"Service {svc['metadata']['name']} selects {len(matched)} workloads"
        ports = {p["name"] for c in pod_spec(matched[0])["containers"] for p in c["ports"]}
        for p in svc["spec"]["ports"]:
            assert p["targetPort"] in ports, f"{svc['metadata']['name']}: no container port {p['targetPort']}"


def test_pdbs_select_existing_workloads(docs):
    pdbs = of_kind(docs, "PodDisruptionBudget")
    covered = set()
    for pdb in pdbs:
        matched = [w for w in workloads(docs, LONG_RUNNING)
                   if selects(pdb["spec"]["selector"]["matchLabels"], pod_labels(w))]
        assert len(matched) == 1, f"PDB {pdb['metadata']['name']} selects {len(matched)} workloads"
        covered.add(component(matched[0]))
    assert covered == {component(w) for w in workloads(docs, LONG_RUNNING)}


def test_hpas_target_stateless_deployments(docs, values_name):
    deployments = {d["metadata"]["name"]: d for d in of_kind(docs, "Deployment")}
    targets = set()
    for hpa in of_kind(docs, "HorizontalPodAutoscaler"):
        ref = hpa["spec"]["scaleTargetRef"]
        assert ref["kind"] == "Deployment" and ref["name"] in deployments
        assert "replicas" not in deployments[ref["name"]]["spec"], "HPA and a fixed replica count would fight"
        assert hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
        targets.add(component(deployments[ref["name"]]))
    expected = {"default": {"ingest", "delivery", "web"}, "small": set(),
                "large": {"ingest", "stats", "delivery", "web"}}
    assert targets == expected[values_name]


def test_network_policy_per_workload(docs):
    policies = of_kind(docs, "NetworkPolicy")
    for w in workloads(docs):
        matched = [p for p in policies if selects(p["spec"]["podSelector"]["matchLabels"], pod_labels(w))]
        assert len(matched) == 1, f"{component(w)} is selected by {len(matched)} NetworkPolicies"
        assert set(matched[0]["spec"]["policyTypes"]) == {"Ingress", "Egress"}


def _policy(docs, comp):
    return one(docs, "NetworkPolicy", comp)["spec"]


def _egress_ports(spec) -> set[int]:
    return {p["port"] for rule in spec["egress"] for p in rule["ports"]}


def _values(name: str) -> dict:
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    if VALUES_FILES[name] is None:
        return defaults
    override = yaml.safe_load(VALUES_FILES[name].read_text())

    def merge(a, b):
        return {**a, **{k: merge(a[k], v) if isinstance(v, dict) and isinstance(a.get(k), dict) else v
                        for k, v in b.items()}}
    return merge(defaults, override)


def test_network_policies_allow_only_what_each_part_needs(docs, values_name):
    values = _values(values_name)
    kafka = set(values["kafka"]["networkPolicy"]["ports"])
    clickhouse = set(values["clickhouse"]["networkPolicy"]["ports"])
    dns = {53}
    labels = {component(w): pod_labels(w) for w in workloads(docs)}

    resolvers = {int(s.rpartition(":")[2]) if re.search(r"(\]|^[^\[]*):\d+$", s) else 53
                 for s in values["scoring"]["dnsServers"]}

    assert _egress_ports(_policy(docs, "ingest")) == dns | kafka
    assert {p["port"] for r in _policy(docs, "ingest")["ingress"] for p in r["ports"]} == {2525, 8080}
    assert _egress_ports(_policy(docs, "worker")) == dns | kafka | {3310, 8080} | resolvers
    assert _egress_ports(_policy(docs, "stats")) == dns | kafka | clickhouse
    assert _egress_ports(_policy(docs, "migrate")) == dns | kafka | clickhouse
    assert _policy(docs, "migrate")["ingress"] == []

    worker_to_clamav = [r for r in _policy(docs, "worker")["egress"]
                        if any(selects(t.get("podSelector", {}).get("matchLabels", {}), labels["clamav"])
                               for t in r.get("to", []))]
    assert worker_to_clamav and worker_to_clamav[0]["ports"] == [{"protocol": "TCP", "port": 3310}]

    (clamav_in,) = _policy(docs, "clamav")["ingress"]
    (peer,) = clamav_in["from"]
    assert peer["podSelector"]["matchLabels"] == labels["worker"], "only workers may reach ClamAV"
    assert clamav_in["ports"] == [{"protocol": "TCP", "port": 3310}]
    assert kafka.isdisjoint(_egress_ports(_policy(docs, "clamav")) - {443})

    # The Message Center keeps nothing itself: it talks to the workers only.
    assert _egress_ports(_policy(docs, "web")) == dns | {8080}
    assert {p["port"] for r in _policy(docs, "web")["ingress"] for p in r["ports"]} == {8000, 8080}
    assert _egress_ports(_policy(docs, "delivery")) == dns | kafka | set(values["delivery"]["smtpTo"]["ports"])
    # Alerts and digests leave through mail.deliver.
    assert _egress_ports(_policy(docs, "notifier")) == dns | kafka

    for p in of_kind(docs, "NetworkPolicy"):
        for rule in p["spec"]["egress"]:
            for peer in rule.get("to", []):
                if "ipBlock" in peer:
                    ipaddress.ip_network(peer["ipBlock"]["cidr"])


# --- configuration --------------------------------------------------------

REQUIRED_ENV = {
    "POSTWARDEN_BOOTSTRAP_SERVERS", "POSTWARDEN_TOPIC_PARTITIONS", "POSTWARDEN_REPLICATION_FACTOR",
    "POSTWARDEN_TENANTS_FILE", "POSTWARDEN_DATA_DIR", "POSTWARDEN_MAX_MESSAGE_SIZE",
    "POSTWARDEN_CLICKHOUSE_URL", "POSTWARDEN_HEALTH_PORT", "POSTWARDEN_LOG_LEVEL", "POSTWARDEN_APP_ID",
    "POSTWARDEN_NODE_NAME",
}


def postwarden_containers(docs: list[dict]):
    for w in workloads(docs):
        for c in all_containers(w):
            if c["image"].startswith(POSTWARDEN_IMAGE):
                yield w, c


def unknown_settings(env: dict[str, object]) -> list[str]:
    """POSTWARDEN_* names that are no Settings field: Settings ignores them silently."""
    fields = {f"POSTWARDEN_{name.upper()}" for name in Settings.model_fields}
    return sorted(k for k in env if k.startswith("POSTWARDEN_") and k not in fields)


def test_unknown_setting_check_can_fail():
    assert unknown_settings({"POSTWARDEN_CLAMAV_ADDRESS": "x", "POSTWARDEN_CLAMD_ADDRESS": "x", "POD_IP": "x"}) \
        == ["POSTWARDEN_CLAMAV_ADDRESS"]


def test_env_is_complete_and_accepted_by_settings(docs):
    for w, c in postwarden_containers(docs):
        where = f"{component(w)}/{c['name']}"
        env = container_env(docs, c, expand=True)
        required = REQUIRED_ENV - ({"POSTWARDEN_TENANTS_FILE"} if w["kind"] == "Job" else set())
        assert required <= set(env), f"{where} lacks {sorted(required - set(env))}"
        assert container_env(docs, c)["POSTWARDEN_NODE_NAME"] == {"fieldRef": {"fieldPath": "metadata.name"}}
        assert not unknown_settings(env), f"{where} sets variables Postwarden does not read: {unknown_settings(env)}"
        literal = {k: v for k, v in env.items() if isinstance(v, str)}
        settings = load_settings(env=literal)  # raises ConfigError naming a bad variable
        assert settings.bootstrap_list
        # Probes and Prometheus reach the pod IP, not loopback.
        assert settings.health_host == "0.0.0.0" and settings.health_port == 8080
        paths = mounts(c)
        assert env["POSTWARDEN_DATA_DIR"] in paths, f"{where}: DATA_DIR is not a writable volume"
        assert not paths[env["POSTWARDEN_DATA_DIR"]].get("readOnly")
        if "POSTWARDEN_TENANTS_FILE" in env:
            assert env["POSTWARDEN_TENANTS_FILE"] in paths, f"{where}: tenants file not mounted"


def test_every_command_the_chart_runs_exists(docs):
    """Against the real CLI parser, so a renamed subcommand fails here, not in a crash loop."""
    parser = build_parser()
    seen = set()
    for w, c in postwarden_containers(docs):
        try:
            args = parser.parse_args(c["args"])
        except SystemExit:
            pytest.fail(f"{component(w)}/{c['name']}: `postwarden {' '.join(c['args'])}` is not a command")
        assert callable(args.func)
        seen.add(tuple(c["args"]))
    assert ("ingest",) in seen and ("worker",) in seen and ("clickhouse", "migrate") in seen


def test_tenants_configmap_is_accepted_by_the_app(docs, values_name):
    (cm,) = [d for d in of_kind(docs, "ConfigMap") if "tenants.yaml" in d["data"]]
    parsed = TenantsFile.model_validate(yaml.safe_load(cm["data"]["tenants.yaml"]))
    assert [t.id for t in parsed.tenants] == [t["id"] for t in _values(values_name)["tenants"]]


def test_secrets_are_referenced_not_inlined(docs, values_name):
    name = values_name
    secrets = {d["metadata"]["name"]: d for d in of_kind(docs, "Secret")}
    for w in workloads(docs):
        for c in all_containers(w):
            for key, value in container_env(docs, c).items():
                if key.endswith("_FILE") and ("KEY" in key or "SECRET" in key):
                    # A path: the file behind it must be a read-only Secret mount.
                    (mount,) = [m for path, m in mounts(c).items() if value.startswith(path + "/")]
                    assert mount["readOnly"] and "secret" in volume(w, mount["name"]), f"{component(w)}: {key}"
                    continue
                assert not (("PASSWORD" in key or "KEY" in key or "SECRET" in key) and isinstance(value, str)), \
                    f"{component(w)}: {key} must come from a Secret"
    if name == "default":
        chart_secret = secrets["pw-postwarden"]
        assert chart_secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
        assert set(chart_secret["data"]) == {"keys.json"}
    if name == "large":
        assert not secrets, "every secret comes from existing Secrets in the large example"
        (stats,) = pod_spec(one(docs, "Deployment", "stats"))["containers"]
        assert container_env(docs, stats)["POSTWARDEN_CLICKHOUSE_PASSWORD"]["secretKeyRef"]["name"] == \
            "clickhouse-postwarden"


def test_migration_hook(docs, values_name):
    job = one(docs, "Job", "migrate")
    annotations = job["metadata"]["annotations"]
    assert set(annotations["helm.sh/hook"].split(",")) == {"pre-install", "pre-upgrade"}
    spec = pod_spec(job)
    steps = [c["args"] for c in all_containers(job)]
    strimzi = values_name == "large"
    assert steps == ([] if strimzi else [["topics", "create"]]) + [["clickhouse", "migrate"]]
    assert spec["restartPolicy"] == "Never"
    # Hooks run before the release's own objects exist: the Job may only use
    # other hooks that come earlier, or Secrets from outside the chart.
    weight = int(annotations.get("helm.sh/hook-weight", "0"))
    release_objects = {(d["kind"], d["metadata"]["name"]) for d in docs
                       if "helm.sh/hook" not in d["metadata"].get("annotations", {})}
    earlier_hooks = {(d["kind"], d["metadata"]["name"]) for d in docs
                     if "helm.sh/hook" in d["metadata"].get("annotations", {})
                     and int(d["metadata"]["annotations"].get("helm.sh/hook-weight", "0")) < weight}
    assert "serviceAccountName" not in spec
    for c in all_containers(job):
        assert "envFrom" not in c
        for item in c["env"]:
            ref = item.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                assert ("Secret", ref["name"]) not in release_objects, f"{item['name']} needs a release Secret"
                if ref["name"].startswith("pw-"):
                    assert ("Secret", ref["name"]) in earlier_hooks
    for v in spec["volumes"]:
        assert "configMap" not in v
    assert ("NetworkPolicy", "pw-postwarden-migrate") in earlier_hooks


def test_config_changes_roll_pods(helm, rendered, tmp_path):
    base = {component(w): w["spec"]["template"]["metadata"]["annotations"]
            for w in workloads(rendered["default"], LONG_RUNNING) if component(w) != "clamav"}
    tenants = _values("default")["tenants"]
    tenants[0]["spam_threshold"] = 40
    changed = tmp_path / "changed.yaml"
    changed.write_text(yaml.safe_dump({"tenants": tenants, "config": {"logLevel": "DEBUG"}}))
    changed_docs = helm.render(values=changed)
    for w in workloads(changed_docs, LONG_RUNNING):
        if component(w) in base:
            after = w["spec"]["template"]["metadata"]["annotations"]
            assert after["checksum/tenants"] != base[component(w)]["checksum/tenants"]
            assert after["checksum/settings"] != base[component(w)]["checksum/settings"]


# --- optional operator and dashboard objects ------------------------------


def test_strimzi_topics_toggle(docs, values_name):
    topics = of_kind(docs, "KafkaTopic")
    if values_name != "large":
        assert topics == []
        return
    values = _values("large")
    assert {t["spec"]["topicName"] for t in topics} == {s.name for s in ALL_TOPICS}
    configs = {s.name: s.config() for s in ALL_TOPICS}
    for t in topics:
        assert t["apiVersion"] == "kafka.strimzi.io/v1beta2"
        assert t["metadata"]["namespace"] == values["kafka"]["strimzi"]["namespace"]
        assert t["metadata"]["labels"]["strimzi.io/cluster"] == values["kafka"]["strimzi"]["cluster"]
        assert t["spec"]["partitions"] == values["kafka"]["partitions"]
        assert t["spec"]["replicas"] == values["kafka"]["replicationFactor"]
        assert t["spec"]["config"] == configs[t["spec"]["topicName"]]


def test_chart_topics_file_is_generated_from_the_code():
    import yaml

    from postwarden.topics import topics_document

    assert yaml.safe_load((CHART / "topics.yaml").read_text()) == topics_document()


def test_strimzi_toggle_on_its_own(helm):
    docs = helm.render("--set", "kafka.strimzi.enabled=true", "--set", "kafka.partitions=24")
    topics = of_kind(docs, "KafkaTopic")
    assert len(topics) == len(ALL_TOPICS)
    assert {t["spec"]["partitions"] for t in topics} == {24}
    assert {t["metadata"]["namespace"] for t in topics} == {"mail"}


def test_grafana_dashboards_toggle(docs, values_name):
    dashboards = [d for d in of_kind(docs, "ConfigMap") if d["metadata"]["labels"].get("grafana_dashboard")]
    if values_name != "large":
        assert dashboards == []
        return
    (cm,) = dashboards
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    files = {p.name for p in (CHART / "dashboards").glob("*.json")}
    assert files and set(cm["data"]) == files
    schema_path = ROOT.parent / "shared" / "schemas" / "grafana-dashboard-v11.6.schema.json"
    for name, text in cm["data"].items():
        dashboard = json.loads(text)
        assert dashboard["uid"] and dashboard["title"] and dashboard["panels"], name
        if schema_path.is_file():
            jsonschema.Draft7Validator(json.loads(schema_path.read_text())).validate(dashboard)


# --- wiring of the components that landed after the first chart ----------


def _service_for_url(docs: list[dict], url: str) -> tuple[dict, dict]:
    """(Service, its port) that an in-namespace http://name:port URL reaches."""
    parts = urlsplit(url)
    (svc,) = [s for s in of_kind(docs, "Service") if s["metadata"]["name"] == parts.hostname]
    (port,) = [p for p in svc["spec"]["ports"] if p["port"] == parts.port]
    return svc, port


def test_web_reaches_the_workers_mailbox_api(docs):
    web = only_container(docs, "Deployment", "web")
    env = container_env(docs, web, expand=True)
    assert env["POSTWARDEN_WEB_HOST"] == "0.0.0.0" and env["POSTWARDEN_WEB_PORT"] == "8000"
    svc, port = _service_for_url(docs, env["POSTWARDEN_WORKER_URL"])
    sts = one(docs, "StatefulSet", "worker")
    assert selects(svc["spec"]["selector"], pod_labels(sts))
    worker = only_container(docs, "StatefulSet", "worker")
    (target,) = [p for p in worker["ports"] if p["name"] == port["targetPort"]]
    assert target["containerPort"] == 8080 == int(container_env(docs, worker)["POSTWARDEN_HEALTH_PORT"])
    # Only ready workers: a rebalancing one would answer 503.
    assert svc["spec"].get("clusterIP") != "None" and not svc["spec"].get("publishNotReadyAddresses")


def test_each_worker_announces_its_own_address(docs):
    worker = only_container(docs, "StatefulSet", "worker")
    raw = container_env(docs, worker)
    assert raw["POD_IP"] == {"fieldRef": {"fieldPath": "status.podIP"}}
    expanded = container_env(docs, worker, expand=True)
    assert expanded["POSTWARDEN_WORKER_CANONICAL_URL"] == f"http://{POD_FIELDS['status.podIP']}:8080"


def test_workers_scan_with_the_charts_clamav(docs):
    worker = only_container(docs, "StatefulSet", "worker")
    address = container_env(docs, worker)["POSTWARDEN_CLAMD_ADDRESS"]
    assert address.startswith("tcp://")
    svc, port = _service_for_url(docs, "http://" + address[len("tcp://"):])
    assert selects(svc["spec"]["selector"], pod_labels(one(docs, "Deployment", "clamav")))
    assert port["port"] == 3310
    assert load_settings(env={"POSTWARDEN_CLAMD_ADDRESS": address}).clamd_address == address


def test_workers_without_clamav_scan_nothing(helm):
    docs = helm.render("--set", "clamav.enabled=false")
    assert "POSTWARDEN_CLAMD_ADDRESS" not in container_env(docs, only_container(docs, "StatefulSet", "worker"))
    assert 3310 not in _egress_ports(_policy(docs, "worker"))


def test_keys_file_only_where_it_is_used(docs, values_name):
    values = _values(values_name)
    for w, c in postwarden_containers(docs):
        env = container_env(docs, c)
        if component(w) not in KEY_HOLDERS:
            assert "POSTWARDEN_KEYS_FILE" not in env and "keys" not in {v["name"] for v in pod_spec(w)["volumes"]}
            continue
        assert env["POSTWARDEN_KEYS_FILE"] == KEYS_FILE
        mount = mounts(c)["/etc/postwarden/keys"]
        assert mount["readOnly"] is True and "subPath" not in mount
        secret = volume(w, mount["name"])["secret"]
        assert secret["secretName"] == (values["keys"]["existingSecret"] or "pw-postwarden")
        assert secret["items"] == [{"key": values["keys"]["secretKey"] if values["keys"]["existingSecret"]
                                    else "keys.json", "path": "keys.json"}]
        assert secret["defaultMode"] & 0o007 == 0, "the keys file is not world-readable"
    assert {component(w) for w, c in postwarden_containers(docs)
            if "POSTWARDEN_KEYS_FILE" in container_env(docs, c)} == KEY_HOLDERS


def test_generated_keys_file_loads_with_the_keyring(docs, tmp_path):
    secret = next((d for d in of_kind(docs, "Secret") if d["metadata"]["name"] == "pw-postwarden"), None)
    if secret is None:
        return  # keys come from keys.existingSecret
    path = tmp_path / "keys.json"
    path.write_bytes(base64.b64decode(secret["data"]["keys.json"]))
    ring = Keyring.load(path)
    assert ring.key_ids == ["k1"]


def test_no_env_var_from_the_old_key_scheme(docs):
    for w, c in postwarden_containers(docs):
        env = container_env(docs, c)
        for gone in ("POSTWARDEN_QUARANTINE_KEY", "POSTWARDEN_QUARANTINE_PREVIOUS_KEYS", "POSTWARDEN_SESSION_SECRET"):
            assert gone not in env, f"{component(w)} still sets {gone}"


def test_ingest_starttls_certificate_mount(docs, values_name):
    values = _values(values_name)
    ingest = one(docs, "Deployment", "ingest")
    (c,) = pod_spec(ingest)["containers"]
    env = container_env(docs, c)
    secret_name = values["ingest"]["tls"]["secretName"]
    if not secret_name:
        assert "POSTWARDEN_SMTP_TLS_CERT_FILE" not in env and "/etc/postwarden/smtp-tls" not in mounts(c)
        return
    mount = mounts(c)["/etc/postwarden/smtp-tls"]
    assert mount["readOnly"] is True
    assert volume(ingest, mount["name"])["secret"]["secretName"] == secret_name
    assert env["POSTWARDEN_SMTP_TLS_CERT_FILE"] == "/etc/postwarden/smtp-tls/tls.crt"
    assert env["POSTWARDEN_SMTP_TLS_KEY_FILE"] == "/etc/postwarden/smtp-tls/tls.key"


def test_ingest_limits_and_drain_fit_the_grace_period(docs, values_name):
    values = _values(values_name)["ingest"]
    ingest = one(docs, "Deployment", "ingest")
    (c,) = pod_spec(ingest)["containers"]
    settings = load_settings(env={k: v for k, v in container_env(docs, c).items() if isinstance(v, str)})
    assert settings.smtp_max_recipients == values["limits"]["maxRecipients"]
    assert settings.smtp_max_connections_per_ip == values["limits"]["maxConnectionsPerIp"]
    assert settings.smtp_messages_per_ip_per_minute == values["limits"]["messagesPerIpPerMinute"]
    assert settings.smtp_data_timeout == values["limits"]["dataTimeoutSeconds"]
    assert settings.proxy_protocol is values["proxyProtocol"]
    (pre_stop,) = [c["lifecycle"]["preStop"]["exec"]["command"]]
    assert pre_stop == ["sleep", str(values["preStopSeconds"])]
    grace = pod_spec(ingest)["terminationGracePeriodSeconds"]
    assert grace > values["preStopSeconds"] + settings.smtp_drain_seconds


def test_delivery_reaches_every_downstream_port(docs, values_name):
    values = _values(values_name)
    (rule,) = [r for r in _policy(docs, "delivery")["egress"] if "to" in r and
               {p["port"] for p in r["ports"]} == set(values["delivery"]["smtpTo"]["ports"])]
    assert [p["ipBlock"]["cidr"] for p in rule["to"]] == values["delivery"]["smtpTo"]["cidrs"]
    for tenant in values["tenants"]:
        for d in tenant["downstream"]:
            assert d.get("port", 25) in {p["port"] for p in rule["ports"]}, (tenant["id"], d["host"])


def test_web_and_notifier_agree_on_the_public_url(docs, values_name):
    values = _values(values_name)
    web = container_env(docs, only_container(docs, "Deployment", "web"))
    notifier = container_env(docs, only_container(docs, "Deployment", "notifier"))
    assert web["POSTWARDEN_PUBLIC_URL"] == notifier["POSTWARDEN_PUBLIC_URL"]
    expected = values["config"]["publicUrl"] or f"https://{values['web']['ingress']['host']}"
    assert notifier["POSTWARDEN_PUBLIC_URL"] == expected
    assert load_settings(env={"POSTWARDEN_NOTIFY_FROM": notifier["POSTWARDEN_NOTIFY_FROM"]}).notify_from


def test_ingress_controller_reaches_web_only_on_its_port(docs, values_name):
    values = _values(values_name)
    rules = _policy(docs, "web")["ingress"]
    (http,) = [r for r in rules if r["ports"] == [{"protocol": "TCP", "port": 8000}]]
    assert http.get("from", []) == values["web"]["httpFrom"]
    svc = one(docs, "Service", "web")
    assert [p["targetPort"] for p in svc["spec"]["ports"]] == ["http"]


def test_worker_resolvers_are_the_only_extra_dns_targets(docs, values_name):
    servers = _values(values_name)["scoring"]["dnsServers"]
    worker = only_container(docs, "StatefulSet", "worker")
    assert container_env(docs, worker)["POSTWARDEN_DNS_SERVERS"] == ",".join(servers)
    blocks = {peer["ipBlock"]["cidr"]: {(p["protocol"], p["port"]) for p in r["ports"]}
              for r in _policy(docs, "worker")["egress"] for peer in r.get("to", [])
              if "ipBlock" in peer and any(p["protocol"] == "UDP" for p in r["ports"])}
    expected = {}
    for s in servers:
        host, _, port = s.rpartition(":") if ":" in s else (s, "", "53")
        expected[f"{host}/32"] = {("UDP", int(port)), ("TCP", int(port))}
    assert blocks == expected


def test_chart_ships_the_repositorys_dashboards():
    """deploy/helm/postwarden/dashboards mirrors dashboards/ plus the Kubernetes-only pods dashboard."""
    repo = {p.name: p.read_text() for p in (ROOT / "dashboards").glob("*.json")}
    chart = {p.name: p.read_text() for p in (CHART / "dashboards").glob("*.json")}
    assert repo and set(chart) == set(repo) | {"postwarden-pods.json"}
    for name, text in repo.items():
        assert chart[name] == text, f"{name} differs: copy dashboards/{name} into the chart"


def _tenant(**changes) -> dict:
    tenant = _values("default")["tenants"][0]
    tenant.update(changes)
    return tenant


# (values, text of helm's error) for checks across values the schema cannot express
CROSS_CHECKS = {
    "workers beyond partitions": ({"kafka": {"partitions": 2}, "worker": {"replicas": 3},
                                   "delivery": {"autoscaling": {"maxReplicas": 2}}},
                                  "worker.replicas (3) exceeds kafka.partitions (2)"),
    "delivery beyond partitions": ({"delivery": {"autoscaling": {"maxReplicas": 20}}},
                                   "delivery: up to 20 replicas but kafka.partitions is 12"),
    "notifier beyond partitions": ({"notifier": {"replicas": 13}},
                                   "notifier: up to 13 replicas but kafka.partitions is 12"),
    "grace shorter than drain": ({"ingest": {"limits": {"drainSeconds": 60}}},
                                 "ingest.terminationGracePeriodSeconds (60) must exceed"),
    "require_tls without a certificate": ({"tenants": [_tenant(require_tls=True)]},
                                          "tenant example uses require_tls or auth"),
    "downstream port blocked": ({"tenants": [_tenant(downstream=[{"host": "mailbox.example.com", "port": 2525}])]},
                                "downstream mailbox.example.com port 2525 is not in delivery.smtpTo.ports"),
    "no public url": ({"web": {"ingress": {"enabled": False}}}, "set config.publicUrl"),
}


@pytest.mark.parametrize("case", list(CROSS_CHECKS))
def test_cross_value_checks_fail_clearly(helm, case, tmp_path):
    overrides, message = CROSS_CHECKS[case]
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(overrides))
    proc = helm.template(values=path, check=False)
    assert proc.returncode != 0, f"helm accepted {overrides}"
    assert message in proc.stderr, proc.stderr


def test_cross_value_checks_pass_when_fixed(helm, tmp_path):
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump({
        "tenants": [_tenant(require_tls=True, downstream=[{"host": "mailbox.example.com", "port": 2525}])],
        "ingest": {"tls": {"secretName": "mx-tls"}},
        "delivery": {"smtpTo": {"cidrs": ["192.0.2.0/24"], "ports": [25, 2525]}},
        "web": {"ingress": {"enabled": False}}, "config": {"publicUrl": "https://q.example.net"}}))
    docs = helm.render(values=path)
    assert container_env(docs, only_container(docs, "Deployment", "web"))["POSTWARDEN_PUBLIC_URL"] == \
        "https://q.example.net"
    assert of_kind(docs, "Ingress") == []
    assert 2525 in _egress_ports(_policy(docs, "delivery"))
