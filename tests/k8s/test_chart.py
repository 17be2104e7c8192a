"""The Helm chart: lint, render, schema-valid Kubernetes objects, and what each value set promises.

Rendering and linting use Helm's Go library (helm-python-sdk); every rendered object is checked
with `kubernetes-validate --strict` against the Kubernetes 1.30 OpenAPI schemas. Custom resources
of other projects (ServiceMonitor, PrometheusRule, KEDA's ScaledObject and TriggerAuthentication,
kopf's peering objects) have no schema there: they are listed, and everything else must validate.
The defaults are the GPU layout; `cpu` and `minimal` are the CPU value sets.
"""

from __future__ import annotations

import copy
import os

import helm_python as helm
import kubernetes_validate
import pytest

from tests.k8s.manifests import (
    CHART,
    KUBE_VERSION,
    REPO,
    VALUE_SETS,
    component,
    env_of,
    env_values,
    load_values,
    named,
    of_kind,
    pod_specs,
    render,
    render_notes,
)

# kinds kubernetes-validate has no schema for: custom resources the chart renders on request
FOREIGN_KINDS = {
    "ServiceMonitor",
    "PrometheusRule",
    "ScaledObject",
    "TriggerAuthentication",
    "KopfPeering",
    "ClusterKopfPeering",
}
SERVICES = {
    "dialogue": "soma.v1.DialogueService",
    "teacher": "soma.v1.TeacherService",
    "surrogate": "soma.v1.SurrogateService",
    "gate": "soma.v1.GateService",
    "mining": "soma.v1.MiningService",
    "training": "soma.v1.TrainingService",
}
GPU = "nvidia.com/gpu"
A100 = {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"}
GPU_NODES = {"nvidia.com/gpu.present": "true"}
GPU_TOLERATION = {"key": GPU, "operator": "Exists", "effect": "NoSchedule"}
# pods of the chart that are not soma servers or workers
NOT_SOMA = {"redis", "minio", "create-bucket", "session-cleanup"}


def _container(doc):
    (container,) = doc["spec"]["template"]["spec"]["containers"]
    return container


def _gpu_limit(container) -> int:
    return int(container.get("resources", {}).get("limits", {}).get(GPU, 0))


# --- lint and Kubernetes schemas ----------------------------------------------------------------


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_lint_strict_is_clean(value_set):
    report = helm.lint(CHART, load_values(value_set), strict=True, kube_version=f"v{KUBE_VERSION}.0")
    assert report["errors"] == []
    # severity: 1 info, 2 warning, 3 error; strict mode makes warnings fatal for `helm lint` too
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert problems == []


def test_lint_reports_values_the_schema_rejects():
    report = helm.lint(CHART, {"dialogue": {"replicas": -1}}, strict=True, kube_version=f"v{KUBE_VERSION}.0")
    assert any("/dialogue/replicas" in e for e in report["errors"])


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_every_rendered_object_passes_kubernetes_validate_strict(rendered, value_set):
    docs = rendered(value_set)
    assert docs
    unchecked = set()
    for doc in docs:
        try:
            kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
        except kubernetes_validate.SchemaNotFoundError:
            unchecked.add(doc["kind"])
        except kubernetes_validate.ValidationError as err:
            pytest.fail(f"{doc['kind']} {doc['metadata']['name']}: {err}")
    assert unchecked <= FOREIGN_KINDS


def test_strict_validation_has_teeth(rendered):
    """A misspelt field in a rendered Deployment fails the same check."""
    deployment = copy.deepcopy(named(rendered("default"), "Deployment", "soma-dialogue"))
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBE_VERSION, strict=True)


