"""Task kinds: each renders the run context into what a try runs."""

from reflow.tasks.python import Python
from reflow.tasks.shell import Shell
from reflow.tasks.spark import SparkSubmit

__all__ = ["Python", "Shell", "SparkSubmit"]
