"""soma-operator: the kopf operator that drives each session's live adaptation in a cluster.

One SomaSession object (soma.dev/v1alpha1, namespaced) per dialogue session. The operator calls
the adaptation driver (soma.adaptation.driver) on a timer per object, mirrors what it reports into
the object's status, deletes the object when its TTL expires, and, behind a finalizer, deletes
the session's adapters and transcript when the object goes. Embedded mode runs the same driver
in a local loop instead; the reconcile logic itself is soma.session.reconcile, pure functions.

Run:
    PYTHONPATH=operators python -m soma_operator        # or, installed: python -m soma_operator
  It reads soma's own settings (SOMA_* env, or the YAML file SOMA_OPERATOR_CONFIG_FILE) to build
  the driver: session store (dialogue.session_store=redis), adapter store, service addresses.

Settings (environment):
    SOMA_OPERATOR_NAMESPACE            ""              serve this namespace only; "" = all namespaces
    SOMA_OPERATOR_PEERING              soma-operator   kopf peering name (leader election)
    SOMA_OPERATOR_STANDALONE           false           true = no peering (one replica, development)
    SOMA_OPERATOR_PRIORITY             0               peering priority of this replica
    SOMA_OPERATOR_TICK_INTERVAL_S      5               seconds between driver ticks per session
    SOMA_OPERATOR_COUNTERS_INTERVAL_S  60              counters/lastActivity written at most this often
    SOMA_OPERATOR_ERROR_BACKOFF_S      10              retry delay after a failed tick or cleanup
    SOMA_OPERATOR_MAX_WORKERS          8               threads running ticks in parallel
    SOMA_OPERATOR_METRICS_PORT         9465            Prometheus /metrics; 0 = off
    SOMA_OPERATOR_HEALTH_PORT          8080            kopf liveness probe at /healthz; 0 = off
    SOMA_OPERATOR_POST_EVENTS          true            post handler outcomes as Kubernetes Events
    SOMA_OPERATOR_CONFIG_FILE          (none)          soma YAML config for the driver

Leader election: kopf peering. With peering on (the default), replicas share a peering object
named SOMA_OPERATOR_PEERING; the one with the highest priority works, the others pause. Peering
is mandatory then: the cluster needs kopf's peering CRDs (KopfPeering, ClusterKopfPeering from
kopf's peering.yaml) and the peering object itself — a ClusterKopfPeering when serving all
namespaces, a KopfPeering in the namespace otherwise. SOMA_OPERATOR_STANDALONE=true skips all of
it (exactly one replica!).

Who writes what on a SomaSession:
    spec                   the dialogue service, once, at OpenSession (soma.k8s.session_resource);
                           it deletes the object at CloseSession
    status                 this operator only: on phase, step, adapter generation or adapter URI
                           changes, and counters/lastActivity at most every counters interval —
                           never per turn; the session store stays the source of truth
    metadata.finalizers    this operator (soma.dev/session-cleanup)
    soma.dev/* annotations this operator (kopf's bookkeeping)

RBAC of the operator's service account (ClusterRole when serving all namespaces):
    soma.dev              somasessions                 get, list, watch, patch, delete
    soma.dev              somasessions/status          get, patch
    apiextensions.k8s.io  customresourcedefinitions    get, list, watch
    ""                    namespaces                   get, list, watch
    ""                    events                       create          (when POST_EVENTS)
    kopf.dev              clusterkopfpeerings          get, list, watch, patch   (all namespaces)
    kopf.dev              kopfpeerings                 get, list, watch, patch   (one namespace)
The dialogue service needs only: soma.dev somasessions create, delete (in its namespace).

Metrics (SOMA_OPERATOR_METRICS_PORT): soma_operator_reconciles_total, soma_operator_ticks_failed_total,
soma_operator_status_patches_total{cause}, soma_operator_ttl_deletions_total,
soma_operator_cleanups_total{result}, soma_operator_sessions{phase}.
"""