# --- every pod ------------------------------------------------------------------------------------


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_every_pod_runs_non_root_read_only_without_privileges(rendered, value_set):
    pods = list(pod_specs(rendered(value_set)))
    assert pods
    for owner, spec in pods:
        where = f"{owner['kind']} {owner['metadata']['name']}"
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True, where
        assert pod["runAsUser"] == 10001, where
        assert pod["seccompProfile"] == {"type": "RuntimeDefault"}, where
        mounts_volumes = {v["name"]: v for v in spec["volumes"]}
        for container in spec["containers"] + spec.get("initContainers", []):
            sc = container["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False, where
            assert sc["readOnlyRootFilesystem"] is True, where
            assert sc["capabilities"]["drop"] == ["ALL"], where
            # a read-only root needs a writable /tmp
            tmp = [m for m in container["volumeMounts"] if m["mountPath"] == "/tmp"]
            assert tmp and "emptyDir" in mounts_volumes[tmp[0]["name"]], where
            assert container["resources"]["requests"], where


@pytest.mark.parametrize("value_set", ["default", "cpu", "gpu", "external", "minimal"])
def test_grpc_services_have_grpc_health_probes(rendered, value_set):
    docs = rendered(value_set)
    serving = [d for d in of_kind(docs, "Deployment") if "serve" in _container(d).get("args", [])]
    assert serving
    for doc in serving:
        container = _container(doc)
        args = container["args"]
        target = args[args.index("--target") + 1]
        expected = SERVICES.get(target, "soma.v1.DialogueService")  # `all` is ready when its dialogue is
        # a TLS dialogue pod answers kubelet (no TLS) on its plaintext health port
        probed = "health" if "SOMA_SERVER__HEALTH_PORT" in env_values(container) else "grpc"
        port = next(p["containerPort"] for p in container["ports"] if p["name"] == probed)
        assert container["readinessProbe"]["grpc"] == {"port": port, "service": expected}
        assert container["livenessProbe"]["grpc"] == {"port": port, "service": ""}
        assert container["startupProbe"]["grpc"]["port"] == port
        service = named(docs, "Service", doc["metadata"]["name"])
        grpc_port = next(p["containerPort"] for p in container["ports"] if p["name"] == "grpc")
        assert {"name": "grpc", "port": grpc_port}.items() <= service["spec"]["ports"][0].items()


def test_default_install_runs_each_service_in_its_own_deployment(rendered):
    docs = rendered("default")
    targets = {}
    for doc in of_kind(docs, "Deployment"):
        args = _container(doc).get("args", [])
        if "serve" in args:
            targets[args[args.index("--target") + 1]] = doc["metadata"]["name"]
    assert targets == {name: f"soma-{name}" for name in SERVICES}
    queues = {
        _container(d)["args"][_container(d)["args"].index("--queues") + 1]
        for d in of_kind(docs, "Deployment")
        if "worker" in _container(d).get("args", [])
    }
    assert queues == {"soma.mining", "soma.training"}
    assert {component(d) for d in of_kind(docs, "PodDisruptionBudget")} >= set(SERVICES)
    # HPAs for the stateless services only (dialogue, gate), aimed at their Deployments
    hpas = {h["spec"]["scaleTargetRef"]["name"] for h in of_kind(docs, "HorizontalPodAutoscaler")}
    assert hpas == {"soma-dialogue", "soma-gate"}
    for name in hpas:
        assert "replicas" not in named(docs, "Deployment", name)["spec"]  # the HPA owns it


def test_service_addresses_point_at_rendered_services(rendered):
    """Every *_ADDRESS and store URL a pod is given names a Service of the release, on its port."""
    docs = rendered("default")
    ports = {s["metadata"]["name"]: {p["port"] for p in s["spec"]["ports"]} for s in of_kind(docs, "Service")}
    env = env_values(_container(named(docs, "Deployment", "soma-dialogue")))
    addresses = {k: v for k, v in env.items() if k.endswith("_ADDRESS")}
    assert len(addresses) == 6  # teacher, surrogate, gate, mining, training; the jobs' teacher
    for key, address in addresses.items():
        host, port = address.removeprefix("dns:///").split(":")
        assert int(port) in ports[host], key
    assert env["SOMA_DIALOGUE__REDIS_URL"] == "redis://:$(SOMA_REDIS_PASSWORD)@soma-redis:6379/2"
    assert env["SOMA_JOBS__BROKER_URL"] == "redis://:$(SOMA_REDIS_PASSWORD)@soma-redis:6379/0"
    assert env["SOMA_JOBS__RESULT_BACKEND"] == "redis://:$(SOMA_REDIS_PASSWORD)@soma-redis:6379/1"
    assert env["SOMA_ADAPTERS__S3_ENDPOINT"] == "soma-minio:9000"
    assert 6379 in ports["soma-redis"] and 9000 in ports["soma-minio"]
    assert env["SOMA_SERVER__HOST"] == "0.0.0.0"
    assert env["SOMA_TELEMETRY__METRICS_PORT"] == "9464"
    assert env["SOMA_ADAPTATION__MODE"] == "operator"


@pytest.mark.parametrize("value_set", ["default", "cpu", "gpu", "external"])
def test_the_chart_configuration_is_accepted_by_soma_config(rendered, value_set, monkeypatch):
    """Each soma pod's SOMA_* environment loads into soma.config.Settings (which forbids unknown
    keys): a misspelt variable would stop the pod at startup."""
    from soma.config import load_settings

    for owner, spec in pod_specs(rendered(value_set)):
        container = spec["containers"][0]
        if component(owner) in NOT_SOMA:
            continue  # redis, minio, mc, the uninstall hook
        for name in [n for n in os.environ if n.startswith("SOMA_")]:
            monkeypatch.delenv(name)
        for name, entry in env_of(container).items():
            value = entry.get("value", "secret-from-" + name)
            monkeypatch.setenv(name, value.replace("$(SOMA_REDIS_PASSWORD)", "pw"))
        settings = load_settings()
        assert settings.server.host == "0.0.0.0", owner["metadata"]["name"]
        assert settings.adapters.backend == "s3"
        if component(owner) == "operator":  # and its own SOMA_OPERATOR_* settings
            monkeypatch.syspath_prepend(str(REPO / "operators"))
            from soma_operator.settings import OperatorSettings

            operator = OperatorSettings()
            assert (operator.namespace, operator.peering) == ("soma", "soma-operator")
            assert (operator.health_port, operator.metrics_port) == (8080, 9464)


# --- the GPU layout: default values (and the gpu value set on top of them) -----------------------


@pytest.mark.parametrize("value_set", ["default", "gpu"])
def test_gpu_workers_land_on_the_a100_pool_with_a_gpu_each(rendered, value_set):
    docs = rendered(value_set)
    workers = [d for d in of_kind(docs, "Deployment") if component(d).startswith("worker-")]
    assert {component(w) for w in workers} == {"worker-mining", "worker-training"}
    for worker in workers:
        spec = worker["spec"]["template"]["spec"]
        assert (A100 | GPU_NODES).items() <= spec["nodeSelector"].items()
        assert GPU_TOLERATION in spec["tolerations"]
        container = _container(worker)
        assert _gpu_limit(container) == 1
        assert container["image"].startswith("soma-cuda:")
        assert env_values(container)["SOMA_METHOD__BUDGET"] == "paper"
        assert any(v.get("emptyDir", {}).get("medium") == "Memory" for v in spec["volumes"])  # /dev/shm
        # the worker gets time to requeue its job on SIGTERM
        assert spec["terminationGracePeriodSeconds"] > int(env_values(container)["SOMA_JOBS__SHUTDOWN_WAIT_S"])


@pytest.mark.parametrize("value_set", ["default", "gpu"])
def test_gpu_teacher_and_surrogate_run_vllm_on_gpus(rendered, value_set):
    """`helm install soma charts/soma` is the GPU layout: the paper's pair by hub id on vLLM, each
    on a GPU node with the GPU toleration and an nvidia.com/gpu limit."""
    docs = rendered(value_set)
    models = {"TEACHER": "Qwen/Qwen3-8B", "SURROGATE": "Qwen/Qwen3-0.6B"}
    for name, role in (("soma-teacher", "TEACHER"), ("soma-surrogate", "SURROGATE")):
        doc = named(docs, "Deployment", name)
        container = _container(doc)
        env = env_values(container)
        assert env[f"SOMA_{role}__BACKEND"] == "vllm"
        assert env[f"SOMA_{role}__DTYPE"] == "bfloat16"
        assert env[f"SOMA_{role}__MODEL"] == models[role]
        assert _gpu_limit(container) == 1
        assert container["image"].startswith("soma-cuda:")
        assert GPU_NODES.items() <= doc["spec"]["template"]["spec"]["nodeSelector"].items()
        assert GPU_TOLERATION in doc["spec"]["template"]["spec"]["tolerations"]
    env = env_values(_container(named(docs, "Deployment", "soma-teacher")))
    assert env["SOMA_TEACHER__REPETITION_PENALTY"] == "1"  # an 8B teacher needs no penalty
    # every model by hub id: the CPU image may be built without the PyPI-shipped models
    assert env["SOMA_GATE__ENCODER"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert env_values(_container(named(docs, "Deployment", "soma-worker-mining")))["SOMA_METHOD__BUDGET"] == "paper"
    # services without a GPU stay off the GPU pool
    for name in ("soma-dialogue", "soma-gate", "soma-operator"):
        doc = named(docs, "Deployment", name)
        assert _gpu_limit(_container(doc)) == 0
        assert "nodeSelector" not in doc["spec"]["template"]["spec"]


def test_gpu_set_scales_workers_on_queue_length_and_is_scraped(rendered):
    docs = rendered("gpu")
    scaled = {s["spec"]["scaleTargetRef"]["name"]: s for s in of_kind(docs, "ScaledObject")}
    assert set(scaled) == {"soma-worker-mining", "soma-worker-training"}
    trigger = scaled["soma-worker-mining"]["spec"]["triggers"][0]
    assert trigger["type"] == "redis"
    assert trigger["metadata"]["listName"] == "soma.mining"
    # KEDA's operator runs in its own namespace: a short name would not resolve there
    assert trigger["metadata"]["address"] == "soma-redis.soma.svc.cluster.local:6379"
    # ... and a NetworkPolicy lets KEDA's namespace reach the in-cluster Redis
    keda = named(docs, "NetworkPolicy", "soma-redis-keda")
    assert keda["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "redis"
    [rule] = keda["spec"]["ingress"]
    assert rule["ports"] == [{"port": 6379, "protocol": "TCP"}]
    assert rule["from"] == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "keda"}}}]
    assert not [p for p in of_kind(rendered("default"), "NetworkPolicy") if p["metadata"]["name"] == "soma-redis-keda"]
    for name in scaled:
        assert "replicas" not in named(docs, "Deployment", name)["spec"]  # KEDA owns it
    (monitor,) = of_kind(docs, "ServiceMonitor")
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    scraped = [s for s in of_kind(docs, "Service") if s["metadata"]["labels"].get("soma.dev/metrics") == "true"]
    assert {component(s) for s in scraped} == set(SERVICES) | {"operator"}
    assert all(any(p["name"] == "metrics" for p in s["spec"]["ports"]) for s in scraped)
    env = env_values(_container(named(docs, "Deployment", "soma-dialogue")))
    assert env["SOMA_TELEMETRY__OTLP_ENDPOINT"] == "http://otel-collector.observability:4317"


