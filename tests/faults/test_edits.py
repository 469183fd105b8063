"""Edits by run states: pipeline files changed while a scheduler daemon runs them and a
second process (the ``reflow`` command, and this test through the services) acts at the
same moment. Every task must run exactly as often as its user expects, with the conf they
expect, and ``runs show`` must say what happened (``reflow.core.edits`` states the rules).

Each edit has a pipeline of its own, all driven by one daemon at once. At the moment of
the edit every pipeline has three runs: 2024-01-01 finished, 2024-01-02 running (its first
task held at a gate), 2024-01-03 queued behind it (max_active_runs=1). Right after the
edit the command triggers 2024-01-04. Once all have finished, 2024-01-01 is cleared and
2024-01-02 reprocessed, both under the new version.
"""

from __future__ import annotations

import subprocess
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from reflow.services import backfill as backfill_service
from reflow.services import history as history_service
from reflow.services import runs as run_service
from reflow.services.project import Project

from ..acceptance.test_cli import REFLOW
from .conftest import Installation, wait_for

pytestmark = [pytest.mark.faults, pytest.mark.slow, pytest.mark.timeout(420)]

D1, D2, D3, D4 = DATES = ("2024-01-01", "2024-01-02", "2024-01-03", "2024-01-04")


@dataclass(frozen=True)
class Version:
    """A pipeline file: its tasks (name -> what the task echoes of its params), the
    dependency lines and the params; ``raw`` replaces all of it (a broken file)."""

    tasks: dict[str, str]
    deps: tuple[str, ...] = ()
    params: str = '{"n": 1}'
    raw: str | None = None

    def source(self, name: str, evidence: Path, gates: Path) -> str:
        if self.raw is not None:
            return self.raw
        lines = [
            f"{task} = {_task(task, echo, evidence, gates)}" for task, echo in self.tasks.items()
        ]
        body = "".join(f"    {line}\n" for line in [*lines, *self.deps])
        return (
            "from reflow import Pipeline, Shell\n"
            f"with Pipeline({name!r}, schedule='@daily', start_date='2024-01-01', "
            "end_date='2024-01-10', catchup=False, max_active_runs=1, "
            f"params={self.params}, defaults={{'retries': 0}}):\n{body}"
        )


def _task(name: str, echo: str, evidence: Path, gates: Path) -> str:
    """A Shell task that records its start, waits for its run's gate file, records the
    params it renders and its end (``term`` when stopped)."""
    key = f"{{{{ pipeline }}}} {{{{ ds }}}} {name}"
    cmd = (
        f"mark() {{ echo $1 {key} $2 $3 >> {evidence}; }}; "
        "trap 'mark end term; exit 143' TERM; "
        "mark start $(date +%s.%N); "
        f"while [ ! -e {gates}/{{{{ pipeline }}}}-{{{{ ds }}}} ]; do sleep 0.05; done; "
        + (f"echo param {key} {echo} >> {evidence}; " if echo else "")
        + "mark end ok $(date +%s.%N)"
    )
    return f"Shell({name!r}, {cmd!r})"


AB = Version({"a": "", "b": ""}, ("a >> b",))


@dataclass
class Edit:
    """One edit and what must have happened by the end."""

    before: Version
    after: Version
    ok: dict[tuple[str, str], int]  # (date, task) -> executions that ended ok
    term: dict[tuple[str, str], int] = field(default_factory=dict)  # ... that were stopped
    runs: dict[str, str] = field(default_factory=lambda: dict.fromkeys(DATES, "success"))
    tis: dict[tuple[str, str], str] = field(default_factory=dict)  # (date, task) -> state
    params: dict[tuple[str, str], str] = field(default_factory=dict)  # last rendered
    conf: dict[str, str] = field(default_factory=dict)  # the command's trigger of D4
    refused: str | None = None  # the file does not load: the command's trigger says this
    intruder: Version | None = None  # a second file written with the edit, removed after


def _each(count: int, tasks: Iterable[str], dates: tuple[str, ...]) -> dict[tuple[str, str], int]:
    return {(d, t): count for d in dates for t in tasks}


