"""``Python``: a task that calls a function in a child process.

The child re-imports the pipeline file, so the function may be anything defined there.
"""

from __future__ import annotations

import inspect
import json
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from reflow.core.context import context_to_json
from reflow.core.errors import PipelineError
from reflow.core.pipeline import Task
from reflow.core.templating import render_value


class Python(Task):
    """Call ``fn(*args, **kwargs)``; context names in its signature are passed too.

    A parameter named ``context`` receives the whole run context; ``**kwargs`` receives
    every context name. Strings in ``args``/``kwargs`` are templates.
    """

    kind = "python"
    template_fields = ("args", "kwargs", "env")

    def __init__(
        self,
        task_id: str,
        fn: Callable[..., Any],
        *,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> None:
        super().__init__(task_id, **options)
        self.fn = fn
        self.args = list(args)
        self.kwargs = dict(kwargs or {})

    def extra_fields(self) -> tuple[str, ...]:
        return ("fn",)

    def check(self) -> None:
        if not callable(self.fn):
            raise PipelineError(f"fn must be callable, got {self.fn!r}")

    def render(self, context: Mapping[str, Any], *, remote: bool = False) -> dict[str, Any]:
        return {
            "args": render_value(self.args, context),
            "kwargs": render_value(self.kwargs, context),
            "env": render_value(self.merged_env(), context),
            "cwd": None,
        }

    def argv(self, rendered: Mapping[str, Any], python: str | None = None) -> tuple[str, ...]:
        return (python or sys.executable, "-m", "reflow.tasks.pyrun")

    def child_env(
        self, context: Mapping[str, Any], pipelines_folder: str, task_file: str | None = None
    ) -> dict[str, str]:
        """What the child needs to find and call the function again (``task_file``: where
        the pipeline file is for the child, when not where this process read it)."""
        assert self.pipeline is not None and self.pipeline.fileloc is not None
        return {
            "REFLOW_TASK_FILE": task_file or self.pipeline.fileloc,
            "REFLOW_TASK_PIPELINE": self.pipeline.name,
            "REFLOW_TASK_ID": self.task_id,
            "REFLOW_TASK_CONTEXT": json.dumps(context_to_json(context), default=str),
            "REFLOW_PIPELINES_FOLDER": pipelines_folder,
        }

    def call(self, context: Mapping[str, Any]) -> Any:
        """Run the function with the rendered args and the context it asks for."""
        rendered = self.render(context)
        args, kwargs = list(rendered["args"]), dict(rendered["kwargs"])
        try:
            signature = inspect.signature(self.fn)
            params = dict(signature.parameters)
            bound = set(signature.bind_partial(*args).arguments)
        except (TypeError, ValueError):  # builtins without a signature, too many args
            params, bound = {}, set()
        takes_all = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        for name, value in context.items():
            if name in kwargs or name in bound:  # a positional arg already fills it
                continue
            if takes_all or name in params:
                kwargs[name] = value
        if "context" in params and "context" not in kwargs and "context" not in bound:
            kwargs["context"] = dict(context)
        return self.fn(*args, **kwargs)