# --- minimal (embedded) value set -----------------------------------------------------------------


@pytest.mark.parametrize("value_set", ["cpu", "minimal"])
def test_cpu_value_sets_ask_for_no_gpu(rendered, value_set):
    """cpu (every service split out) and minimal (one pod) run on any node: no GPU limit or request,
    no GPU node selector or toleration, the CPU image, the CPU models and method budget."""
    docs = rendered(value_set)
    pods = list(pod_specs(docs))
    assert pods
    for owner, spec in pods:
        where = owner["metadata"]["name"]
        for container in spec["containers"] + spec.get("initContainers", []):
            resources = container.get("resources", {})
            assert GPU not in resources.get("limits", {}) and GPU not in resources.get("requests", {}), where
            assert not container["image"].startswith("soma-cuda"), where
            env = env_values(container)
            if "SOMA_TEACHER__BACKEND" in env:
                assert env["SOMA_TEACHER__BACKEND"] == env["SOMA_SURROGATE__BACKEND"] == "transformers", where
                assert env["SOMA_METHOD__BUDGET"] == "cpu", where
                assert env["SOMA_GATE__ENCODER"] == "all-minilm-l6-v2", where  # the PyPI-shipped encoder
                assert not any("VLLM" in name for name in env), where
        assert not any(key.startswith("nvidia.com/") for key in spec.get("nodeSelector", {})), where
        assert GPU_TOLERATION not in spec.get("tolerations", []), where
        assert not any(v.get("emptyDir", {}).get("medium") == "Memory" for v in spec["volumes"]), where
    assert GPU not in str(docs)
    if value_set == "cpu":  # the same split as the GPU layout: one Deployment per service, workers per queue
        assert {component(d) for d in of_kind(docs, "Deployment")} >= set(SERVICES) | {
            "worker-mining",
            "worker-training",
        }


