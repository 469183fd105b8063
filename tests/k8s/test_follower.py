"""The log follower's writing of what the log endpoint streams: the container's lines
(with timestamps, which give the resume position) and the kubelet's own text."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from reflow.launchers.kubernetes.follower import _LogFollower, _read_position


def follower(log: Path) -> _LogFollower:
    api: Any = None  # _write_locked never calls the API
    return _LogFollower(api, 1, "pod", log, lambda: "running", threading.Event(), None)


def test_lines_lose_their_timestamp_and_the_kubelets_text_is_marked_as_not_the_tasks(
    tmp_path: Path,
) -> None:
    log = tmp_path / "try-1.log"
    f = follower(log)
    f._write_locked(
        [
            b"2024-01-03T10:00:00.123456789Z first line",
            b"2024-01-03T10:00:01Z second line",
            b"unable to retrieve container logs for containerd://0123abcd",
        ]
    )
    first, second, kubelet = log.read_text().splitlines()
    assert (first, second) == ("first line", "second line")
    # The kubelet's text is a line of reflow's: never taken for the task's output.
    assert kubelet.startswith("[reflow] ")
    assert kubelet.endswith(" kubelet: unable to retrieve container logs for containerd://0123abcd")
    # The position is the last line of the container, not the kubelet's text.
    assert _read_position(log) == ("2024-01-03T10:00:01.000000000", 1)
