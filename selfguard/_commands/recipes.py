"""Recipes that set the port reservation in containers: docker run, a Kubernetes pod, a docker compose service."""

from __future__ import annotations

import json
import shlex

from .reserve import SYSCTL

# Kubernetes lists this sysctl as safe (namespaced, settable per pod without a
# kubelet --allowed-unsafe-sysctls flag) since 1.27, on kernels >= 3.16.
KUBERNETES_NOTE = "a safe sysctl since Kubernetes 1.27: no kubelet flag needed"
HOST_NETWORK_NOTE = [
    "Containers on the host's network (docker --network host, Kubernetes hostNetwork: true) share the",
    "host's setting and cannot set their own.",
]


def container_recipes(setting: str) -> dict[str, str]:
    """The reservation *setting* ("8080,9000-9010") as a docker run line and YAML for Kubernetes and compose."""
    # Quoted, so that YAML keeps a lone port ("40000") a string, as both
    # Kubernetes and compose require for sysctl values.
    value = json.dumps(setting)
    return {
        "docker_run": f"docker run --sysctl {shlex.quote(f'{SYSCTL}={setting}')} IMAGE",
        "kubernetes_pod": (
            f"spec:\n  securityContext:\n    sysctls:\n      - name: {SYSCTL}\n        value: {value}\n"
        ),
        "docker_compose": f"services:\n  SERVICE:\n    sysctls:\n      {SYSCTL}: {value}\n",
    }


def render_recipes(recipes: dict[str, str]) -> list[str]:
    """The recipes as lines of the doctor's text report."""
    return [
        "The setting is per network namespace: each container needs it in its own (run the doctor inside it,",
        "or name the container's service ports with --port):",
        f"  {recipes['docker_run']}",
        f"  Kubernetes, in the pod ({KUBERNETES_NOTE}):",
        *("    " + line for line in recipes["kubernetes_pod"].splitlines()),
        "  docker compose, in the service:",
        *("    " + line for line in recipes["docker_compose"].splitlines()),
        *HOST_NETWORK_NOTE,
    ]
