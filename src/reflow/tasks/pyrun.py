"""Entry point of a ``Python`` task's child process: ``python -m reflow.tasks.pyrun``."""

from __future__ import annotations

import json
import os
import sys
import traceback
from pathlib import Path


def main() -> int:
    from reflow.core.context import context_from_json
    from reflow.core.discovery import load_file
    from reflow.core.errors import ReflowError
    from reflow.tasks.python import Python

    folder = os.environ.get("REFLOW_PIPELINES_FOLDER")
    if folder and folder not in sys.path:
        sys.path.insert(0, folder)
    path = os.environ["REFLOW_TASK_FILE"]
    name = os.environ["REFLOW_TASK_PIPELINE"]
    task_id = os.environ["REFLOW_TASK_ID"]
    context = context_from_json(json.loads(os.environ["REFLOW_TASK_CONTEXT"]))
    try:
        pipelines = {p.name: p for p in load_file(Path(path))}
        task = pipelines[name].tasks[task_id]
    except (ReflowError, KeyError) as exc:
        print(f"reflow: cannot load task {name}.{task_id} from {path}: {exc}", file=sys.stderr)
        return 2
    if not isinstance(task, Python):
        print(f"reflow: task {name}.{task_id} is not a Python task", file=sys.stderr)
        return 2
    try:
        result = task.call(context)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        traceback.print_exc()
        return 1
    if result is not None:
        print(f"reflow: {task_id} returned {result!r}")
    return 0


if __name__ == "__main__":
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    sys.exit(main())
