"""The REST API over a real project and database (SQLite and PostgreSQL), with the real
scheduler running the runs it creates."""

from __future__ import annotations

import threading

from sqlalchemy import select

from reflow.services import accounts
from reflow.store.models import api_tokens, runs

from .conftest import Api, Env, TestClient, eventually, make_app


def _trigger(api: Api, dates: list[str], conf: dict | None = None) -> list[int]:
    out = api.post("/pipelines/daily/runs", {"dates": dates, "conf": conf or {}}, status=201)
    return [r["id"] for r in out["runs"]]


def _count_runs(env: Env) -> int:
    with env.db.read() as conn:
        return len(conn.execute(select(runs.c.id)).all())


def test_pipelines_are_listed_with_their_structure_params_schema_and_import_errors(
    api: Api,
) -> None:
    api.env.write("broken", "def broken(:\n")
    # Files are re-read in the background: the broken one shows up without a restart.
    eventually(lambda: bool(api.get("/pipelines")["import_errors"]), timeout=10)
    listing = api.get("/pipelines")
    (daily,) = listing["pipelines"]
    assert daily["name"] == "daily" and daily["schedule"] == "@daily" and daily["tasks"] == 3
    assert daily["next_logical_date"] is not None
    (problem,) = listing["import_errors"]
    assert problem["path"].endswith("broken.py") and "SyntaxError" in problem["message"]
    assert api.get("/import-errors") == listing["import_errors"]

    shown = api.get("/pipelines/daily")
    assert shown["order"] == ["a", "b", "c"]
    rows = shown["params"]["rows"]
    assert (rows["type"], rows["default"], rows["description"]) == ("int", 10, "rows expected")
    # Secrets: the secret param's default, env entries that look secret or read a secret.
    assert shown["params"]["api_key"]["default"] == "***"
    env_a = shown["tasks"]["a"]["env"]
    assert env_a["DB_PASSWORD"] == "***" and env_a["KEY_COPY"] == "***"
    assert env_a["DAY"] == "{{ ds }}"
    assert "default-key-0000" not in str(shown) and "hunter2-literal" not in str(shown)

    schema = api.get("/pipelines/daily/params")
    assert schema["properties"]["mode"]["enum"] == ["normal", "full"]
    assert schema["properties"]["rows"]["minimum"] == 0
    assert schema["properties"]["api_key"]["default"] == "***"
    assert schema["additionalProperties"] is False


def test_a_triggered_run_is_driven_to_success_and_its_tries_and_logs_are_served_masked(
    api: Api,
) -> None:
    secret = "s3cr3t-value-42"
    created = api.post(
        "/pipelines/daily/runs",
        {"dates": ["2024-01-02"], "conf": {"mode": "full", "api_key": secret}},
        status=201,
    )
    (run,) = created["runs"]
    assert run["state"] == "queued" and run["conf"]["api_key"] == "***"
    assert run["conf"]["mode"] == "full" and run["conf"]["rows"] == 10
    api.drive([run["id"]])

    detail = api.get(f"/pipelines/daily/runs/{run['id']}")
    assert detail["run"]["state"] == "success"
    assert [t["task_id"] for t in detail["task_instances"]] == ["a", "b", "c"]
    assert {t["state"] for t in detail["task_instances"]} == {"success"}
    assert [t["task_id"] for t in detail["tries"]] == ["a", "b", "c"]
    assert all(t["exit_code"] == 0 and t["duration"] is not None for t in detail["tries"])
    assert detail["attempts"][0]["conf"]["api_key"] == "***"
    assert secret not in str(detail)
    # The same run by its run id and by its logical date.
    assert api.get(f"/pipelines/daily/runs/{run['run_id']}")["run"]["id"] == run["id"]

    ti = api.get(f"/pipelines/daily/runs/{run['id']}/tasks/a")
    assert ti["task_instance"]["state"] == "success" and len(ti["tries"]) == 1
    assert ti["tries"][0]["conf"] == {
        "mode": "full",
        "fail": False,
        "rows": 10,
        "api_key": "***",
    }

    log = api.get(f"/pipelines/daily/runs/{run['id']}/tasks/a/log")
    assert "mode full key ***" in log["data"] and secret not in log["data"]
    assert log["complete"] is True and log["next_offset"] == log["size"] > 0
    # Tailing: from an offset, the rest; past the end, nothing.
    rest = api.get(f"/pipelines/daily/runs/{run['id']}/tasks/a/log", params={"offset": 5})
    assert rest["offset"] == 5 and rest["next_offset"] == log["size"]
    end = api.get(
        f"/pipelines/daily/runs/{run['id']}/tasks/a/log", params={"offset": log["size"] + 100}
    )
    assert end["data"] == "" and end["complete"] is True
    # A literal secret env value (DB_PASSWORD) printed by a task is masked too.
    log_c = api.get(f"/pipelines/daily/runs/{run['id']}/tasks/c/log", params={"try": 1})
    assert "done with ***" in log_c["data"] and "hunter2-literal" not in log_c["data"]


