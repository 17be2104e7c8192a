"""`python -m soma_operator`: the SomaSession operator in this process (kopf, with peering).

Everything is configured by environment (see the package docstring: `--help` prints it).
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable
from typing import Any

import soma_operator
from soma_operator.settings import OperatorSettings


def run_options(settings: OperatorSettings) -> dict[str, Any]:
    """kopf.run's keyword arguments: which namespaces, leader election, the liveness probe."""
    options: dict[str, Any] = {
        "standalone": settings.standalone,
        "peering_name": None if settings.standalone else settings.peering,
        "priority": settings.priority,
        "liveness_endpoint": f"http://0.0.0.0:{settings.health_port}/healthz" if settings.health_port else None,
    }
    if settings.namespace:
        options["namespaces"] = [settings.namespace]
    else:
        options["clusterwide"] = True
    return options


def main(
    argv: list[str] | None = None,
    *,
    run: Callable[..., None] | None = None,
    build_driver: Callable[[Any], Any] | None = None,
    api: Any = None,
) -> int:
    """Build the driver and the handlers, serve metrics, run kopf until SIGTERM. `run`,
    `build_driver` and `api` replace kopf.run, soma.adaptation.build.build_driver and the
    Kubernetes client (tests)."""
    argparse.ArgumentParser(
        prog="python -m soma_operator", description=soma_operator.__doc__, formatter_class=argparse.RawTextHelpFormatter
    ).parse_args(argv)
    import kopf  # --help needs neither kopf nor the driver

    from soma.config import load_settings
    from soma.k8s.session_resource import SessionResources, kubernetes_api
    from soma_operator.handlers import kopf_settings, register

    settings = OperatorSettings()
    soma_settings = load_settings(settings.config_file)
    logging.basicConfig(
        level=soma_settings.telemetry.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if build_driver is None:
        from soma.adaptation.build import build_driver
    driver = build_driver(soma_settings)
    api = api if api is not None else kubernetes_api()
    registry = kopf.OperatorRegistry()

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> Any:  # the pod's service account, else a local kubeconfig
        return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)

    metrics = register(registry, driver, settings, deleter=lambda namespace: SessionResources(namespace, api=api))
    metrics.serve(settings.metrics_port)
    (run or kopf.run)(registry=registry, settings=kopf_settings(settings), **run_options(settings))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
