"""The Kubernetes API as the launcher uses it: the client, the error type, the retries of
transient failures, and the raw requests on one namespace's pods, claims, Secrets and fences.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Callable, Mapping
from typing import Any

from reflow.core.config import KubernetesSettings
from reflow.core.errors import ConfigError, TaskError

log = logging.getLogger("reflow.kubernetes")

_TRANSIENT = {429, 500, 502, 503, 504}
_REQUEST_TIMEOUT = (5, 30)


def server_version(api_client: Any) -> tuple[int, int] | None:
    """The API server's Kubernetes version (major, minor), or None when it cannot be read
    (the launcher works on without it)."""
    from kubernetes import client

    try:
        info = client.VersionApi(api_client).get_code(_request_timeout=10)
        return int(info.major), int(str(info.minor).rstrip("+"))
    except Exception:  # an unreachable server is reported by the calls that need it
        return None


def load_client(settings: KubernetesSettings) -> Any:
    """An ApiClient for the configured cluster: in-cluster, or a kubeconfig context."""
    try:
        from kubernetes import client, config
    except ImportError:
        raise ConfigError(
            "the kubernetes launcher needs the Kubernetes client: pip install 'reflow[kubernetes]'"
        ) from None
    configuration = client.Configuration()
    in_cluster = settings.in_cluster
    if in_cluster is None:
        in_cluster = bool(os.environ.get("KUBERNETES_SERVICE_HOST")) and not (
            settings.context or settings.kubeconfig
        )
    loader: Any = config
    try:
        if in_cluster:
            loader.load_incluster_config(client_configuration=configuration)
        else:
            loader.load_kube_config(
                config_file=str(settings.kubeconfig.expanduser()) if settings.kubeconfig else None,
                context=settings.context,
                client_configuration=configuration,
            )
    except (config.ConfigException, OSError, ValueError) as exc:
        where = "in-cluster" if in_cluster else f"context {settings.context or '(current)'}"
        raise ConfigError(f"kubernetes: cannot load the configuration ({where}): {exc}") from None
    configuration.retries = 0  # retried here, where it is known what is safe to repeat
    return client.ApiClient(configuration)


class _ApiError(TaskError):
    """A Kubernetes API failure, with its status (0: no answer) and message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status

    @classmethod
    def of(cls, exc: Any) -> _ApiError:
        message = str(exc.reason or "")
        with contextlib.suppress(ValueError, TypeError, AttributeError):
            message = json.loads(exc.body).get("message") or message
        return cls(int(exc.status or 0), f"{exc.status} {message}".strip())


