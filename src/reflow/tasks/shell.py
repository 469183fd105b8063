"""``Shell``: a task that runs a command with ``/bin/sh -c``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from reflow.core.errors import PipelineError
from reflow.core.pipeline import Task
from reflow.core.templating import check, render, render_value


class Shell(Task):
    """Run ``command`` in a shell. Values interpolated with ``{{ }}`` are shell-quoted."""

    kind = "shell"
    template_fields = ("command", "env", "cwd")

    def __init__(
        self, task_id: str, command: str, *, cwd: str | None = None, **options: Any
    ) -> None:
        super().__init__(task_id, **options)
        self.command = command
        self.cwd = cwd

    def check(self) -> None:
        if not isinstance(self.command, str) or not self.command.strip():
            raise PipelineError("command must be a non-empty string")
        check(self.command, shell=True)

    def render(self, context: Mapping[str, Any], *, remote: bool = False) -> dict[str, Any]:
        """The task's fields rendered for one try."""
        return {
            "command": render(self.command, context, shell=True),
            "env": render_value(self.merged_env(), context),
            "cwd": render(self.cwd, context) if self.cwd else None,
        }

    def argv(self, rendered: Mapping[str, Any]) -> tuple[str, ...]:
        return ("/bin/sh", "-c", rendered["command"])
