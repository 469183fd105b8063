"""``reflow k8s …``: what the kubernetes launcher would create."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from reflow.cli.options import HomeOption, open_project
from reflow.core.errors import InvalidInput
from reflow.core.masking import scrub

k8s_app = typer.Typer()  # its help and its place among the commands: cli/app.py


@k8s_app.command("render")
def k8s_render(
    pipeline: Annotated[str, typer.Argument(help="Pipeline name.")],
    task: Annotated[str, typer.Argument(help="Task id.")],
    date: Annotated[str, typer.Option("--date", "-d", help="Logical date (YYYY-MM-DD).")],
    conf: Annotated[str | None, typer.Option("--conf", help="Run conf as a JSON object.")] = None,
    home: HomeOption = None,
) -> None:
    """Print the YAML of the pod (and claims) a try of TASK for DATE would create.

    For review, or `kubectl apply --dry-run=server -f -`. The pod's name ends with the
    try's id, given when the try is queued: 0 here. Values of secret params are shown as
    *** (give pods secrets through Kubernetes secrets: Pod(secret_env=...)).
    """
    from reflow.services import kubernetes as k8s_service
    from reflow.services import runs as run_service

    try:
        import yaml
    except ImportError:
        raise InvalidInput(
            "rendering pods needs PyYAML: pip install 'reflow[kubernetes]'"
        ) from None
    project = open_project(home)
    rendered = k8s_service.render(project, pipeline, task, date, run_service.parse_conf(conf))
    text = yaml.safe_dump_all(
        rendered.manifests, sort_keys=False, default_flow_style=False, width=100
    )
    sys.stdout.write(scrub(text, rendered.secret_values))
