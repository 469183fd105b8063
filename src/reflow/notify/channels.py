"""Sending one message to one channel: a generic webhook, Slack, or e-mail over SMTP.

URLs, secrets and passwords are read from the environment variables that ``reflow.toml``
names, when the message is sent: they are never stored in the database nor shown.
:func:`send` returns what the peer answered or raises :class:`DeliveryError` saying why
the attempt failed; the notifier decides whether to try again.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import smtplib
import ssl
import threading
import time
from email.message import EmailMessage
from typing import Any

from reflow.core.config import EmailChannel, NotifyChannel, SlackChannel, WebhookChannel
from reflow.notify.messages import Message

SIGNATURE_HEADER = "X-Reflow-Signature"
TIMESTAMP_HEADER = "X-Reflow-Timestamp"
_USER_AGENT = "reflow-notifier"
# What a message may carry of its context: the rest (log paths) stays inside.
_PRIVATE = frozenset({"log_path", "url", "log_tail"})


class DeliveryError(Exception):
    """An attempt failed; the message says how (an HTTP status, an SMTP reply, a refusal)."""


def send(channel: NotifyChannel, message: Message, delivery: int) -> str:
    """Deliver ``message`` (notification number ``delivery``) through ``channel``."""
    if isinstance(channel, WebhookChannel):
        return _webhook(channel, message, delivery)
    if isinstance(channel, SlackChannel):
        return _slack(channel, message)
    return _email(channel, message, delivery)


def signature(secret: str, timestamp: str, body: bytes) -> str:
    """``sha256=<hex>``: HMAC-SHA256 of ``<timestamp>.<body>`` with the channel's secret.
    A receiver recomputes it, compares in constant time and rejects old timestamps."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def webhook_body(message: Message, delivery: int) -> dict[str, Any]:
    return {
        "delivery": delivery,
        "event": message.event,
        "title": message.title,
        "text": message.text,
        "url": message.url,
        "log_tail": message.log_tail,
        "context": {k: v for k, v in message.context.items() if k not in _PRIVATE},
    }


def slack_body(message: Message) -> dict[str, Any]:
    """A Block Kit message: a header, the text, the log tail, the facts, a link."""
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": message.title[:150]}},
        {"type": "section", "text": {"type": "mrkdwn", "text": _slack_escape(message.text)[:3000]}},
    ]
    if message.log_tail:
        tail = message.log_tail[-2900:]
        blocks.append(
            {"type": "section", "text": {"type": "mrkdwn", "text": f"```{_slack_escape(tail)}```"}}
        )
    facts = [
        f"*{label}:* {_slack_escape(str(message.context[key]))}"
        for label, key in (("pipeline", "pipeline"), ("date", "date"), ("task", "task"))
        if message.context.get(key)
    ]
    if facts:
        context = {"type": "mrkdwn", "text": " · ".join(facts)}
        blocks.append({"type": "context", "elements": [context]})
    if message.url:
        blocks.append(
            {
                "type": "actions",
                "elements": [
                    {
                        "type": "button",
                        "text": {"type": "plain_text", "text": "Open in reflow"},
                        "url": message.url,
                    }
                ],
            }
        )
    return {"text": message.title, "blocks": blocks}


def email_message(channel: EmailChannel, message: Message, delivery: int) -> EmailMessage:
    mail = EmailMessage()
    mail["Subject"] = f"[reflow] {message.title}"
    mail["From"] = channel.sender
    mail["To"] = ", ".join(channel.to)
    mail["X-Reflow-Event"] = message.event
    mail["X-Reflow-Delivery"] = str(delivery)
    parts = [message.text]
    if message.url:
        parts.append(message.url)
    if message.log_tail:
        parts.append("Last lines of the log:\n\n" + message.log_tail)
    mail.set_content("\n\n".join(parts) + "\n")
    return mail


# -- the channels -----------------------------------------------------------------------------
def _webhook(channel: WebhookChannel, message: Message, delivery: int) -> str:
    body = json.dumps(webhook_body(message, delivery), default=str).encode()
    timestamp = str(int(time.time()))
    headers = {
        **channel.headers,
        "Content-Type": "application/json",
        "X-Reflow-Event": message.event,
        "X-Reflow-Delivery": str(delivery),
        TIMESTAMP_HEADER: timestamp,
    }
    if channel.secret_env:
        headers[SIGNATURE_HEADER] = signature(_env(channel.secret_env), timestamp, body)
    return _post(_url(channel), body, headers, channel.timeout)


def _slack(channel: SlackChannel, message: Message) -> str:
    body = json.dumps(slack_body(message)).encode()
    return _post(_url(channel), body, {"Content-Type": "application/json"}, channel.timeout)


def _email(channel: EmailChannel, message: Message, delivery: int) -> str:
    mail = email_message(channel, message, delivery)
    context = ssl.create_default_context(cafile=str(channel.ca_file) if channel.ca_file else None)
    try:
        smtp: smtplib.SMTP
        if channel.security == "ssl":
            smtp = smtplib.SMTP_SSL(
                channel.host, channel.port, timeout=channel.timeout, context=context
            )
        else:
            smtp = smtplib.SMTP(channel.host, channel.port, timeout=channel.timeout)
        with smtp:
            smtp.ehlo()
            if channel.security == "starttls":
                smtp.starttls(context=context)
                smtp.ehlo()
            if channel.username_env:
                password = _env(channel.password_env) if channel.password_env else ""
                smtp.login(_env(channel.username_env), password)
            refused = smtp.send_message(mail)
    except (smtplib.SMTPException, OSError, ssl.SSLError) as exc:
        raise DeliveryError(f"SMTP {channel.host}:{channel.port}: {_one_line(exc)}") from None
    if refused:
        raise DeliveryError(f"SMTP refused {', '.join(sorted(refused))}")
    return f"SMTP {channel.host}:{channel.port} accepted for {len(channel.to)} recipient(s)"


def _post(url: str, body: bytes, headers: dict[str, str], timeout: float) -> str:
    import httpx  # only the notifier sends: the CLI starts without it

    try:
        response = _client().post(
            url,
            content=body,
            headers={"User-Agent": _USER_AGENT, **headers},
            timeout=timeout,
            follow_redirects=False,
        )
    except httpx.HTTPError as exc:
        raise DeliveryError(f"{type(exc).__name__}: {_one_line(exc)}") from None
    answer = f"HTTP {response.status_code}"
    if not 200 <= response.status_code < 300:
        text = _one_line(response.text)[:200]
        raise DeliveryError(f"{answer}: {text}" if text else answer)
    return answer


_local = threading.local()


def _client() -> Any:
    """One HTTP client per thread (the notifier's): its connections and TLS context are
    made once, not for every message."""
    client = getattr(_local, "client", None)
    if client is None:
        import httpx

        client = _local.client = httpx.Client()
    return client


def _url(channel: WebhookChannel | SlackChannel) -> str:
    if channel.url_env:
        return _env(channel.url_env)
    assert channel.url is not None  # one of url and url_env (config validation)
    return channel.url


def _env(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        raise DeliveryError(f"environment variable {name} is not set")
    return value


def _slack_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _one_line(value: object) -> str:
    return " ".join(str(value).split())