def test_minimal_is_one_embedded_pod_without_gpus(rendered):
    docs = rendered("minimal")
    (deployment,) = of_kind(docs, "Deployment")
    container = _container(deployment)
    assert container["args"] == ["serve", "--target", "all"]
    assert _gpu_limit(container) == 0
    assert "nodeSelector" not in deployment["spec"]["template"]["spec"]
    assert not of_kind(docs, "StatefulSet") and not of_kind(docs, "Job")
    assert not [d for d in docs if d["kind"] in {"Role", "ClusterRole", "KopfPeering", "ScaledObject"}]
    env = env_values(container)
    # sessions, adapters and the job queue under the state volume, not in the image's working folder
    assert env["SOMA_STATE_DIR"] == "/var/lib/soma"
    assert env["SOMA_TEACHER__REPETITION_PENALTY"] == "1.25"  # the CPU teacher's, as in soma's own defaults
    assert {"name": "state", "mountPath": "/var/lib/soma"} in container["volumeMounts"]
    assert env["SOMA_ADAPTATION__MODE"] == "embedded"
    assert not any(k.endswith("_ADDRESS") or "REDIS" in k or "S3_" in k for k in env)
    # nowhere in the rendered text is a GPU asked for
    assert GPU not in str(docs)


# --- external value set ---------------------------------------------------------------------------