def test_a_running_try_log_is_tailed_line_by_line_until_complete(api: Api) -> None:
    api.write(
        "slow",
        """
        from reflow import Pipeline, Shell
        with Pipeline("slow", schedule="@daily", start_date="2024-01-01"):
            Shell("t", "for i in 1 2 3 4 5 6; do echo line $i; sleep 0.25; done")
        """,
    )
    (run_id,) = [
        r["id"]
        for r in api.post("/pipelines/slow/runs", {"dates": ["2024-01-01"]}, status=201)["runs"]
    ]
    done = threading.Event()
    driver = threading.Thread(
        target=lambda: (api.env.drive(api.env.runs_done([run_id]), timeout=60), done.set())
    )
    driver.start()
    try:
        path = f"/pipelines/slow/runs/{run_id}/tasks/t/log"
        text, offset, partial = "", 0, False

        def read() -> bool:
            nonlocal text, offset, partial
            response = api.client.get("/api/v1" + path, headers=api.auth, params={"offset": offset})
            if response.status_code == 404:  # not started yet
                return False
            chunk = response.json()
            assert chunk["offset"] == offset
            assert chunk["data"] == "" or chunk["data"].endswith("\n")
            text += chunk["data"]
            offset = chunk["next_offset"]
            if not chunk["complete"] and chunk["data"]:
                partial = True
            return bool(chunk["complete"])

        eventually(read, timeout=30)
    finally:
        driver.join(timeout=60)
    assert done.is_set()
    assert partial, "the log was never read while the try was running"
    output = [line for line in text.splitlines() if not line.startswith("[reflow] ")]
    assert output[-6:] == [f"line {i}" for i in range(1, 7)]
    # Complete means reflow's closing line too.
    assert text.splitlines()[-1].endswith(" ended: success, exit code 0")


def test_runs_are_listed_by_state_and_date_range(api: Api) -> None:
    ok = _trigger(api, ["2024-01-01", "2024-01-02", "2024-01-03"])
    failed = _trigger(api, ["2024-01-04"], {"fail": True})
    api.drive(ok + failed)
    everything = api.get("/runs", params={"pipeline": "daily"})["runs"]
    assert [r["logical_date"][:10] for r in everything] == [
        "2024-01-04",
        "2024-01-03",
        "2024-01-02",
        "2024-01-01",
    ]
    assert [r["id"] for r in api.get("/runs", params={"state": "failed"})["runs"]] == failed
    ranged = api.get(
        "/runs", params={"pipeline": "daily", "start": "2024-01-02", "end": "2024-01-03"}
    )
    assert sorted(r["id"] for r in ranged["runs"]) == ok[1:]
    mixed = api.get("/runs", params={"state": "success", "start": "2024-01-03"})["runs"]
    assert [r["id"] for r in mixed] == [ok[2]]
    assert len(api.get("/runs", params={"limit": 2})["runs"]) == 2


