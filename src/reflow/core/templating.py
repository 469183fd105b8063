"""Rendering of task fields with the run context, in a sandboxed Jinja environment.

Every string anywhere in a task's configuration is a template. In shell commands each
``{{ expression }}`` is quoted for the place it lands in (bare, inside double quotes,
inside single quotes, inside ``$(...)``), so a conf value can never inject a command.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterable, Mapping
from contextvars import ContextVar
from datetime import date, datetime, timedelta
from functools import lru_cache
from typing import Any

from jinja2 import StrictUndefined, TemplateSyntaxError, UndefinedError
from jinja2.exceptions import SecurityError
from jinja2.sandbox import SandboxedEnvironment

from reflow.core.errors import TemplateError


class ShellSafe(str):
    """A string already quoted for the shell (output of the ``shell_args`` filter)."""

    __slots__ = ()


def _quote(value: Any) -> str:
    if isinstance(value, ShellSafe):
        return value
    if value is None:
        return "''"
    if isinstance(value, bool):
        value = str(value).lower()
    return shlex.quote(str(value))


def shell_args(values: Iterable[Any] | Mapping[str, Any]) -> ShellSafe:
    """Quote a list as several shell words (``{{ params.flags | shell_args }}``)."""
    if isinstance(values, str):
        values = [values]
    return ShellSafe(" ".join(_quote(v) for v in values))


def ds_add(ds: str, days: int) -> str:
    """``ds`` moved by ``days`` days, as YYYY-MM-DD."""
    return (date.fromisoformat(ds) + timedelta(days=days)).isoformat()


def ds_format(ds: str, input_format: str, output_format: str) -> str:
    return datetime.strptime(ds, input_format).strftime(output_format)


# Values interpolated into the shell command being rendered, replaced by placeholders
# until the whole command is known (their quoting depends on where they land).
_VALUES: ContextVar[list[Any]] = ContextVar("reflow_shell_values")
_MARK = "\x00"


def _placeholder(value: Any) -> str:
    values = _VALUES.get()
    values.append(value)
    return f"{_MARK}{len(values) - 1}{_MARK}"


def _environment(shell: bool) -> SandboxedEnvironment:
    env = SandboxedEnvironment(
        undefined=StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
        finalize=_placeholder if shell else None,
    )
    env.filters["shell_args"] = shell_args
    env.globals.update(ds_add=ds_add, ds_format=ds_format)
    return env


_ENVS = {True: _environment(True), False: _environment(False)}


@lru_cache(maxsize=4096)
def _compile(source: str, shell: bool) -> Any:
    return _ENVS[shell].from_string(source)


def render(source: str, context: Mapping[str, Any], *, shell: bool = False) -> str:
    """Render one template string; ``shell=True`` quotes every interpolated value."""
    if "{" not in source:  # fast path: most fields are plain strings
        return source
    token = _VALUES.set([]) if shell else None
    try:
        text = str(_compile(source, shell).render(context))
        return _quote_in_place(text, _VALUES.get(), source) if shell else text
    except UndefinedError as exc:
        raise TemplateError(f"{exc.message} in template {source!r}") from None
    except TemplateSyntaxError as exc:
        raise TemplateError(f"template syntax error in {source!r}: {exc.message}") from None
    except SecurityError as exc:
        raise TemplateError(f"unsafe template {source!r}: {exc}") from None
    except TemplateError:
        raise
    except Exception as exc:
        raise TemplateError(f"cannot render {source!r}: {exc}") from None
    finally:
        if token is not None:
            _VALUES.reset(token)


def _quote_in_place(text: str, values: list[Any], source: str) -> str:
    """Replace each placeholder in ``text`` by its value, shell-quoted. The template's
    literal text is trusted; only the values are quoted.

    A value must land in a bare word (possibly inside ``$(...)`` or backticks): inside
    quotes no quoting is right for every use (``"{{ x }}"`` may be an argument or a script
    for a nested ``sh -c``), and in a heredoc body nothing is. Those places are refused.
    """
    out: list[str] = []
    stack: list[str] = [" "]  # " " bare, '"' double, "'" single, "(" $( ), "`" backticks
    heredoc = False
    i, n = 0, len(text)
    while i < n:
        ch, top = text[i], stack[-1]
        if ch == _MARK:
            end = text.index(_MARK, i + 1)
            value = values[int(text[i + 1 : end])]
            if top in "'\"":
                raise TemplateError(
                    f"in shell command {source!r}: put {{{{ ... }}}} outside quotes; "
                    "reflow quotes each value itself"
                )
            if heredoc:
                raise TemplateError(
                    f"in shell command {source!r}: values in a heredoc cannot be quoted "
                    "safely; pass them through env instead"
                )
            out.append(_quote(value))
            i = end + 1
            continue
        out.append(ch)
        i += 1
        if top == "'":
            if ch == "'":
                stack.pop()
        elif ch == "\\" and i < n:
            out.append(text[i])
            i += 1
        elif top == '"' and ch == '"':
            stack.pop()
        elif ch == "$" and i < n and text[i] == "(":
            out.append("(")
            i += 1
            stack.append("(")
        elif ch == "`":
            if top == "`":
                stack.pop()
            else:
                stack.append("`")
        elif top == '"':
            continue
        elif ch in "'\"":
            stack.append(ch)
        elif ch == ")" and top == "(":
            stack.pop()
        elif ch == "<" and i < n and text[i] == "<":
            heredoc = True
    return "".join(out)


def render_value(value: Any, context: Mapping[str, Any]) -> Any:
    """Render every string inside ``value`` (dicts, lists, tuples, keys included)."""
    if isinstance(value, str):
        return render(value, context)
    if isinstance(value, Mapping):
        return {render_value(k, context): render_value(v, context) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(render_value(v, context) for v in value)
    return value


def check(source: str, *, shell: bool = False) -> None:
    """Raise TemplateError if ``source`` is not valid template syntax or, for a shell
    command, if a ``{{ }}`` sits where its value cannot be quoted safely."""
    try:
        _compile(source, shell)
        tokens = list(_ENVS[shell].lex(source))
    except TemplateSyntaxError as exc:
        raise TemplateError(f"template syntax error in {source!r}: {exc.message}") from None
    if not shell:
        return
    # The literal text with a placeholder where each value will land.
    parts: list[str] = []
    in_variable = False
    for _, kind, value in tokens:
        if kind == "variable_begin":
            parts.append(f"{_MARK}{0}{_MARK}")
            in_variable = True
        elif kind == "variable_end":
            in_variable = False
        elif kind == "data" and not in_variable:
            parts.append(value)
    _quote_in_place("".join(parts), [""], source)
