"""States and their legal transitions: the tables are complete and check_transition holds."""

from __future__ import annotations

from enum import StrEnum

import pytest

from reflow.core.errors import IllegalTransition, ReflowError
from reflow.core.states import (
    RUN_ACTIVE,
    RUN_FINISHED,
    RUN_TRANSITIONS,
    TI_FINISHED,
    TI_TRANSITIONS,
    TI_UPSTREAM_BAD,
    TI_UPSTREAM_OK,
    TRY_TRANSITIONS,
    FailureReason,
    RunState,
    TIState,
    TryState,
    check_transition,
)

TABLES: list[tuple[dict[StrEnum, frozenset[StrEnum]], type[StrEnum]]] = [
    (RUN_TRANSITIONS, RunState),  # type: ignore[list-item]
    (TI_TRANSITIONS, TIState),  # type: ignore[list-item]
    (TRY_TRANSITIONS, TryState),  # type: ignore[list-item]
]


@pytest.mark.parametrize(("table", "states"), TABLES, ids=["run", "ti", "try"])
def test_every_state_has_an_entry_in_its_table(
    table: dict[StrEnum, frozenset[StrEnum]], states: type[StrEnum]
) -> None:
    assert set(table) == set(states)


@pytest.mark.parametrize(("table", "states"), TABLES, ids=["run", "ti", "try"])
def test_every_target_is_a_state_of_the_same_kind(
    table: dict[StrEnum, frozenset[StrEnum]], states: type[StrEnum]
) -> None:
    for targets in table.values():
        assert all(isinstance(t, states) for t in targets)


@pytest.mark.parametrize(("table", "states"), TABLES, ids=["run", "ti", "try"])
def test_no_state_transitions_to_itself(
    table: dict[StrEnum, frozenset[StrEnum]], states: type[StrEnum]
) -> None:
    assert [s for s, targets in table.items() if s in targets] == []


def test_the_documented_state_values() -> None:
    assert [s.value for s in RunState] == ["queued", "running", "success", "failed", "cancelled"]
    assert [s.value for s in TIState] == [
        "pending",
        "scheduled",
        "queued",
        "running",
        "success",
        "failed",
        "up_for_retry",
        "upstream_failed",
        "skipped",
        "removed",
        "cancelled",
    ]
    assert [r.value for r in FailureReason] == [
        "error",
        "timed_out",
        "run_timed_out",
        "killed",
        "lost",
        "task_removed",
        "oom_killed",
        "evicted",
        "image_pull",
        "config_error",
        "unschedulable",
    ]


# -- legal transitions --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "target"),
    [
        (TIState.PENDING, TIState.SCHEDULED),
        (TIState.SCHEDULED, TIState.QUEUED),
        (TIState.QUEUED, TIState.RUNNING),
        (TIState.RUNNING, TIState.SUCCESS),
        (TIState.RUNNING, TIState.FAILED),
        (TIState.RUNNING, TIState.UP_FOR_RETRY),
        (TIState.UP_FOR_RETRY, TIState.SCHEDULED),
        (TIState.PENDING, TIState.UPSTREAM_FAILED),
        (TIState.RUNNING, TIState.REMOVED),
        (TIState.SUCCESS, TIState.PENDING),  # cleared
        (TIState.FAILED, TIState.SUCCESS),  # marked
    ],
)
def test_a_legal_task_instance_transition_is_accepted(source: TIState, target: TIState) -> None:
    check_transition(TI_TRANSITIONS, {source}, target)


@pytest.mark.parametrize(
    ("source", "target"),
    [
        (RunState.QUEUED, RunState.RUNNING),
        (RunState.RUNNING, RunState.SUCCESS),
        (RunState.RUNNING, RunState.FAILED),
        (RunState.QUEUED, RunState.CANCELLED),
        (RunState.SUCCESS, RunState.QUEUED),  # reprocessed: a new run attempt
        (RunState.FAILED, RunState.QUEUED),
        (RunState.CANCELLED, RunState.QUEUED),
    ],
)
def test_a_legal_run_transition_is_accepted(source: RunState, target: RunState) -> None:
    check_transition(RUN_TRANSITIONS, {source}, target)