def test_external_renders_no_redis_or_minio_and_uses_the_existing_secrets(rendered):
    docs = rendered("external")
    names = [d["metadata"]["name"] for d in docs]
    assert not [n for n in names if "redis" in n and n != "soma-redis-auth"]
    assert not [n for n in names if "minio" in n or "bucket" in n]
    assert not of_kind(docs, "StatefulSet") and not of_kind(docs, "Secret")
    for owner, spec in pod_specs(docs):
        if component(owner) in NOT_SOMA:
            continue
        container = spec["containers"][0]
        env = env_of(container)
        assert env["SOMA_REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": "soma-redis", "key": "password"}
        values = env_values(container)
        host = "redis-master.data.svc.cluster.local:6379"
        assert values["SOMA_JOBS__BROKER_URL"] == f"redis://:$(SOMA_REDIS_PASSWORD)@{host}/0"
        assert values["SOMA_DIALOGUE__REDIS_URL"] == f"redis://:$(SOMA_REDIS_PASSWORD)@{host}/2"
        # the password variable comes before the URLs that expand it
        order = [e["name"] for e in container["env"]]
        assert order.index("SOMA_REDIS_PASSWORD") < order.index("SOMA_JOBS__BROKER_URL")
        assert values["SOMA_ADAPTERS__S3_ENDPOINT"] == "s3.eu-west-1.amazonaws.com:443"
        assert values["SOMA_ADAPTERS__S3_SECURE"] == "true"
        s3 = next(v for v in spec["volumes"] if v["name"] == "s3-credentials")
        assert s3["secret"]["secretName"] == "soma-s3"
        tokens = next(v for v in spec["volumes"] if v["name"] == "service-token")
        assert tokens["secret"]["secretName"] == "soma-service-token"
        if component(owner) == "dialogue":  # the Dialogue API's keys come from the user's Secret too
            keys = next(v for v in spec["volumes"] if v["name"] == "api-keys")
            assert keys["secret"]["secretName"] == "soma-api-keys"
            assert values["SOMA_SERVER__API_KEYS_FILE"] == "/etc/soma/auth/api-keys.json"
        # the teacher's API key reaches the teacher only
        has_key = "SOMA_TEACHER__OPENAI_API_KEY" in env
        assert has_key == (component(owner) == "teacher"), owner["metadata"]["name"]
        if has_key:
            ref = env["SOMA_TEACHER__OPENAI_API_KEY"]["valueFrom"]["secretKeyRef"]
            assert ref == {"name": "soma-teacher-api", "key": "api-key"}
            assert values["SOMA_TEACHER__BACKEND"] == "openai"
            assert _gpu_limit(container) == 0
    (auth,) = of_kind(docs, "TriggerAuthentication")
    assert auth["spec"]["secretTargetRef"][0]["name"] == "soma-redis"


# --- operator and RBAC ----------------------------------------------------------------------------


def test_operator_rbac_is_namespaced_and_minimal(rendered):
    docs = rendered("default")
    # cluster-wide: reading CRDs only (kopf notices CRD changes), bound to the operator alone
    (cluster_role,) = of_kind(docs, "ClusterRole")
    assert cluster_role["rules"] == [
        {
            "apiGroups": ["apiextensions.k8s.io"],
            "resources": ["customresourcedefinitions"],
            "verbs": ["get", "list", "watch"],
        }
    ]
    (cluster_binding,) = of_kind(docs, "ClusterRoleBinding")
    assert cluster_binding["roleRef"]["name"] == cluster_role["metadata"]["name"]
    assert cluster_binding["subjects"] == [{"kind": "ServiceAccount", "name": "soma-operator", "namespace": "soma"}]
    role = named(docs, "Role", "soma-operator")
    rules = {(tuple(r["apiGroups"]), tuple(r["resources"])): set(r["verbs"]) for r in role["rules"]}
    assert rules == {
        (("soma.dev",), ("somasessions",)): {"get", "list", "watch", "patch", "delete"},
        (("soma.dev",), ("somasessions/status",)): {"get", "patch"},
        (("", "events.k8s.io"), ("events",)): {"create"},
        (("kopf.dev",), ("kopfpeerings",)): {"get", "list", "watch", "patch"},
    }
    binding = named(docs, "RoleBinding", "soma-operator")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "soma-operator", "namespace": "soma"}]
    operator = named(docs, "Deployment", "soma-operator")
    spec = operator["spec"]["template"]["spec"]
    assert spec["serviceAccountName"] == "soma-operator"
    assert _container(operator)["command"] == ["python", "-m", "soma_operator"]
    env = env_values(_container(operator))
    assert env["SOMA_OPERATOR_NAMESPACE"] == "soma"
    assert env["SOMA_OPERATOR_PEERING"] == named(docs, "KopfPeering", "soma-operator")["metadata"]["name"]
    # pods that never call the API get no token
    assert (
        named(docs, "Deployment", "soma-teacher")["spec"]["template"]["spec"]["automountServiceAccountToken"] is False
    )


