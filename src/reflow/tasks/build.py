"""From a task and the run context to the exact :class:`TrySpec` a launcher runs."""

from __future__ import annotations

import json
import os
import posixpath
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from reflow.core.errors import TaskError
from reflow.core.masking import Secrets
from reflow.core.pipeline import Task
from reflow.core.pod import Pod, scratch_plain
from reflow.core.spec import TrySpec
from reflow.core.templating import render_value
from reflow.tasks.python import Python
from reflow.tasks.shell import Shell
from reflow.tasks.spark import SparkSubmit


@dataclass(frozen=True)
class Remote:
    """A try that runs in an image rather than on this machine: where that image holds the
    pipeline files and which Python it runs."""

    pipelines_folder: str
    python: str = "python3"


def build_try(
    task: Task,
    context: Mapping[str, Any],
    *,
    try_id: int,
    log_path: str,
    pipelines_folder: str,
    cwd: str | None = None,
    launcher: str = "local",
    remote: Remote | None = None,
) -> TrySpec:
    """Render ``task`` for one try on ``launcher``. Raises TemplateError when a field does
    not render, TaskError when a rendered value is invalid."""
    if not isinstance(task, Shell | Python | SparkSubmit):
        raise TypeError(f"unsupported task kind {task.kind!r}")
    rendered = task.render(context, remote=remote is not None)
    env = {str(k): str(v) for k, v in rendered["env"].items()}
    if isinstance(task, Python):
        task_file = None
        if remote is not None:
            task_file = _in_image(task, pipelines_folder, remote.pipelines_folder)
        folder = remote.pipelines_folder if remote is not None else pipelines_folder
        env.update(task.child_env(context, folder, task_file))
        argv = task.argv(rendered, remote.python if remote is not None else None)
    else:
        argv = task.argv(rendered)
    env.update(
        REFLOW_PIPELINE=str(context["pipeline"]),
        REFLOW_RUN_ID=str(context["run_id"]),
        REFLOW_TASK=task.task_id,
        REFLOW_TRY_NUMBER=str(context["try_number"]),
        REFLOW_DS=str(context["ds"]),
    )
    pod = task.resolved_pod()
    space = task.resolved_scratch()
    secret_params = task.pipeline.params.secret_names() if task.pipeline else set()
    timeout = task.option("timeout")
    run_timeout = task.pipeline.run_timeout if task.pipeline else None
    fileloc = task.pipeline.fileloc if task.pipeline else None
    return TrySpec(
        try_id=try_id,
        argv=argv,
        log_path=log_path,
        env=env,
        # In a pod the image's working folder is the project folder.
        cwd=rendered["cwd"] or (None if remote is not None else cwd),
        kill_grace=float(task.option("kill_grace")),
        labels={
            "pipeline": str(context["pipeline"]),
            "run_id": str(context["run_id"]),
            "task": task.task_id,
            "try_number": str(context["try_number"]),
        },
        launcher=launcher,
        timeout=timeout if timeout is not None else run_timeout,
        scratch=render_value(scratch_plain(space), context) if space is not None else None,
        pod=_pod_options(pod, context, fileloc) if remote is not None else None,
        secret_env=_secret_env(task, env, context, secret_params) if remote else frozenset(),
    )


def _secret_env(
    task: Task, env: Mapping[str, str], context: Mapping[str, Any], secret_params: set[str]
) -> frozenset[str]:
    """The env entries that carry a secret: by their name, by a template reading a secret
    param, or by a secret param's value in them (the run context of a Python task)."""
    secrets = Secrets(frozenset(secret_params))
    templates = task.merged_env()
    conf = context.get("conf") or {}
    values = [str(conf[p]) for p in secret_params if conf.get(p) not in (None, "")]
    return frozenset(
        name
        for name, value in env.items()
        if secrets.env_is_secret(name, templates.get(name, ""))
        or any(v in value or _json_text(v) in value for v in values)
    )


def _json_text(value: str) -> str:
    """How ``value`` appears inside a JSON document."""
    return json.dumps(value)[1:-1]


def _pod_options(pod: Pod, context: Mapping[str, Any], fileloc: str | None) -> dict[str, Any]:
    """The pod options rendered; a ``pod_override`` YAML file (relative to the pipeline
    file) is read and rendered too."""
    plain = pod.to_plain()
    override = plain.pop("pod_override")
    options: dict[str, Any] = render_value(plain, context)
    if isinstance(override, str):
        folder = os.path.dirname(fileloc) if fileloc else os.getcwd()
        path = os.path.join(folder, render_value(override, context))
        override = _read_yaml(path)
    options["pod_override"] = render_value(override, context) if override else None
    return options


def _read_yaml(path: str) -> dict[str, Any]:
    import yaml  # part of reflow[kubernetes], needed only for pods

    try:
        with open(path) as fh:
            data = yaml.safe_load(fh)
    except OSError as exc:
        raise TaskError(f"pod_override: cannot read {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise TaskError(f"pod_override: {path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise TaskError(f"pod_override: {path} must hold a mapping (a partial pod manifest)")
    return data


def _in_image(task: Python, here: str, there: str) -> str:
    """The pipeline file's path inside the image, whose pipelines folder is ``there``."""
    assert task.pipeline is not None and task.pipeline.fileloc is not None
    relative = os.path.relpath(task.pipeline.fileloc, here)
    if relative.startswith(os.pardir):  # outside the pipelines folder: keep its name
        relative = os.path.basename(task.pipeline.fileloc)
    return posixpath.join(there, *relative.split(os.sep))
