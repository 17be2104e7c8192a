"""What the chart's values put into soma's pods beyond the layout: environment from Secrets,
shutdown timing, scheduling and identity extras, the uninstall hook; and the values schema's
word on each new key."""

from __future__ import annotations

import copy

import helm_python as helm
import kubernetes_validate
import pytest

from tests.k8s.manifests import (
    KUBE_VERSION,
    component,
    env_of,
    env_values,
    load_values,
    named,
    of_kind,
    pod_specs,
    render,
)

NOT_SOMA = {"redis", "minio", "create-bucket", "session-cleanup"}
SECRET_REF = {"secretKeyRef": {"name": "corp-secrets", "key": "otlp-token"}}


def _soma_pods(docs):
    return [(owner, spec) for owner, spec in pod_specs(docs) if component(owner) not in NOT_SOMA]


def _validate(docs):
    for doc in docs:
        try:
            kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
        except kubernetes_validate.SchemaNotFoundError:
            pass
        except kubernetes_validate.ValidationError as err:
            pytest.fail(f"{doc['kind']} {doc['metadata']['name']}: {err}")


# --- environment ----------------------------------------------------------------------------------


def test_extra_env_takes_values_and_secret_references():
    """extraEnv (global and per service): a string, {value}, {valueFrom} or null; a reference
    replaces a variable of the same name, null drops one, and references come before the plain
    values (so that $(NAME) in a value can expand them)."""
    docs = render(
        {
            "extraEnv": {
                "OTEL_EXPORTER_OTLP_HEADERS": {"valueFrom": SECRET_REF},
                "SOMA_TELEMETRY__LOG_LEVEL": {"value": "DEBUG"},
                "PLAIN": "1",
            },
            "teacher": {
                "extraEnv": {
                    "SOMA_TEACHER__MODEL": {"valueFrom": {"configMapKeyRef": {"name": "models", "key": "teacher"}}},
                    "SOMA_TEACHER__VLLM_ENGINE_PROCESS": None,
                    "PLAIN": "2",
                }
            },
        }
    )
    _validate(docs)
    for owner, spec in _soma_pods(docs):
        container = spec["containers"][0]
        env, values = env_of(container), env_values(container)
        where = owner["metadata"]["name"]
        assert env["OTEL_EXPORTER_OTLP_HEADERS"] == {"name": "OTEL_EXPORTER_OTLP_HEADERS", "valueFrom": SECRET_REF}
        assert values["SOMA_TELEMETRY__LOG_LEVEL"] == "DEBUG", where
        names = [e["name"] for e in container["env"]]
        assert len(names) == len(set(names)), where  # one entry per name
        first_plain = min(i for i, e in enumerate(container["env"]) if "value" in e)
        assert all("valueFrom" in e for e in container["env"][:first_plain])
        if component(owner) == "teacher":  # the service's own extraEnv wins over the global one
            assert values["PLAIN"] == "2"
            assert env["SOMA_TEACHER__MODEL"]["valueFrom"] == {"configMapKeyRef": {"name": "models", "key": "teacher"}}
            assert "SOMA_TEACHER__VLLM_ENGINE_PROCESS" not in env
        else:
            assert values["PLAIN"] == "1", where
            assert values["SOMA_TEACHER__MODEL"] == "Qwen/Qwen3-8B", where


def test_the_hf_token_comes_from_a_secret_for_the_pods_that_download_models(rendered):
    assert not any("HF_TOKEN" in env_of(s["containers"][0]) for _, s in pod_specs(rendered("default")))
    docs = render({"hfTokenSecret": {"name": "hf-token", "key": "token"}})
    _validate(docs)
    given = set()
    for owner, spec in _soma_pods(docs):
        env = env_of(spec["containers"][0])
        if "HF_TOKEN" in env:
            given.add(component(owner))
            assert env["HF_TOKEN"]["valueFrom"] == {"secretKeyRef": {"name": "hf-token", "key": "token"}}
    assert given >= {"teacher", "surrogate", "gate", "worker-mining", "worker-training"}
    assert "operator" not in given  # it loads no model
    embedded = render(load_values("minimal") | {"hfTokenSecret": {"name": "hf-token", "key": "token"}})
    (deployment,) = of_kind(embedded, "Deployment")
    assert "HF_TOKEN" in env_of(deployment["spec"]["template"]["spec"]["containers"][0])


# --- shutdown -------------------------------------------------------------------------------------