EDITS: dict[str, Edit] = {
    # Added task: runs in every run from the edit on, and in the re-runs.
    "add": Edit(
        AB,
        Version({"a": "", "b": "", "c": ""}, ("a >> b", "a >> c")),
        ok={**_each(1, "abc", DATES[2:]), **_each(2, "ab", (D1, D2)), (D1, "c"): 1, (D2, "c"): 2},
    ),
    # Removed task: never runs again; its unfinished instances say removed.
    "remove": Edit(
        AB,
        Version({"a": ""}),
        ok={**_each(1, "a", DATES[2:]), (D1, "a"): 2, (D1, "b"): 1, (D2, "a"): 2},
        tis={(D1, "b"): "removed", (D2, "b"): "removed", (D3, "b"): "removed"},
    ),
    # Renamed while its try runs: that try is stopped, the new name runs after it ended.
    "rename": Edit(
        AB,
        Version({"a2": "", "b": ""}, ("a2 >> b",)),
        ok={
            **_each(1, "ab", (D1,)),
            **_each(1, ("a2", "b"), DATES[2:]),
            (D1, "a2"): 1,
            (D1, "b"): 2,
            **_each(2, "b", (D2,)),
            (D2, "a2"): 2,
        },
        term={(D2, "a"): 1},
        tis={(D1, "a"): "removed", (D2, "a"): "removed", (D3, "a"): "removed"},
    ),
    # A param added with a task that uses it: its default, unless a run says otherwise.
    "param_add": Edit(
        AB,
        Version(
            {"a": "", "b": "", "r": "region={{ params.region }}"},
            ("a >> b >> r",),
            params='{"n": 1, "region": "eu"}',
        ),
        ok={**_each(1, "abr", DATES[2:]), **_each(2, "ab", (D1, D2)), (D1, "r"): 1, (D2, "r"): 2},
        params={(D1, "r"): "region=eu", (D3, "r"): "region=eu", (D4, "r"): "region=us"},
        conf={D4: '{"region": "us"}'},
    ),
    # A param removed: no longer rendered; the runs keep it in their conf.
    "param_remove": Edit(
        Version({"a": "old={{ params.old }}", "b": ""}, ("a >> b",), '{"n": 1, "old": "x"}'),
        Version({"a": "n={{ params.n }}", "b": ""}, ("a >> b",)),
        ok={**_each(1, "ab", DATES[2:]), **_each(2, "ab", (D1, D2))},
        params={(D1, "a"): "n=1", (D3, "a"): "n=1"},
    ),
    # A param retyped: a run whose conf no longer validates fails, with one clear line;
    # the reprocess gives its date the new default.
    "param_retype": Edit(
        Version({"a": "", "b": "n={{ params.n }}"}, ("a >> b",)),
        Version({"a": "", "b": "n={{ params.n }}"}, ("a >> b",), '{"n": "one"}'),
        ok={**_each(1, "ab", (D1, D4)), (D2, "a"): 2, (D2, "b"): 1},
        runs={D1: "failed", D2: "success", D3: "failed", D4: "success"},
        params={(D2, "b"): "n=one", (D4, "b"): "n=one"},
    ),
    # Changed dependencies: followed by the runs that had not started yet.
    "deps": Edit(
        Version({"a": "", "b": "", "z": ""}, ("a >> b",)),
        Version({"a": "", "b": "", "z": ""}, ("a >> b", "a >> z")),
        ok={**_each(1, "abz", DATES[2:]), **_each(2, "abz", (D1, D2))},
    ),
    # A second file declares the same name: nothing runs from either until it is gone.
    "duplicate": Edit(
        AB,
        AB,
        ok={**_each(1, "ab", DATES[2:]), **_each(2, "ab", (D1, D2))},
        refused="is also declared in",
        intruder=Version({"intruder": ""}),
    ),
    # The file breaks, then is fixed: its runs wait meanwhile and nothing runs twice.
    "broken": Edit(
        AB,
        Version({}, raw="from reflow import Pipeline\ndef broken(:\n"),
        ok={**_each(1, "ab", DATES[2:]), **_each(2, "ab", (D1, D2))},
        refused="cannot be used until its file loads again",
    ),
}


