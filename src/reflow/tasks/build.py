"""From a task and the run context to the exact :class:`TrySpec` a launcher runs."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from reflow.core.pipeline import Task
from reflow.core.spec import TrySpec
from reflow.tasks.python import Python
from reflow.tasks.shell import Shell
from reflow.tasks.spark import SparkSubmit


def build_try(
    task: Task,
    context: Mapping[str, Any],
    *,
    try_id: int,
    log_path: str,
    pipelines_folder: str,
    cwd: str | None = None,
) -> TrySpec:
    """Render ``task`` for one try. Raises TemplateError when a field does not render."""
    if not isinstance(task, Shell | Python | SparkSubmit):
        raise TypeError(f"unsupported task kind {task.kind!r}")
    rendered = task.render(context)
    env = {str(k): str(v) for k, v in rendered["env"].items()}
    if isinstance(task, Python):
        env.update(task.child_env(context, pipelines_folder))
    env.update(
        REFLOW_PIPELINE=str(context["pipeline"]),
        REFLOW_RUN_ID=str(context["run_id"]),
        REFLOW_TASK=task.task_id,
        REFLOW_TRY_NUMBER=str(context["try_number"]),
        REFLOW_DS=str(context["ds"]),
    )
    return TrySpec(
        try_id=try_id,
        argv=task.argv(rendered),
        log_path=log_path,
        env=env,
        cwd=rendered["cwd"] or cwd,
        kill_grace=float(task.option("kill_grace")),
        labels={
            "pipeline": str(context["pipeline"]),
            "run_id": str(context["run_id"]),
            "task": task.task_id,
            "try_number": str(context["try_number"]),
        },
    )
