"""reflow: an orchestrator for partitioned data pipelines.

The public API for pipeline files. Importing it stays light: no database, no CLI.
"""

from reflow.core.errors import ConfError, NotFound, PipelineError, ReflowError
from reflow.core.params import Param
from reflow.core.pipeline import Pipeline, Task, TaskDefaults
from reflow.core.pod import Pod, Scratch, Volume, scratch
from reflow.tasks.python import Python
from reflow.tasks.shell import Shell
from reflow.tasks.spark import SparkSubmit

__version__ = "0.1.0"

__all__ = [
    "ConfError",
    "NotFound",
    "Param",
    "Pipeline",
    "PipelineError",
    "Pod",
    "Python",
    "ReflowError",
    "Scratch",
    "Shell",
    "SparkSubmit",
    "Task",
    "TaskDefaults",
    "Volume",
    "scratch",
]