def test_the_grid_pages_through_runs_newest_first(api: Api) -> None:
    api.drive(_trigger(api, ["2024-01-01", "2024-01-02"]))
    _trigger(api, ["2024-01-03", "2024-01-04", "2024-01-05"])
    page = api.get("/pipelines/daily/grid", params={"limit": 2})
    assert [r["label"] for r in page["runs"]] == ["2024-01-04", "2024-01-05"]
    assert page["tasks"] == ["a", "b", "c"]
    assert page["states"] == [["pending", "pending"]] * 3
    assert page["older"] == 2 and page["newer"] is None
    older = api.get("/pipelines/daily/grid", params={"limit": 2, "offset": 2})
    assert [r["label"] for r in older["runs"]] == ["2024-01-02", "2024-01-03"]
    assert older["newer"] == 0 and older["older"] == 4
    oldest = api.get("/pipelines/daily/grid", params={"limit": 2, "offset": 4})
    assert [r["label"] for r in oldest["runs"]] == ["2024-01-01"]
    assert oldest["states"] == [["success"]] * 3 and oldest["older"] is None
    ranged = api.get("/pipelines/daily/grid", params={"start": "2024-01-02", "end": "2024-01-04"})
    assert [r["label"] for r in ranged["runs"]] == ["2024-01-02", "2024-01-03", "2024-01-04"]
    durations = api.get("/pipelines/daily/durations", params={"limit": 10})
    assert durations["tasks"] == ["a", "b", "c"] and len(durations["runs"]) == 5
    assert durations["durations"][0][0] is not None and durations["durations"][0][4] is None


def test_bad_requests_are_4xx_with_one_clear_line_and_write_nothing(api: Api) -> None:
    def error(method: str, path: str, status: int, body: object = None, **kw: object) -> str:
        call = api.client.get if method == "GET" else api.client.post
        extra = {"json": body} if method == "POST" and body is not None else {}
        response = call("/api/v1" + path, headers=api.auth, **extra, **kw)  # type: ignore[arg-type]
        assert response.status_code == status, response.text
        detail = response.json()["detail"]
        assert isinstance(detail, str) and "\n" not in detail and detail
        return detail

    before = _count_runs(api.env)
    assert "rows" in error("POST", "/pipelines/daily/runs", 422, {"conf": {"rows": -1}})
    assert "unknown param" in error("POST", "/pipelines/daily/runs", 422, {"conf": {"nope": 1}})
    assert "mode" in error("POST", "/pipelines/daily/runs", 422, {"conf": {"mode": "x"}})
    assert "bad date" in error("POST", "/pipelines/daily/runs", 422, {"dates": ["not-a-date"]})
    assert "out of range" in error("POST", "/pipelines/daily/runs", 422, {"dates": ["9999-12-31"]})
    assert "unknown pipeline" in error("POST", "/pipelines/nope/runs", 404, {})
    assert "unknown pipeline" in error("GET", "/pipelines/nope", 404)
    assert "conf" in error("POST", "/pipelines/daily/runs", 422, {"conf": [1, 2]})
    raw = api.client.post(
        "/api/v1/pipelines/daily/runs",
        content=b"{not json",
        headers={**api.auth, "Content-Type": "application/json"},
    )
    assert raw.status_code == 422 and "JSON" in raw.json()["detail"]
    assert "limit" in error("GET", "/runs", 422, params={"limit": 0})
    assert "unknown run state" in error("GET", "/runs", 422, params={"state": "bogus"})
    assert "no run" in error("GET", "/pipelines/daily/runs/999", 404)
    assert "no run" in error("GET", "/pipelines/daily/runs/99999999999999999999", 404)
    assert "no backfill" in error("GET", "/backfills/12345", 404)
    assert "before" in error(
        "POST", "/pipelines/daily/backfills/plan", 422, {"start": "2024-02-01", "end": "2024-01-01"}
    )
    assert "reprocess" in error(
        "POST",
        "/pipelines/daily/backfills",
        422,
        {"start": "2024-01-01", "end": "2024-01-02", "reprocess": "sometimes"},
    )
    assert "state" in error("POST", "/pipelines/daily/mark", 422, {"run": "1", "state": "odd"})
    assert "give --run" in error("POST", "/pipelines/daily/clear", 422, {})
    backwards = {"start": "2024-02-01", "end": "2024-01-01"}
    for path in ("/runs", "/pipelines/daily/grid"):
        assert error("GET", path, 422, params=backwards) == (
            "end 2024-01-01 is before start 2024-02-01"
        )
    assert "out of range" in error("GET", "/runs", 422, params={"start": "1066-10-14"})
    assert "out of range" in error(
        "GET", "/pipelines/daily/durations", 422, params={"end": "9999-12-31"}
    )
    # The pipeline is looked up before the dates are.
    assert "unknown pipeline" in error(
        "GET", "/pipelines/nope/grid", 404, params={"start": "9999-12-31"}
    )
    assert "unknown run state" in error(
        "GET", "/runs", 422, params={"state": "bogus", "start": "9999-12-31"}
    )
    assert _count_runs(api.env) == before == 0