def test_a_try_goes_queued_running_then_success_or_failed() -> None:
    check_transition(TRY_TRANSITIONS, {TryState.QUEUED}, TryState.RUNNING)
    check_transition(TRY_TRANSITIONS, {TryState.RUNNING}, TryState.SUCCESS)
    check_transition(TRY_TRANSITIONS, {TryState.RUNNING}, TryState.FAILED)


def test_several_sources_that_all_allow_the_target_are_accepted() -> None:
    check_transition(TI_TRANSITIONS, {TIState.QUEUED, TIState.RUNNING}, TIState.UP_FOR_RETRY)


def test_no_sources_is_trivially_accepted() -> None:
    check_transition(TI_TRANSITIONS, set(), TIState.RUNNING)


# -- illegal transitions ------------------------------------------------------------------


def test_a_successful_task_instance_cannot_go_back_to_running() -> None:
    with pytest.raises(IllegalTransition) as err:
        check_transition(TI_TRANSITIONS, {TIState.SUCCESS}, TIState.RUNNING)

    assert str(err.value) == "illegal transition success -> running"


@pytest.mark.parametrize(
    ("source", "target"),
    [
        (TIState.PENDING, TIState.RUNNING),  # must be scheduled and queued first
        (TIState.PENDING, TIState.QUEUED),  # a slot is taken only by a scheduled TI
        (TIState.REMOVED, TIState.RUNNING),
        (TIState.UP_FOR_RETRY, TIState.RUNNING),
        (TIState.FAILED, TIState.UP_FOR_RETRY),
    ],
)
def test_an_illegal_task_instance_transition_raises(source: TIState, target: TIState) -> None:
    with pytest.raises(IllegalTransition, match=f"^illegal transition {source} -> {target}$"):
        check_transition(TI_TRANSITIONS, {source}, target)


@pytest.mark.parametrize(
    ("source", "target"),
    [
        (RunState.SUCCESS, RunState.RUNNING),
        (RunState.FAILED, RunState.RUNNING),  # a rerun is queued first
        (RunState.CANCELLED, RunState.RUNNING),
    ],
)
def test_an_illegal_run_transition_raises(source: RunState, target: RunState) -> None:
    with pytest.raises(IllegalTransition, match=f"^illegal transition {source} -> {target}$"):
        check_transition(RUN_TRANSITIONS, {source}, target)


@pytest.mark.parametrize("source", [TryState.SUCCESS, TryState.FAILED])
@pytest.mark.parametrize("target", list(TryState))
def test_a_finished_try_never_changes_state(source: TryState, target: TryState) -> None:
    with pytest.raises(IllegalTransition):
        check_transition(TRY_TRANSITIONS, {source}, target)


def test_one_illegal_source_among_several_is_named_alone() -> None:
    with pytest.raises(IllegalTransition) as err:
        check_transition(
            TI_TRANSITIONS, {TIState.QUEUED, TIState.SUCCESS, TIState.FAILED}, TIState.RUNNING
        )

    assert str(err.value) == "illegal transition failed, success -> running"


def test_an_illegal_transition_is_a_bug_not_a_user_error() -> None:
    assert issubclass(IllegalTransition, RuntimeError)
    assert not issubclass(IllegalTransition, ReflowError)


# -- state groups -------------------------------------------------------------------------


def test_every_finished_task_instance_can_be_cleared_back_to_pending() -> None:
    for state in TI_FINISHED:
        check_transition(TI_TRANSITIONS, {state}, TIState.PENDING)


def test_every_finished_run_can_be_queued_again() -> None:
    for state in RUN_FINISHED:
        check_transition(RUN_TRANSITIONS, {state}, RunState.QUEUED)


def test_run_states_are_either_active_or_finished() -> None:
    assert set(RunState) == RUN_ACTIVE | RUN_FINISHED
    assert not RUN_ACTIVE & RUN_FINISHED


def test_upstream_results_are_either_ok_or_bad_never_both() -> None:
    assert not TI_UPSTREAM_OK & TI_UPSTREAM_BAD
    assert TI_UPSTREAM_OK | TI_UPSTREAM_BAD <= TI_FINISHED