class NamespaceApi:
    """The requests the launcher makes in its namespace, each returning the API's JSON;
    ``selector`` picks this instance's pods and Secrets."""

    def __init__(self, core: Any, namespace: str, selector: str) -> None:
        # Any: requests pass plain manifests and read raw JSON (_preload_content=False).
        self.core = core
        self.namespace = namespace
        self.selector = selector

    def request(self, call: Callable[[], Any], attempts: int = 4) -> Any:
        """One API call returning JSON; transient failures (connection loss, 429, 5xx)
        are retried with backoff, anything else raises _ApiError at once."""
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        delay = 0.2
        for attempt in range(attempts):
            try:
                response = call()
                data = response.data
                return json.loads(data) if data else {}
            except ApiException as exc:
                error = _ApiError.of(exc)
                if exc.status not in _TRANSIENT or attempt == attempts - 1:
                    raise error from None
            except (HTTPError, OSError) as exc:
                if attempt == attempts - 1:
                    raise _ApiError(0, f"cannot reach the API server: {exc}") from None
            time.sleep(delay)
            delay *= 2.5
        raise AssertionError("unreachable")

    # -- pods --------------------------------------------------------------------------------
    def create_pod(self, manifest: dict[str, Any]) -> Any:
        return self.request(
            lambda: self.core.create_namespaced_pod(
                self.namespace, manifest, _preload_content=False
            ),
        )

    def read_pod(self, name: str) -> dict[str, Any] | None:
        try:
            pod: dict[str, Any] = self.request(
                lambda: self.core.read_namespaced_pod(name, self.namespace, _preload_content=False)
            )
        except _ApiError as exc:
            if exc.status == 404:
                return None
            raise
        return pod

    def patch_pod(self, name: str, patch: dict[str, Any]) -> Any:
        return self.request(
            lambda: self.core.patch_namespaced_pod(
                name, self.namespace, patch, _preload_content=False
            )
        )

    def delete_pod(self, name: str, grace: float | None) -> None:
        seconds = None if grace is None else max(0, round(grace))
        try:
            self.request(
                lambda: self.core.delete_namespaced_pod(
                    name,
                    self.namespace,
                    grace_period_seconds=seconds,
                    _preload_content=False,
                )
            )
        except _ApiError as exc:
            if exc.status != 404:
                raise

    def list_pods(self) -> tuple[list[dict[str, Any]], str]:
        """This instance's pods, and the resource version of the list."""
        body = self.request(
            lambda: self.core.list_namespaced_pod(
                self.namespace, label_selector=self.selector, _preload_content=False
            )
        )
        return list(body.get("items") or []), str(body["metadata"].get("resourceVersion", ""))

    def pods_labelled(self, label_selector: str) -> list[dict[str, Any]]:
        """The pods under ``label_selector``; not from a cache: a list without
        resourceVersion reads the latest state."""
        body = self.request(
            lambda: self.core.list_namespaced_pod(
                self.namespace, label_selector=label_selector, _preload_content=False
            )
        )
        return list(body.get("items") or ())

    # -- claims and Secrets ------------------------------------------------------------------
    def ensure_claim(self, claim: dict[str, Any]) -> None:
        name = claim["metadata"]["name"]
        try:
            self.request(
                lambda: self.core.create_namespaced_persistent_volume_claim(
                    self.namespace, claim, _preload_content=False
                )
            )
            log.info("created claim %s", name)
        except _ApiError as exc:
            if exc.status != 409:  # it exists already: the point of a per-date claim
                raise TaskError(f"kubernetes refused claim {name}: {exc}") from None

    def create_secret(self, secret: dict[str, Any]) -> None:
        name = secret["metadata"]["name"]
        try:
            self.request(
                lambda: self.core.create_namespaced_secret(
                    self.namespace, secret, _preload_content=False
                )
            )
        except _ApiError as exc:
            if exc.status != 409:
                raise TaskError(f"kubernetes refused secret {name}: {exc}") from None
            # Left by an earlier attempt of this very call: the values are the same.
            self.request(
                lambda: self.core.replace_namespaced_secret(
                    name, self.namespace, secret, _preload_content=False
                )
            )

    def own_secret(self, name: str, pod: Mapping[str, Any]) -> None:
        """Make the pod the owner of its Secret: Kubernetes deletes the Secret with it.
        When that fails the sweep deletes the Secret after the try."""
        owner = {"apiVersion": "v1", "kind": "Pod", "name": name, "uid": pod["metadata"]["uid"]}
        try:
            self.request(
                lambda: self.core.patch_namespaced_secret(
                    name,
                    self.namespace,
                    {"metadata": {"ownerReferences": [owner]}},
                    _preload_content=False,
                )
            )
        except _ApiError as exc:
            log.warning("cannot make pod %s the owner of its secret: %s", name, exc)

    def delete_secret(self, name: str) -> None:
        try:
            self.request(
                lambda: self.core.delete_namespaced_secret(
                    name, self.namespace, _preload_content=False
                )
            )
        except _ApiError as exc:
            if exc.status != 404:
                raise

    def list_secrets(self) -> list[dict[str, Any]]:
        body = self.request(
            lambda: self.core.list_namespaced_secret(
                self.namespace, label_selector=self.selector, _preload_content=False
            )
        )
        return list(body.get("items") or [])

    # -- config maps (fences) ----------------------------------------------------------------
    def create_config_map(self, config_map: dict[str, Any]) -> None:
        self.request(
            lambda: self.core.create_namespaced_config_map(
                self.namespace, config_map, _preload_content=False
            )
        )

    def read_config_map(self, name: str) -> None:
        self.request(
            lambda: self.core.read_namespaced_config_map(
                name, self.namespace, _preload_content=False
            )
        )

    def list_config_maps(self, label_selector: str) -> list[dict[str, Any]]:
        body = self.request(
            lambda: self.core.list_namespaced_config_map(
                self.namespace,
                label_selector=label_selector,
                _preload_content=False,
            )
        )
        return list(body.get("items") or ())

    def delete_config_map(self, name: str) -> None:
        try:
            self.request(
                lambda: self.core.delete_namespaced_config_map(
                    name, self.namespace, _preload_content=False
                )
            )
        except _ApiError as exc:
            if exc.status != 404:
                raise