def test_a_backfill_is_planned_created_steered_and_run_to_success(api: Api) -> None:
    body = {"start": "2024-01-01", "end": "2024-01-04", "conf": {"rows": 5}, "max_active_runs": 2}
    plan = api.post("/pipelines/daily/backfills/plan", body)
    assert plan["counts"] == {"create": 4, "reset": 0, "skip": 0}
    assert [d["action"] for d in plan["dates"]] == ["create"] * 4
    assert plan["resolved"]["rows"] == 5 and plan["resolved"]["api_key"] == "***"
    assert plan["estimate"] is None  # no run finished yet to learn from
    assert _count_runs(api.env) == 0  # a dry run writes nothing

    created = api.post("/pipelines/daily/backfills", body, status=201)
    backfill_id = created["backfill"]["id"]
    assert created["backfill"]["state"] == "running" and created["backfill"]["total"] == 4
    assert [b["id"] for b in api.get("/backfills")["backfills"]] == [backfill_id]
    assert api.get("/backfills", params={"pipeline": "daily"})["backfills"][0]["planned"] == {
        "create": 4,
        "reset": 0,
        "skip": 0,
    }
    assert api.post(f"/backfills/{backfill_id}/pause")["backfill"]["state"] == "paused"
    assert (
        "paused"
        in api.client.post(f"/api/v1/backfills/{backfill_id}/pause", headers=api.auth).json()[
            "detail"
        ]
    )
    assert api.post(f"/backfills/{backfill_id}/resume")["backfill"]["state"] == "running"
    api.drive([r["id"] for r in created["runs"]])
    eventually(lambda: api.get(f"/backfills/{backfill_id}")["backfill"]["state"] == "success")
    shown = api.get(f"/backfills/{backfill_id}")
    assert shown["backfill"]["done"] == 4 and shown["backfill"]["runs"] == {"success": 4}
    assert {r["conf"]["rows"] for r in shown["runs"]} == {5}

    # Reprocessing everything with a new conf: the plan shows resets and the conf change.
    again = {"start": "2024-01-03", "end": "2024-01-05", "conf": {"rows": 7}, "reprocess": "all"}
    plan = api.post("/pipelines/daily/backfills/plan", again)
    assert [d["action"] for d in plan["dates"]] == ["reset", "reset", "create"]
    assert plan["dates"][0]["conf_diff"] == {"rows": [5, 7]}
    assert plan["dates"][0]["existing"] == "success"
    assert plan["estimate"]["sample"] == 4 and plan["estimate"]["seconds"] > 0
    second = api.post("/pipelines/daily/backfills", again, status=201)["backfill"]["id"]
    cancelled = api.post(f"/backfills/{second}/cancel")
    assert cancelled["backfill"]["state"] == "cancelled" and cancelled["cancelled_runs"] == 3
    assert (
        "cancelled"
        in api.client.post(f"/api/v1/backfills/{second}/cancel", headers=api.auth).json()["detail"]
    )
    # Nothing left to do: a clear 422, nothing written.
    missing = {"start": "2024-01-01", "end": "2024-01-02"}
    response = api.client.post("/api/v1/pipelines/daily/backfills", json=missing, headers=api.auth)
    assert response.status_code == 422 and "nothing to backfill" in response.json()["detail"]