def test_operator_with_cluster_scope_gets_a_cluster_role():
    docs = render({"operator": {"scope": "cluster"}})
    role = named(docs, "ClusterRole", "soma-operator")
    resources = {res for rule in role["rules"] for res in rule["resources"]}
    assert "clusterkopfpeerings" in resources and "kopfpeerings" not in resources
    assert {"namespaces", "customresourcedefinitions", "somasessions"} <= resources
    # the sessions live in the release's namespace: the dialogue and the uninstall hook keep Roles there
    assert sorted(r["metadata"]["name"] for r in of_kind(docs, "Role")) == ["soma-dialogue", "soma-session-cleanup"]
    assert named(docs, "ClusterKopfPeering", "soma-operator")
    assert env_values(_container(named(docs, "Deployment", "soma-operator")))["SOMA_OPERATOR_NAMESPACE"] == ""


def test_dialogue_may_create_and_delete_somasessions_only(rendered):
    docs = rendered("default")
    role = named(docs, "Role", "soma-dialogue")
    assert role["rules"] == [{"apiGroups": ["soma.dev"], "resources": ["somasessions"], "verbs": ["create", "delete"]}]
    assert (
        named(docs, "Deployment", "soma-dialogue")["spec"]["template"]["spec"]["serviceAccountName"] == "soma-dialogue"
    )


def test_minio_bucket_job_is_a_post_install_hook(rendered):
    job = named(rendered("default"), "Job", "soma-create-bucket")
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "post-install,post-upgrade"
    assert job["spec"]["template"]["spec"]["containers"][0]["image"].startswith("minio/mc:")
    assert "soma/soma-adapters" in job["spec"]["template"]["spec"]["containers"][0]["args"][0]