class Evidence:
    """What the tasks wrote: ended executions and the params each rendered."""

    def __init__(self, path: Path) -> None:
        self.ended: Counter[tuple[str, str, str, str]] = Counter()
        self.params: dict[tuple[str, str, str], str] = {}
        self.started: dict[tuple[str, str, str], list[float]] = {}
        self.finished: dict[tuple[str, str, str], list[float]] = {}
        for line in path.read_text().splitlines() if path.exists() else []:
            kind, pipeline, ds, task, *rest = line.split()
            key = (pipeline, ds, task)
            if kind == "end":
                self.ended[(*key, rest[0])] += 1
                if rest[0] == "ok":
                    self.finished.setdefault(key, []).append(float(rest[1]))
            elif kind == "param":
                self.params[key] = rest[0]
            elif kind == "start":
                self.started.setdefault(key, []).append(float(rest[0]))


def _wait(check: Callable[[], bool], timeout: float, what: str, report: Callable[[], str]) -> None:
    try:
        wait_for(check, timeout, what)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{report()}") from None


def _trigger(inst: Installation, name: str, conf: str | None) -> subprocess.Popen[str]:
    args = [*REFLOW, "trigger", name, "--date", D4, *(["--conf", conf] if conf else [])]
    return subprocess.Popen(
        args,
        cwd=inst.home,
        env=inst.env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        stdin=subprocess.DEVNULL,
    )


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_edits_while_runs_are_queued_running_and_finished(
    backend: str, make_installation: Callable[..., Installation], tmp_path: Path
) -> None:
    inst = make_installation(backend)
    gates = tmp_path / "gates"
    gates.mkdir()
    (inst.home / "reflow.toml").write_text(
        (inst.home / "reflow.toml")
        .read_text()
        .replace("parse_interval = 1.0", "parse_interval = 0.5")
    )

    def write(name: str, version: Version) -> None:
        inst.write_pipeline(name, version.source(name, inst.evidence, gates))

    def gate(*dates: str, names: Iterable[str] = EDITS) -> None:
        for name in names:
            for d in dates:
                (gates / f"{name}-{d}").touch()

    for name, edit in EDITS.items():
        write(name, edit.before)
    # The daemon creates the run of the latest interval (2024-01-10) itself: let it pass.
    gate(D1, "2024-01-10")
    daemon = inst.scheduler()
    project = Project.open(inst.home)
    try:
        for name in EDITS:
            run_service.trigger(project, name, [D1, D2, D3])
    finally:
        project.close()

    def state(name: str, ds: str) -> str | None:
        rows = inst.query(
            f"SELECT state FROM runs WHERE pipeline = '{name}' "
            f"AND run_id LIKE '%{ds}T%' ORDER BY id DESC"
        )
        return rows[0][0] if rows else None

    def caught() -> bool:
        ev = Evidence(inst.evidence)
        return all(
            state(n, D1) == "success" and (n, D2, "a") in ev.started and state(n, D3) == "queued"
            for n in EDITS
        )

    def report() -> str:
        rows = inst.query("SELECT pipeline, run_id, state, version FROM runs ORDER BY id")
        return "\n".join([*(" ".join(map(str, r)) for r in rows), inst.output(daemon)[-4000:]])

    _wait(caught, 120, "2024-01-01 finished, 2024-01-02 running, 2024-01-03 queued", report)

    # The edit, and at the same moment the command acting on the edited files.
    for name, edit in EDITS.items():
        write(name, edit.after)
        if edit.intruder:
            inst.write_pipeline("intruder", edit.intruder.source(name, inst.evidence, gates))
    commands = {name: _trigger(inst, name, edit.conf.get(D4)) for name, edit in EDITS.items()}
    for name, proc in commands.items():
        out, err = proc.communicate(timeout=120)
        refused = EDITS[name].refused
        if refused is None:
            assert proc.returncode == 0, f"{name}: {out}{err}"
        else:
            assert proc.returncode != 0, f"{name}: the trigger was accepted: {out}"
            assert refused in err and "Traceback" not in err, f"{name}: {err}"
            assert len(err.strip().splitlines()) == 1, f"{name}: {err}"

    # The daemon follows the new versions: runs reconciled, the renamed task's try stopped.
    movable = [n for n, e in EDITS.items() if e.refused is None]

    def followed() -> bool:
        current = dict(inst.query("SELECT name, version FROM pipelines"))
        ev = Evidence(inst.evidence)
        return (
            all(
                inst.scalar(
                    f"SELECT version FROM runs WHERE pipeline = '{n}' "
                    f"AND run_id LIKE 'manual%{D2}T%'"
                )
                == current[n]
                for n in movable
            )
            and ev.ended[("rename", D2, "a", "term")] == 1
        )

    _wait(followed, 120, "the running runs follow the new versions", report)
    gate(D2, D3, D4, names=movable)

    # The unusable files: their runs wait (nothing of the intruder runs); then fixed.
    (inst.home / "pipelines" / "intruder.py").unlink()
    write("broken", AB)
    for name in ("duplicate", "broken"):
        out = inst.run("trigger", name, "--date", D4)
        assert out.returncode == 0, out.stderr
    gate(D2, D3, D4, names=("duplicate", "broken"))

    def all_done() -> bool:
        return all(state(n, d) in ("success", "failed") for n in EDITS for d in DATES)

    _wait(all_done, 180, "every run finished", report)

    # Re-runs under the new version, from this process while the daemon runs.
    project = Project.open(inst.home)
    try:
        for name in EDITS:
            history_service.clear(project, name, run=D1)
            plan = backfill_service.plan(project, name, start=D2, end=D2, reprocess="all")
            backfill_service.create(project, plan)
    finally:
        project.close()
    _wait(all_done, 180, "the re-runs finished", report)
    inst.stop(daemon)

    ev = Evidence(inst.evidence)
    problems: list[str] = []
    for name, edit in EDITS.items():
        tasks = {t for (_, t) in edit.ok} | {t for (_, t) in edit.term}
        for d in DATES:
            for t in sorted(tasks | {"intruder"}):
                for how, want in (("ok", edit.ok), ("term", edit.term)):
                    got = ev.ended[(name, d, t, how)]
                    if got != want.get((d, t), 0):
                        problems.append(
                            f"{name} {d} {t}: {got} executions ended {how}, "
                            f"expected {want.get((d, t), 0)}"
                        )
            if state(name, d) != edit.runs[d]:
                problems.append(f"{name} {d}: run {state(name, d)}, expected {edit.runs[d]}")
        for (d, t), want in edit.tis.items():
            got = inst.query(
                "SELECT ti.state FROM task_instances ti JOIN runs r ON r.id = ti.run "
                f"WHERE r.pipeline = '{name}' AND r.run_id LIKE 'manual%{d}T%' "
                f"AND ti.task_id = '{t}'"
            )
            if [g[0] for g in got] != [want]:
                problems.append(f"{name} {d} {t}: instance {got}, expected {want}")
        for (d, t), want in edit.params.items():
            if ev.params.get((name, d, t)) != want:
                problems.append(
                    f"{name} {d} {t}: rendered {ev.params.get((name, d, t))}, expected {want}"
                )
    assert not problems, "\n".join(problems)

    # Dependencies added by the edit hold in the runs that started after it.
    for d in (D3, D4):
        assert ev.started[("deps", d, "z")][0] >= ev.finished[("deps", d, "a")][0]
    # The renamed task started only after the old one's try was stopped.
    term_line = next(
        i
        for i, line in enumerate(inst.evidence.read_text().splitlines())
        if line.startswith(f"end rename {D2} a term")
    )
    first_a2 = next(
        i
        for i, line in enumerate(inst.evidence.read_text().splitlines())
        if line.startswith(f"start rename {D2} a2")
    )
    assert term_line < first_a2
    # The removed param stays in the history of the runs created with it.
    confs = [
        c[0]
        for c in inst.query(
            "SELECT a.conf FROM run_attempts a JOIN runs r ON r.id = a.run "
            f"WHERE r.pipeline = 'param_remove' AND r.run_id LIKE '%{D1}T%' ORDER BY a.attempt"
        )
    ]
    assert all('"old"' in str(c) or "'old'" in str(c) for c in confs), confs

    # What `runs show` says.
    (rename_d2,) = inst.query(
        f"SELECT id FROM runs WHERE run_id LIKE 'manual%{D2}T%' AND pipeline = 'rename'"
    )[0]
    shown = inst.run("runs", "show", "rename", str(rename_d2))
    assert shown.returncode == 0, shown.stderr
    assert "task_removed" in shown.stdout and "removed" in shown.stdout
    retyped = inst.run("runs", "show", "param_retype", D3)
    logs = inst.run("logs", "param_retype", D3, "a")
    assert "the run's conf no longer matches the pipeline's params: param 'n'" in logs.stdout, (
        retyped.stdout + logs.stdout + logs.stderr
    )