def test_history_is_cleared_marked_and_deleted_through_the_api(api: Api) -> None:
    (run_id,) = _trigger(api, ["2024-01-01"])
    api.drive([run_id])
    cleared = api.post(
        "/pipelines/daily/clear", {"run": str(run_id), "tasks": ["b"], "downstream": True}
    )
    assert cleared == {"runs": 1, "task_instances": 2, "left_running": []}
    detail = api.get(f"/pipelines/daily/runs/{run_id}")
    assert detail["run"]["state"] == "queued" and detail["run"]["attempt"] == 2
    assert {t["task_id"]: t["state"] for t in detail["task_instances"]} == {
        "a": "success",
        "b": "pending",
        "c": "pending",
    }
    api.drive([run_id])
    tries = api.get(f"/pipelines/daily/runs/{run_id}/tasks/b")["tries"]
    assert [(t["try_number"], t["run_attempt"]) for t in tries] == [(1, 1), (2, 2)]
    second_log = api.get(f"/pipelines/daily/runs/{run_id}/tasks/b/log", params={"try": 2})
    assert second_log["try_number"] == 2 and "rows 10" in second_log["data"]

    marked = api.post("/pipelines/daily/mark", {"run": "2024-01-01", "state": "failed"})
    assert marked["state"] == "failed" and marked["id"] == run_id
    other = _trigger(api, ["2024-01-02"])
    conflict = api.client.post(
        "/api/v1/pipelines/daily/delete", json={"run": str(other[0])}, headers=api.auth
    )
    assert conflict.status_code == 409 and "--force" in conflict.json()["detail"]
    deleted = api.post(
        "/pipelines/daily/delete", {"start": "2024-01-01", "end": "2024-01-02", "force": True}
    )
    assert (deleted["runs"], deleted["tries"], deleted["logs"]) == (2, 5, 5)
    api.get(f"/pipelines/daily/runs/{run_id}", status=404)


def test_the_api_needs_a_live_token_or_a_session_with_its_csrf_token(api: Api) -> None:
    client = api.client
    refused = client.get("/api/v1/pipelines")
    assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer"
    assert "authentication required" in refused.json()["detail"]
    assert (
        client.get("/api/v1/pipelines", headers={"Authorization": "Bearer rfl_nope"}).status_code
        == 401
    )
    assert (
        client.get("/api/v1/pipelines", headers={"Authorization": "Basic abc"}).status_code == 401
    )
    assert api.get("/me") == {"kind": "token", "name": "tests"}

    # Only the token's sha256 is stored.
    with api.env.db.read() as conn:
        (row,) = conn.execute(select(api_tokens)).all()
    assert row.token_hash == accounts.hash_token(api.token) and api.token not in str(tuple(row))
    assert row.last_used_at is not None

    # A revoked token is refused at once; an expired one too.
    accounts.revoke_token(api.env.project, "tests")
    assert client.get("/api/v1/pipelines", headers=api.auth).status_code == 401
    expiring = accounts.create_token(api.env.project, "short", expires_days=1e-9)
    assert (
        client.get("/api/v1/pipelines", headers={"Authorization": f"Bearer {expiring}"}).status_code
        == 401
    )

    # A browser session works for the API; its changes need the CSRF token.
    accounts.create_user(api.env.project, "alice", "correct horse")
    login = client.get("/login")
    from .conftest import csrf_of

    csrf = csrf_of(login.text)
    response = client.post(
        "/login",
        data={"username": "alice", "password": "correct horse", "csrf_token": csrf},
        follow_redirects=False,
    )
    assert response.status_code == 303
    assert client.get("/api/v1/me").json() == {"kind": "user", "name": "alice"}
    page = client.get("/")
    csrf = csrf_of(page.text)
    no_csrf = client.post("/api/v1/pipelines/daily/runs", json={"dates": ["2024-01-01"]})
    assert no_csrf.status_code == 403 and "CSRF" in no_csrf.json()["detail"]
    ok = client.post(
        "/api/v1/pipelines/daily/runs",
        json={"dates": ["2024-01-01"]},
        headers={"X-CSRF-Token": csrf},
    )
    assert ok.status_code == 201
    # Deleting the user ends the session.
    accounts.delete_user(api.env.project, "alice")
    assert client.get("/api/v1/me").status_code == 401


