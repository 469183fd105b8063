"""A real S3-protocol server on loopback for the tests of shipped logs: moto in server mode
(its HTTP server in a thread of the test process) on 127.0.0.1 and a free port, with a
bucket made through the same client reflow uses (s3fs). Nothing leaves the machine."""

from __future__ import annotations

import logging
import socket
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class S3Server:
    """moto's S3 on 127.0.0.1:<port>; :meth:`stop` then :meth:`start` again keeps what it
    holds (moto's state lives in the test process)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        # moto's state is the process's: a bucket of each test's own.
        self.bucket = f"logs-{uuid.uuid4().hex[:12]}"
        self._server: Any = None

    def start(self) -> None:
        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per request
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self._server.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None

    @property
    def options(self) -> dict[str, Any]:
        """``logs_storage_options`` for this server: its endpoint, and failures that come
        at once (one attempt, short timeouts) rather than after botocore's retries."""
        return {
            "endpoint_url": self.endpoint,
            "config_kwargs": {
                "retries": {"max_attempts": 1},
                "connect_timeout": 2,
                "read_timeout": 10,
            },
        }

    def filesystem(self) -> Any:
        """An s3fs client of this server, caching nothing (each look is fresh)."""
        import s3fs

        return s3fs.S3FileSystem(**self.options, use_listings_cache=False, skip_instance_cache=True)

    def read(self, key: str) -> bytes | None:
        """The object ``key`` of the bucket, or None."""
        fs = self.filesystem()
        try:
            data: bytes = fs.cat_file(f"{self.bucket}/{key}")
        except FileNotFoundError:
            return None
        return data

    def objects(self) -> list[str]:
        """The keys of the bucket."""
        fs = self.filesystem()
        return sorted(str(p).removeprefix(self.bucket + "/") for p in fs.find(self.bucket))


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[S3Server]:
    """An S3 server with an empty bucket of the test's own; dummy credentials in the
    environment."""
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    server = S3Server()
    server.start()
    try:
        server.filesystem().mkdir(server.bucket)
        yield server
    finally:
        server.stop()
