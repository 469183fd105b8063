"""Users and API tokens: how they are stored, and the `reflow users` / `reflow tokens`
commands."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from reflow.cli.web import register
from reflow.core.errors import Conflict, InvalidInput, NotFound
from reflow.services import accounts
from reflow.services.project import Project


@pytest.fixture
def project(tmp_path: Path) -> Project:
    return Project.open(tmp_path)


@pytest.fixture
def cli(tmp_path: Path):  # type: ignore[no-untyped-def]
    app = typer.Typer()
    register(app)
    runner = CliRunner()

    def run(*args: str, input: str | None = None):  # type: ignore[no-untyped-def]
        return runner.invoke(app, [*args, "--home", str(tmp_path)], input=input)

    return run


def test_passwords_are_kept_as_scrypt_hashes_with_a_salt_per_user(project: Project) -> None:
    accounts.create_user(project, "alice", "same password")
    accounts.create_user(project, "bob", "same password")
    alice, bob = accounts.list_users(project)
    assert alice.password_hash.startswith("scrypt$16384$8$1$")
    assert alice.password_hash != bob.password_hash  # different salts
    assert "same password" not in alice.password_hash
    assert accounts.check_password("same password", alice.password_hash)
    assert not accounts.check_password("same passwordx", alice.password_hash)
    assert not accounts.check_password("same password", alice.password_hash[:-2] + "00")
    assert not accounts.check_password("same password", "garbage")
    assert accounts.authenticate_user(project, "alice", "same password") is not None
    assert accounts.authenticate_user(project, "alice", "nope nope") is None
    assert accounts.authenticate_user(project, "carol", "same password") is None
    assert accounts.list_users(project)[0].last_login_at is not None
    with pytest.raises(Conflict):
        accounts.create_user(project, "alice", "another one")
    with pytest.raises(InvalidInput, match="at least 8"):
        accounts.create_user(project, "dave", "short")
    with pytest.raises(InvalidInput, match="bad user name"):
        accounts.create_user(project, "no spaces allowed", "long enough")


def test_tokens_are_random_shown_once_stored_hashed_and_revocable(project: Project) -> None:
    first = accounts.create_token(project, "ci")
    assert first.startswith("rfl_") and len(first) > 40
    assert accounts.create_token(project, "other") != first
    (ci, _) = accounts.list_tokens(project)
    assert ci.token_hash == accounts.hash_token(first) and ci.prefix == first[:8]
    assert accounts.authenticate_token(project, first) is not None
    assert accounts.authenticate_token(project, first + "x") is None
    with pytest.raises(Conflict):
        accounts.create_token(project, "ci")
    accounts.revoke_token(project, "ci")
    assert accounts.authenticate_token(project, first) is None
    with pytest.raises(NotFound):
        accounts.revoke_token(project, "ci")
    assert accounts.create_token(project, "ci") != first  # the name is free again
    assert len(accounts.list_tokens(project, include_revoked=True)) == 3


def test_a_user_tokens_go_with_the_user(project: Project) -> None:
    accounts.create_user(project, "alice", "long enough")
    token = accounts.create_token(project, "alice-laptop", user="alice")
    assert accounts.authenticate_token(project, token) is not None
    with pytest.raises(NotFound):
        accounts.create_token(project, "x", user="nobody")
    assert accounts.delete_user(project, "alice") == 1
    assert accounts.authenticate_token(project, token) is None
    assert not accounts.has_credentials(project)


def test_users_and_tokens_commands(cli, project: Project) -> None:  # type: ignore[no-untyped-def]
    created = cli("users", "create", "alice", "--password-stdin", input="long enough pw\n")
    assert created.exit_code == 0, created.output
    assert "User alice created" in created.output
    assert "alice" in cli("users", "list").output
    again = cli("users", "create", "alice", "--password-stdin", input="long enough pw\n")
    assert isinstance(again.exception, Conflict)
    changed = cli("users", "password", "alice", "--password-stdin", input="another password\n")
    assert changed.exit_code == 0 and accounts.authenticate_user(
        project, "alice", "another password"
    )

    made = cli("tokens", "create", "ci", "--expires-days", "30")
    assert made.exit_code == 0, made.output
    token = made.stdout.strip().splitlines()[-1]
    assert token.startswith("rfl_") and accounts.authenticate_token(project, token)
    listing = cli("tokens", "list").output
    assert "ci" in listing and token[:8] in listing and token not in listing
    assert cli("tokens", "revoke", "ci").exit_code == 0
    assert "No tokens." in cli("tokens", "list").output
    assert "ci" in cli("tokens", "list", "--all").output
    assert isinstance(cli("tokens", "revoke", "ci").exception, NotFound)
    assert cli("users", "delete", "alice").exit_code == 0
    assert "No users." in cli("users", "list").output