def test_grace_period_outlasts_the_longest_turn(rendered):
    """Default values: a server's in-flight RPCs get longer than the teacher's deadline (the longest
    turn) to finish, and the pod's grace period covers the drain and that grace period."""
    from soma.config import DialogueSettings

    longest_turn = DialogueSettings.model_fields["teacher_timeout_s"].default
    docs = rendered("default")
    servers = [(o, s) for o, s in _soma_pods(docs) if "serve" in s["containers"][0].get("args", [])]
    assert {component(o) for o, _ in servers} == {"dialogue", "teacher", "surrogate", "gate", "mining", "training"}
    for owner, spec in servers:
        env = env_values(spec["containers"][0])
        grace, drain = float(env["SOMA_SERVER__GRACE_PERIOD_S"]), float(env["SOMA_SERVER__DRAIN_DELAY_S"])
        assert grace > longest_turn, owner["metadata"]["name"]
        assert spec["terminationGracePeriodSeconds"] > grace + drain, owner["metadata"]["name"]


def test_grace_and_drain_values_set_the_servers_and_the_pods():
    docs = render({"gracePeriodSeconds": 900, "drainDelaySeconds": 20})
    for _owner, spec in _soma_pods(docs):
        env = env_values(spec["containers"][0])
        assert env["SOMA_SERVER__GRACE_PERIOD_S"] == "900"
        assert env["SOMA_SERVER__DRAIN_DELAY_S"] == "20"
        if "serve" in spec["containers"][0].get("args", []):
            assert spec["terminationGracePeriodSeconds"] == 900 + 20 + 15
    worker = named(docs, "Deployment", "soma-worker-mining")["spec"]["template"]["spec"]
    assert worker["terminationGracePeriodSeconds"] == 10 + 30  # jobs.shutdownWaitSeconds and a margin


# --- scheduling, identity, volumes ----------------------------------------------------------------