def test_network_policies_open_only_the_dialogue(rendered):
    docs = rendered("default")
    public = named(docs, "NetworkPolicy", "soma-public")
    internal = named(docs, "NetworkPolicy", "soma-internal")
    public_selector = public["spec"]["podSelector"]["matchExpressions"][0]
    assert public_selector["operator"] == "In" and set(public_selector["values"]) == {"dialogue", "embedded"}
    assert internal["spec"]["podSelector"]["matchExpressions"][0]["operator"] == "NotIn"
    # the internal pods take traffic from this release's pods (and metrics scrapes) only
    sources = internal["spec"]["ingress"][0]["from"]
    assert sources == [{"podSelector": {"matchLabels": {"app.kubernetes.io/instance": "soma"}}}]
    assert internal["spec"]["ingress"][1]["ports"] == [{"port": 9464, "protocol": "TCP"}]
    # each internal service takes gRPC only from the pods that call it
    callers = {
        "teacher": {"dialogue", "worker-mining"},
        "surrogate": {"dialogue"},
        "gate": {"dialogue", "operator"},
        "mining": {"dialogue", "operator"},
        "training": {"dialogue", "operator"},
    }
    assert set(internal["spec"]["podSelector"]["matchExpressions"][0]["values"]) >= set(callers)
    for service, allowed in callers.items():
        policy = named(docs, "NetworkPolicy", f"soma-{service}-callers")
        assert policy["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == service
        grpc_rule = policy["spec"]["ingress"][0]
        assert grpc_rule["ports"] == [{"port": 50051, "protocol": "TCP"}]
        [source] = grpc_rule["from"]
        assert set(source["podSelector"]["matchExpressions"][0]["values"]) == allowed, service


def test_notes_give_the_endpoint_and_a_chat_command():
    notes = render_notes()
    assert "soma-dialogue.soma.svc:50051" in notes
    assert "soma chat --address 127.0.0.1:50051" in notes
    assert "svc/soma-embedded" in render_notes(load_values("minimal"))


# --- values.schema.json ---------------------------------------------------------------------------

BAD_VALUES = {
    "negative replicas": ({"dialogue": {"replicas": -1}}, "/dialogue/replicas"),
    "negative worker replicas": ({"workers": {"mining": {"replicas": -2}}}, "/workers/mining/replicas"),
    "unknown teacher backend": ({"teacher": {"backend": "tgi"}}, "/teacher/backend"),
    "surrogate cannot call an API": ({"surrogate": {"backend": "openai"}}, "/surrogate/backend"),
    "bad pullPolicy": ({"image": {"pullPolicy": "Sometimes"}}, "/image/pullPolicy"),
    "bad gpu image pullPolicy": ({"gpuImage": {"pullPolicy": "always"}}, "/gpuImage/pullPolicy"),
    "unknown mode": ({"mode": "hybrid"}, "/mode"),
    "unknown top-level key": ({"replicaCount": 3}, "replicaCount"),
    "typo in a service block": ({"gate": {"replica": 3}}, "replica"),
    "zero GPUs": ({"teacher": {"gpu": {"enabled": True, "count": 0}}}, "/teacher/gpu/count"),
    "port out of range": ({"grpcPort": 70000}, "/grpcPort"),
    "unknown budget": ({"jobs": {"budget": "huge"}}, "/jobs/budget"),
    "root pods": ({"podSecurityContext": {"runAsNonRoot": False}}, "/podSecurityContext/runAsNonRoot"),
    "openai teacher without URL": ({"teacher": {"backend": "openai"}}, "/teacher/openai/baseUrl"),
    "openai teacher on a GPU": (
        {
            "teacher": {
                "backend": "openai",
                "gpu": {"enabled": True, "count": 1},
                "openai": {"baseUrl": "https://x/v1", "existingSecret": "k"},
            }
        },
        "/teacher/gpu/enabled",
    ),
    "vLLM teacher without a GPU": ({"teacher": {"gpu": {"enabled": False, "count": 1}}}, "/teacher/gpu/enabled"),
    "vLLM surrogate without a GPU": ({"surrogate": {"gpu": {"enabled": False, "count": 1}}}, "/surrogate/gpu/enabled"),
    "external redis without host": ({"redis": {"enabled": False}}, "/redis/external/host"),
    "external S3 without secret": (
        {"minio": {"enabled": False, "external": {"endpoint": "s3:443"}}},
        "/minio/external/existingSecret",
    ),
    "bad bucket name": ({"adapters": {"bucket": "Soma_Adapters"}}, "/adapters/bucket"),
}


@pytest.mark.parametrize(("values", "where"), BAD_VALUES.values(), ids=BAD_VALUES.keys())
def test_values_schema_rejects_bad_values(values, where):
    with pytest.raises(helm.HelmValuesError) as err:
        render(values)
    assert where in str(err.value)


def test_embedded_mode_needs_no_external_stores():
    """The external-store rules apply to cluster mode only: minimal disables both stores."""
    assert render({"mode": "embedded", "redis": {"enabled": False}, "minio": {"enabled": False}})


def test_gpu_runtime_class_goes_to_gpu_pods_only():
    values = load_values("gpu")
    values["gpu"] = {"runtimeClassName": "nvidia"}
    docs = render(values)
    for owner, spec in pod_specs(docs):
        gpu = _gpu_limit(spec["containers"][0]) > 0
        assert (spec.get("runtimeClassName") == "nvidia") == gpu, owner["metadata"]["name"]


def test_the_dialogue_api_keys_come_from_a_secret_the_chart_makes(rendered):
    """Default values: one random key for tenant `default`, stored with the sha256 the server reads,
    mounted into the dialogue pods only."""
    import base64
    import hashlib
    import json

    docs = rendered("default")
    [secret] = [d for d in of_kind(docs, "Secret") if d["metadata"]["name"] == "soma-api-keys"]
    key = base64.b64decode(secret["data"]["api-key"]).decode()
    keys = json.loads(base64.b64decode(secret["data"]["api-keys.json"]))
    assert key.startswith("soma-") and len(key) > 40
    assert keys == {hashlib.sha256(key.encode()).hexdigest(): "default"}
    mounted = {component(o) for o, spec in pod_specs(docs) if any(v["name"] == "api-keys" for v in spec["volumes"])}
    assert mounted == {"dialogue"}


def test_cluster_pods_share_a_service_token_from_a_secret(rendered):
    """The internal services take calls only with the token soma's own pods mount and send."""
    import base64

    docs = rendered("default")
    [secret] = [d for d in of_kind(docs, "Secret") if d["metadata"]["name"] == "soma-service-token"]
    assert len(base64.b64decode(secret["data"]["token"])) == 48
    for owner, spec in pod_specs(docs):
        if component(owner) in NOT_SOMA:
            continue  # not soma's servers
        mounts = {v["name"]: v for v in spec["volumes"]}
        assert mounts["service-token"]["secret"]["secretName"] == "soma-service-token", component(owner)
        assert env_values(spec["containers"][0])["SOMA_SERVER__SERVICE_TOKEN_FILE"] == "/etc/soma/service/token"


def test_the_dialogue_api_takes_tls_from_a_secret_and_answers_probes_in_plaintext(rendered):
    """auth.tlsSecret (a kubernetes.io/tls Secret, as cert-manager writes it): the dialogue pods mount
    tls.crt and tls.key and serve TLS; kubelet's gRPC probes, which cannot speak TLS, ask the
    plaintext health-only port. Without it (default values) nothing changes."""
    docs = rendered("external")
    for owner, spec in pod_specs(docs):
        container = spec["containers"][0]
        env = env_values(container)
        volumes = {v["name"]: v for v in spec["volumes"]}
        if component(owner) != "dialogue":
            assert "tls" not in volumes and "SOMA_SERVER__TLS_CERT_FILE" not in env, component(owner)
            continue
        assert volumes["tls"]["secret"]["secretName"] == "soma-dialogue-tls"
        assert {i["key"] for i in volumes["tls"]["secret"]["items"]} == {"tls.crt", "tls.key"}
        mount = next(m for m in container["volumeMounts"] if m["name"] == "tls")
        assert env["SOMA_SERVER__TLS_CERT_FILE"] == mount["mountPath"] + "/tls.crt"
        assert env["SOMA_SERVER__TLS_KEY_FILE"] == mount["mountPath"] + "/tls.key"
        assert env["SOMA_SERVER__HEALTH_PORT"] == "8081"
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert container[probe]["grpc"]["port"] == 8081
    default = named(rendered("default"), "Deployment", "soma-dialogue")["spec"]["template"]["spec"]["containers"][0]
    assert default["readinessProbe"]["grpc"]["port"] == 50051
    assert "SOMA_SERVER__TLS_CERT_FILE" not in env_values(default)


def test_the_in_cluster_redis_takes_a_password_and_never_evicts_silently(rendered):
    """Issue 15: the chart's Redis requires a password from a Secret (random, kept across upgrades);
    every soma pod and KEDA's trigger authenticate with it; maxmemory with noeviction, so a full
    Redis refuses writes instead of dropping sessions."""
    import base64

    docs = rendered("default")
    [secret] = [d for d in of_kind(docs, "Secret") if d["metadata"]["name"] == "soma-redis"]
    assert len(base64.b64decode(secret["data"]["password"])) == 40
    redis = _container(named(docs, "StatefulSet", "soma-redis"))
    args = redis["args"]
    assert args[args.index("--requirepass") + 1] == "$(REDIS_PASSWORD)"
    assert args[args.index("--maxmemory-policy") + 1] == "noeviction" and args[args.index("--maxmemory") + 1]
    assert redis["env"][0]["valueFrom"]["secretKeyRef"] == {"name": "soma-redis", "key": "password"}
    assert "REDISCLI_AUTH" in " ".join(redis["readinessProbe"]["exec"]["command"])
    for owner, spec in pod_specs(docs):
        if component(owner) in NOT_SOMA:
            continue
        env = spec["containers"][0]["env"]
        names = [e["name"] for e in env]
        first = names.index("SOMA_REDIS_PASSWORD")
        assert env[first]["valueFrom"]["secretKeyRef"] == {"name": "soma-redis", "key": "password"}
        using = [i for i, e in enumerate(env) if "$(SOMA_REDIS_PASSWORD)" in e.get("value", "")]
        assert using and first < min(using), component(owner)  # defined before it is referenced
    gpu = rendered("gpu")  # KEDA on: the queue-length trigger authenticates with the same Secret
    [trigger_auth] = of_kind(gpu, "TriggerAuthentication")
    assert trigger_auth["spec"]["secretTargetRef"] == [
        {"parameter": "password", "name": "soma-redis", "key": "password"}
    ]
    assert all(t["authenticationRef"] for o in of_kind(gpu, "ScaledObject") for t in o["spec"]["triggers"])
