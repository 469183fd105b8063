"""Use-cases of the kubernetes launcher that need no cluster: the manifests of a try."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from reflow.core.context import RunInfo, build_context
from reflow.core.errors import NotFound
from reflow.core.masking import Secrets
from reflow.core.naming import log_path, run_id_for, utcnow
from reflow.core.states import RunOrigin
from reflow.launchers.kubernetes.manifest import claim_manifests, pod_manifest, secret_manifest
from reflow.services.project import Project
from reflow.services.runs import logical_date_for, parse_date
from reflow.tasks.build import Remote, build_try

# The try's id is given when it is queued; a rendered pod shows this one in its place.
PREVIEW_TRY_ID = 0


@dataclass(frozen=True)
class Rendered:
    manifests: list[dict[str, Any]]  # the claims, the Secret of its secret env, the pod
    secret_values: list[str]  # to mask when showing them


def render(
    project: Project,
    name: str,
    task_id: str,
    date: str,
    conf: Mapping[str, Any] | None = None,
) -> Rendered:
    """What try 1 of ``task_id`` for ``date`` (a scheduled run) would create. Raises
    NotFound, InvalidInput, ConfError or TaskError; nothing is written."""
    pipeline = project.pipeline(name)
    task = pipeline.tasks.get(task_id)
    if task is None:
        known = ", ".join(sorted(pipeline.tasks))
        raise NotFound(f"pipeline {name!r} has no task {task_id!r} (tasks: {known})")
    resolved = pipeline.params.resolve(conf)
    logical_date = logical_date_for(pipeline, parse_date(date), utcnow())
    interval = pipeline.schedule.interval(logical_date)
    run_id = run_id_for(RunOrigin.SCHEDULED, logical_date)
    run = RunInfo(
        pipeline=name,
        run_id=run_id,
        logical_date=logical_date,
        data_interval_start=interval[0],
        data_interval_end=interval[1],
        conf=resolved,
        timezone=pipeline.schedule.timezone,
    )
    settings = project.settings
    k8s = settings.kubernetes
    spec = build_try(
        task,
        build_context(run, task_id, 1),
        try_id=PREVIEW_TRY_ID,
        log_path=str(log_path(settings.logs_path, name, run_id, task_id, 1)),
        pipelines_folder=str(settings.pipelines_path),
        launcher="kubernetes",
        remote=Remote(k8s.pipelines_folder, k8s.python),
    )
    secrets = Secrets.of(pipeline.structure(), pipeline.params.secret_names())
    secret = secret_manifest(spec, k8s)
    manifests = [
        *claim_manifests(spec, k8s),
        *([secret] if secret else []),
        pod_manifest(spec, k8s),
    ]
    return Rendered(manifests, secrets.values([resolved]))