def test_pod_annotations_priority_spread_volumes_and_service_account_annotations():
    spread = {"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "ScheduleAnyway"}
    role_arn = {"eks.amazonaws.com/role-arn": "arn:aws:iam::123456789012:role/soma"}
    docs = render(
        {
            "podAnnotations": {"example.com/team": "llm"},
            "priorityClassName": "soma-serving",
            "extraVolumes": [{"name": "corp-ca", "configMap": {"name": "corp-ca"}}],
            "extraVolumeMounts": [{"name": "corp-ca", "mountPath": "/etc/ssl/corp", "readOnly": True}],
            "serviceAccount": {"annotations": role_arn},
            "teacher": {
                "podAnnotations": {"example.com/gpu": "yes"},
                "priorityClassName": "soma-gpu",
                "topologySpreadConstraints": [spread],
                "extraVolumes": [{"name": "weights", "persistentVolumeClaim": {"claimName": "weights"}}],
                "extraVolumeMounts": [{"name": "weights", "mountPath": "/models", "readOnly": True}],
            },
            "workers": {"mining": {"podAnnotations": {"example.com/queue": "mining"}}},
        }
    )
    _validate(docs)
    for owner, spec in _soma_pods(docs):
        where = owner["metadata"]["name"]
        annotations = owner["spec"]["template"]["metadata"]["annotations"]
        assert annotations["example.com/team"] == "llm", where
        volumes = {v["name"] for v in spec["volumes"]}
        mounts = {m["mountPath"] for m in spec["containers"][0]["volumeMounts"]}
        assert "corp-ca" in volumes and "/etc/ssl/corp" in mounts, where
        if component(owner) == "teacher":
            assert annotations["example.com/gpu"] == "yes"
            assert spec["priorityClassName"] == "soma-gpu"
            [constraint] = spec["topologySpreadConstraints"]
            # no labelSelector given: the teacher's own pods are spread
            assert constraint["labelSelector"]["matchLabels"] == owner["spec"]["selector"]["matchLabels"]
            assert {"weights", "corp-ca"} <= volumes and "/models" in mounts
        else:
            assert spec["priorityClassName"] == "soma-serving", where
            assert "topologySpreadConstraints" not in spec, where
            assert "weights" not in volumes, where
        assert ("example.com/queue" in annotations) == (component(owner) == "worker-mining")
    accounts = of_kind(docs, "ServiceAccount")
    assert {a["metadata"]["name"] for a in accounts} >= {"soma-workload", "soma-dialogue", "soma-operator"}
    for account in accounts:
        if "helm.sh/hook" not in account["metadata"].get("annotations", {}):
            assert account["metadata"]["annotations"] == role_arn, account["metadata"]["name"]


def test_a_constraint_with_its_own_label_selector_is_kept():
    selector = {"matchLabels": {"pool": "gpu"}}
    spread = {"maxSkew": 2, "topologyKey": "kubernetes.io/hostname", "whenUnsatisfiable": "DoNotSchedule"}
    docs = render({"surrogate": {"topologySpreadConstraints": [spread | {"labelSelector": selector}]}})
    spec = named(docs, "Deployment", "soma-surrogate")["spec"]["template"]["spec"]
    assert spec["topologySpreadConstraints"] == [spread | {"labelSelector": selector}]


# --- the uninstall hook ---------------------------------------------------------------------------


def test_uninstall_hook_deletes_the_sessions_while_the_operator_runs(rendered):
    """helm uninstall runs a pre-delete Job (before any release object goes, the operator included)
    that deletes the SomaSessions and waits for the operator's finalizer; its RBAC is created first
    and allows listing and deleting SomaSessions only."""
    docs = rendered("default")
    job = named(docs, "Job", "soma-session-cleanup")
    hooks = {
        (d["kind"], d["metadata"]["name"]): d["metadata"].get("annotations", {})
        for d in docs
        if "helm.sh/hook" in d["metadata"].get("annotations", {})
    }
    cleanup = {kind: a for (kind, name), a in hooks.items() if name == "soma-session-cleanup"}
    assert set(cleanup) == {"ServiceAccount", "Role", "RoleBinding", "Job"}
    job_weight = int(job["metadata"]["annotations"]["helm.sh/hook-weight"])
    for kind, hook in cleanup.items():
        assert hook["helm.sh/hook"] == "pre-delete", kind
        assert "hook-succeeded" in hook["helm.sh/hook-delete-policy"], kind
        if kind != "Job":  # RBAC before the Job
            assert int(hook["helm.sh/hook-weight"]) < job_weight, kind
    role = named(docs, "Role", "soma-session-cleanup")
    assert role["rules"] == [{"apiGroups": ["soma.dev"], "resources": ["somasessions"], "verbs": ["list", "delete"]}]
    binding = named(docs, "RoleBinding", "soma-session-cleanup")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "soma-session-cleanup", "namespace": "soma"}]
    spec = job["spec"]["template"]["spec"]
    assert spec["serviceAccountName"] == "soma-session-cleanup" and spec["automountServiceAccountToken"] is True
    assert spec["restartPolicy"] == "Never"
    (container,) = spec["containers"]
    assert container["image"].startswith("soma:")  # the CPU image: the operator's, with the kubernetes client
    python, flag, script = container["command"]
    assert (python, flag) == ("python", "-c")
    compile(script, "session-cleanup", "exec")  # valid Python
    assert "delete_namespaced_custom_object" in script and "v1alpha1" in script
    env = env_values(container)
    assert env["NAMESPACE"] == "soma"
    assert job["spec"]["activeDeadlineSeconds"] > float(env["TIMEOUT_S"])


def test_no_uninstall_hook_without_the_operator():
    for values in (load_values("minimal"), {"operator": {"enabled": False}}, {"sessionCleanup": {"enabled": False}}):
        assert not [d for d in render(values) if d["metadata"]["name"] == "soma-session-cleanup"]


# --- values schema --------------------------------------------------------------------------------

NEW_KEYS = {
    "httpPort": 8080,
    "gracePeriodSeconds": 1200,
    "drainDelaySeconds": 10,
    "clusterDomain": "corp.local",
    "extraEnv": {"A": "x", "B": {"value": "y"}, "C": {"valueFrom": SECRET_REF}},
    "hfTokenSecret": {"name": "hf", "key": "HF_TOKEN"},
    "podAnnotations": {"a": "b"},
    "priorityClassName": "high",
    "extraVolumes": [{"name": "v", "emptyDir": {}}],
    "extraVolumeMounts": [{"name": "v", "mountPath": "/v"}],
    "serviceAccount": {"annotations": {"eks.amazonaws.com/role-arn": "arn"}},
    "sessionCleanup": {"enabled": True, "timeoutSeconds": 600},
    "networkPolicy": {"kedaNamespace": "autoscaling"},
    "telemetry": {
        "grafanaDashboard": {"enabled": True, "labels": {"grafana_dashboard": "1"}, "annotations": {"f": "soma"}},
        "prometheusRule": {"enabled": True, "labels": {"release": "kps"}, "queueDepth": 5, "rollbackRatio": 0.5},
    },
}
POD_BLOCK_KEYS = {
    "podAnnotations": {"a": "b"},
    "priorityClassName": "high",
    "topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "zone", "whenUnsatisfiable": "ScheduleAnyway"}],
    "extraVolumes": [{"name": "w", "emptyDir": {}}],
    "extraVolumeMounts": [{"name": "w", "mountPath": "/w"}],
    "extraEnv": {"D": {"valueFrom": SECRET_REF}},
}