def test_without_auth_only_same_site_changes_are_accepted(env: Env) -> None:
    from .conftest import write_daily

    write_daily(env)
    with TestClient(make_app(env, auth=False)) as client:
        assert client.get("/api/v1/me").json() == {"kind": "anonymous", "name": ""}
        cross = client.post(
            "/api/v1/pipelines/daily/runs",
            json={"dates": ["2024-01-01"]},
            headers={"Origin": "https://evil.example"},
        )
        assert cross.status_code == 403
        same = client.post("/api/v1/pipelines/daily/runs", json={"dates": ["2024-01-01"]})
        assert same.status_code == 201


def test_a_pipeline_whose_file_is_gone_keeps_its_history_readable(api: Api) -> None:
    (run_id,) = _trigger(api, ["2024-01-01"])
    api.drive([run_id])
    (api.env.settings.pipelines_path / "daily.py").unlink()
    api.client.app.state.projects.refresh()  # type: ignore[attr-defined]
    shown = api.get("/pipelines/daily")
    assert shown["active"] is False and shown["order"] == ["a", "b", "c"]
    assert shown["params"]["api_key"]["default"] == "***"
    assert api.get("/pipelines")["pipelines"][0]["active"] is False
    grid = api.get("/pipelines/daily/grid")
    assert grid["states"] == [["success"]] * 3
    assert api.get(f"/pipelines/daily/runs/{run_id}")["run"]["state"] == "success"
    response = api.client.post(
        "/api/v1/pipelines/daily/runs", json={"dates": ["2024-01-02"]}, headers=api.auth
    )
    assert response.status_code == 404


def _backfill_one_day(api: Api, conf: dict) -> list[int]:
    body = {"start": "2024-01-02", "end": "2024-01-02", "conf": conf, "reprocess": "all"}
    created = api.post("/pipelines/daily/backfills", body, status=201)
    detail = api.get(f"/backfills/{created['backfill']['id']}")
    return [r["id"] for r in detail["runs"]]


def test_the_log_of_an_earlier_try_masks_the_secret_its_attempt_ran_with(api: Api) -> None:
    first, second = "first-secret-1111", "second-secret-2222"
    (run_id,) = _backfill_one_day(api, {"api_key": first})
    api.drive([run_id])
    assert _backfill_one_day(api, {"api_key": second}) == [run_id]  # attempt 2, new conf
    api.drive([run_id])
    path = f"/pipelines/daily/runs/{run_id}/tasks/a/log"
    for number in (1, 2):
        log = api.get(path, params={"try": number})
        assert log["complete"] and "key ***" in log["data"]
        assert first not in log["data"] and second not in log["data"]


