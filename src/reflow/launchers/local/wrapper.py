"""The ``/bin/sh`` wrapper every try runs under: it claims the try's id, joins its cgroup,
runs the command and records its exit status, which :func:`_describe` puts in words.
"""

from __future__ import annotations

import signal

_SH = "/bin/sh"
# The wrapper's exit code when the try's id was claimed already (fenced, or running).
_CLAIM_FAILED = 223
# $1 pid file, $2 exit file, $3 the try's cgroup.procs (or ""), then the argv. Plain sh
# keeps the per-try overhead to a fork + exec or two: creating the pid file under noclobber
# (O_EXCL), joining the cgroup and writing the exit status are builtins. The exit file is
# read only once the wrapper has ended, so it needs no atomic rename (and no `mv` process
# that a cancel could kill between the command's end and the status it records). The claim
# comes first, so that a fenced try runs nothing; the cgroup is joined before the command
# is forked, so that every descendant is in it. SIGTERM is caught (not ignored: an ignored
# signal would stay ignored in the command) so that the wrapper outlives the command it
# shares a process group with and records its status; a TERM that arrives before the
# command starts skips it (one that arrives while the command is being forked is lost: see
# _Try.command_termed). The command runs under `exec` in a subshell so that an argv naming
# a shell builtin (`exit`, `exec`, `cd`) runs the program of that name, as it would without
# the wrapper. The wrapper's own messages ("Terminated") go to /dev/null: the log holds the
# command's output.
_WRAPPER = f"""\
set -C
echo "$$" 2>/dev/null >"$1" || exit {_CLAIM_FAILED}
set +C
t=
trap 't=1' TERM
exec 3>&2 2>/dev/null
[ -z "$3" ] || echo "$$" >"$3"
e=$2
shift 3
if [ -z "$t" ]; then (exec "$@" 2>&3 3>&-); c=$?; else c=143; fi
echo "$c" >"$e"
exit "$c"
"""


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _describe(code: int, killed: bool) -> str:
    """A failed exit status in words: a negative code is the wrapper's death by signal."""
    if code < 0:
        after = " after the grace period" if killed and -code == signal.SIGKILL else ""
        return f"killed by signal {-code} ({_signal_name(-code)}){after}"
    if 128 < code <= 128 + 64:
        # The shell reports a command killed by signal N as 128 + N.
        return f"exit code {code} (128 + {_signal_name(code - 128)})"
    return f"exit code {code}"