def test_values_schema_accepts_the_new_keys():
    values = copy.deepcopy(NEW_KEYS)
    for block in ("teacher", "surrogate", "dialogue", "gate", "mining", "training", "embedded", "operator"):
        values[block] = copy.deepcopy(POD_BLOCK_KEYS)
    values["workers"] = {q: copy.deepcopy(POD_BLOCK_KEYS) for q in ("mining", "training")}
    docs = render(values)
    _validate(docs)
    assert render(load_values("minimal") | {"embedded": copy.deepcopy(POD_BLOCK_KEYS)})


BAD_NEW_VALUES = {
    "typo in hfTokenSecret": ({"hfTokenSecret": {"nam": "hf"}}, "nam"),
    "env entry with a misspelt valueFrom": ({"extraEnv": {"A": {"valuefrom": SECRET_REF}}}, "/extraEnv/A"),
    "env entry with value and valueFrom": ({"extraEnv": {"A": {"value": "x", "valueFrom": SECRET_REF}}}, "/extraEnv/A"),
    "env value not a string": ({"teacher": {"extraEnv": {"A": 3}}}, "/teacher/extraEnv/A"),
    "grace period above server.grace_period_s's limit": ({"gracePeriodSeconds": 7200}, "/gracePeriodSeconds"),
    "drain above server.drain_delay_s's limit": ({"drainDelaySeconds": 301}, "/drainDelaySeconds"),
    "http port out of range": ({"httpPort": 70000}, "/httpPort"),
    "typo in serviceAccount": ({"serviceAccount": {"annotation": {}}}, "annotation"),
    "annotation value not a string": ({"podAnnotations": {"a": 1}}, "/podAnnotations/a"),
    "spread constraint without topologyKey": (
        {"dialogue": {"topologySpreadConstraints": [{"maxSkew": 1, "whenUnsatisfiable": "ScheduleAnyway"}]}},
        "topologyKey",
    ),
    "volume mount without mountPath": ({"gate": {"extraVolumeMounts": [{"name": "v"}]}}, "mountPath"),
    "typo in a worker's pod keys": ({"workers": {"mining": {"podAnnotation": {}}}}, "podAnnotation"),
    "typo in grafanaDashboard": ({"telemetry": {"grafanaDashboard": {"enable": True}}}, "enable"),
    "typo in prometheusRule": ({"telemetry": {"prometheusRule": {"queueLength": 3}}}, "queueLength"),
    "typo in sessionCleanup": ({"sessionCleanup": {"timeout": 60}}, "timeout"),
}


@pytest.mark.parametrize(("values", "where"), BAD_NEW_VALUES.values(), ids=BAD_NEW_VALUES.keys())
def test_values_schema_rejects_bad_new_values(values, where):
    with pytest.raises(helm.HelmValuesError) as err:
        render(values)
    assert where in str(err.value)


def test_the_pods_log_json_with_trace_ids_and_vllm_reports_its_stats():
    """Issue 16: the log pipeline gets JSON lines (telemetry.log_format) and vLLM's own stats are on."""
    from tests.k8s.manifests import render

    docs = render()
    envs = {}
    for doc in docs:
        if doc and doc.get("kind") == "Deployment":
            for c in doc["spec"]["template"]["spec"]["containers"]:
                envs[doc["metadata"]["name"]] = {e["name"]: e.get("value") for e in c.get("env", [])}
    soma_pods = {name: env for name, env in envs.items() if "SOMA_TELEMETRY__LOG_LEVEL" in env}
    assert soma_pods and all(env["SOMA_TELEMETRY__LOG_FORMAT"] == "json" for env in soma_pods.values())
    assert envs["soma-teacher"]["SOMA_TEACHER__VLLM_LOG_STATS"] == "true"
    assert envs["soma-surrogate"]["SOMA_SURROGATE__VLLM_LOG_STATS"] == "true"
