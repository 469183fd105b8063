"""deploy/kubernetes against a real API server: every object of the kustomization is
accepted (server-side dry run: validation, defaults, admission, RBAC) in the order its
README gives, in a namespace of the test's own. Nothing is created but the namespace, so
no image is ever pulled."""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes import utils

from .conftest import REAL_CONTEXT, Cluster
from .test_deploy import DEPLOY, documents

pytestmark = pytest.mark.skipif(
    not REAL_CONTEXT, reason="needs a real cluster (make test-k8s-real)"
)


def _in(namespace: str, doc: dict[str, Any]) -> dict[str, Any]:
    """The object moved from the example's namespace to the test's."""
    doc["metadata"]["namespace"] = namespace
    for subject in doc.get("subjects", []):
        subject["namespace"] = namespace
    return doc


def test_the_kustomization_applies_to_a_real_api_server(cluster: Cluster) -> None:
    namespace = cluster.settings.namespace  # made by the fixture: the README's first step
    order = [
        line.strip()[2:]
        for line in (DEPLOY / "kustomization.yaml").read_text().splitlines()
        if line.strip().startswith("- ")
    ]
    assert order[0] == "namespace.yaml"
    applied = []
    for name in order[1:]:
        for doc in documents(DEPLOY / name):
            created = utils.create_from_dict(
                cluster.core.api_client, _in(namespace, doc), namespace=namespace, dry_run="All"
            )
            applied += [(doc["kind"], doc["metadata"]["name"]) for _ in created]
    kinds = {kind for kind, _ in applied}
    assert {"Deployment", "Role", "RoleBinding", "ServiceAccount", "ConfigMap"} <= kinds
    # A dry run creates nothing.
    assert not cluster.core.list_namespaced_config_map(
        namespace, label_selector="app.kubernetes.io/part-of=reflow"
    ).items