def test_a_secret_cut_by_the_read_limit_is_masked_in_both_pieces(api: Api) -> None:
    secret = "s3cr3t-split-by-limit"
    (run_id,) = _trigger(api, ["2024-01-02"], {"api_key": secret})
    api.drive([run_id])
    path = f"/pipelines/daily/runs/{run_id}/tasks/a/log"
    whole = api.get(path)["data"]
    # A read limit that ends inside the secret in the file (the task's output: reflow's
    # opening lines hold it masked already).
    cut = whole.rindex("***") + 2
    text, offset, reads = "", 0, 0
    while True:
        piece = api.get(path, params={"offset": offset, "limit": cut if not reads else 5})
        text, offset, reads = text + piece["data"], piece["next_offset"], reads + 1
        if piece["complete"]:
            break
        assert reads < 200
    assert text == whole and secret[:4] not in text
    # Reading from an offset inside the secret shows none of its rest either.
    inside = api.get(path, params={"offset": whole.rindex("***") + 5})
    assert inside["data"].startswith("***\n") and secret[5:] not in inside["data"]


def test_a_pipeline_is_paused_and_unpaused_through_the_api_with_its_history(api: Api) -> None:
    paused = api.post("/pipelines/daily/pause", {"reason": "warehouse maintenance"})
    assert paused == {
        "pipeline": "daily",
        "paused": True,
        "changed": True,
        "running": 0,
        "queued": 0,
    }
    assert api.post("/pipelines/daily/pause")["changed"] is False
    assert api.get("/pipelines")["pipelines"][0]["paused"] is True
    assert api.get("/pipelines/daily")["paused"] is True
    (run_id,) = _trigger(api, ["2024-01-01"])
    assert api.post("/pipelines/daily/unpause")["queued"] == 1
    api.drive([run_id])
    history = api.get("/pipelines/daily/history")
    assert [(h["action"], h["actor"], h["detail"]) for h in history] == [
        ("paused", "token tests (api)", "warehouse maintenance"),
        ("unpaused", "token tests (api)", None),
    ]
    missing = api.client.post("/api/v1/pipelines/nope/pause", headers=api.auth)
    assert missing.status_code == 404 and "unknown pipeline 'nope'" in missing.json()["detail"]
    too_long = api.client.post(
        "/api/v1/pipelines/daily/pause", json={"reason": "x" * 1001}, headers=api.auth
    )
    assert too_long.status_code == 422
    assert api.get("/pipelines/daily")["paused"] is False


def test_pools_are_listed_set_and_reset_through_the_api(api: Api) -> None:
    api.write(
        "pooled",
        """
from reflow import Pipeline, Shell
with Pipeline("pooled", schedule="@daily", start_date="2024-01-01"):
    Shell("load", "true", pool="warehouse", pool_slots=2)
""",
    )
    (undefined,) = api.get("/pools")
    assert undefined["name"] == "warehouse" and undefined["origin"] == "undefined"
    assert undefined["slots"] == 0 and undefined["tasks"] == ["pooled.load"]
    changed = api.post("/pools/warehouse", {"slots": 4})
    assert (changed["slots"], changed["origin"], changed["updated_by"]) == (
        4,
        "set",
        "token tests (api)",
    )
    assert (
        api.client.post("/api/v1/pools/warehouse", json={"slots": -1}, headers=api.auth).status_code
        == 422
    )
    assert api.post("/pools/warehouse/reset")["origin"] == "undefined"
    # A pool set at run time that nothing else names is forgotten by its reset.
    assert api.post("/pools/adhoc", {"slots": 2})["origin"] == "set"
    forgotten = api.post("/pools/adhoc/reset")
    assert (forgotten["name"], forgotten["slots"], forgotten["origin"]) == ("adhoc", 0, "undefined")
    missing = api.client.post("/api/v1/pools/nope/reset", headers=api.auth)
    assert missing.status_code == 404 and "no pool 'nope'" in missing.json()["detail"]
