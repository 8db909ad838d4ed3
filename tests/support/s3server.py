"""A real S3-compatible server on the loopback interface, and a proxy in front of it that injects faults.

The server is moto's standalone server (``moto[server]``) in a child process: it speaks the S3 protocol over HTTP
to the real clients (s3fs, obstore, boto3), so nothing in the process under test is mocked. The suite starts it
once (the session fixture ``s3_server`` in tests/conftest.py) and stops it at the end; each test takes a bucket of
its own (``s3_server.bucket()``), so tests do not see each other's objects.

``FaultProxy`` forwards HTTP requests to the server and, for the requests a test asks for, answers 503 SlowDown,
stalls, or resets the connection instead: the client's retries are exercised over a real socket. It also logs every
request (method, path, Range, status, bytes returned), which is how the tests count what a resume downloaded.
"""

from __future__ import annotations

import contextlib
import http.client
import http.server
import os
import socket
import socketserver
import struct
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

REGION = "us-east-1"
ACCESS_KEY = "testing"
SECRET_KEY = "testing"
START_TIMEOUT_S = 30.0


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (free when asked: the server binds it right after)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_until_up(url: str, process: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"moto's server exited with {process.returncode} before answering on {url}")
        with contextlib.suppress(OSError):
            urllib.request.urlopen(url + "/moto-api/", timeout=1).close()
            return
        time.sleep(0.05)
    raise RuntimeError(f"moto's server did not answer on {url} within {timeout:.0f} s")


@dataclass
class S3Server:
    """moto's standalone S3 server on 127.0.0.1, in a child process; credentials are moto's test ones."""

    endpoint_url: str
    process: subprocess.Popen[bytes] | None = None
    _buckets: list[str] = field(default_factory=list)

    @classmethod
    def start(cls) -> S3Server:
        port = free_port()
        endpoint = f"http://127.0.0.1:{port}"
        process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={**os.environ, **_credentials()},
        )
        try:
            _wait_until_up(endpoint, process, START_TIMEOUT_S)
        except BaseException:
            process.kill()
            process.wait()
            raise
        return cls(endpoint, process)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def env(self, endpoint_url: str | None = None) -> dict[str, str]:
        """The environment a child process (or the standard clients' defaults) needs to reach the server."""
        return {**_credentials(), "AWS_ENDPOINT_URL": endpoint_url or self.endpoint_url}

    def storage_options(self, endpoint_url: str | None = None) -> dict[str, object]:
        """fsspec/s3fs ``storage_options`` for the server (or for a proxy in front of it)."""
        return {
            "key": ACCESS_KEY,
            "secret": SECRET_KEY,
            "endpoint_url": endpoint_url or self.endpoint_url,
            "client_kwargs": {"region_name": REGION},
        }

    def client(self, endpoint_url: str | None = None, *, retries: int | None = None):  # noqa: ANN201 (generated)
        """A boto3 S3 client for setting up and inspecting test data (not the code under test's client);
        ``retries=1`` gives one attempt only (to see an injected fault)."""
        import boto3
        from botocore.config import Config

        config = None if retries is None else Config(retries={"total_max_attempts": retries, "mode": "standard"})
        return boto3.client(
            "s3",
            endpoint_url=endpoint_url or self.endpoint_url,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            region_name=REGION,
            config=config,
        )

    def bucket(self, prefix: str = "data") -> str:
        """A new, empty bucket with a unique name (so tests never see each other's objects)."""
        name = f"{prefix}-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        self._buckets.append(name)
        return name

    def upload_dir(self, directory: Path, bucket: str, prefix: str = "") -> list[str]:
        """Upload every file of ``directory`` (not recursive) under ``s3://bucket/prefix``; returns the URLs."""
        client = self.client()
        urls = []
        for path in sorted(p for p in Path(directory).iterdir() if p.is_file()):
            key = f"{prefix.rstrip('/')}/{path.name}" if prefix else path.name
            client.upload_file(str(path), bucket, key)
            urls.append(f"s3://{bucket}/{key}")
        return urls


def _credentials() -> dict[str, str]:
    return {
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "AWS_DEFAULT_REGION": REGION,
        "AWS_REGION": REGION,
    }


@contextlib.contextmanager
def running_server() -> Iterator[S3Server]:
    server = S3Server.start()
    try:
        yield server
    finally:
        server.stop()


# --- the fault-injecting proxy ---------------------------------------------------------------------------------

#: A fault: "503" answers 503 SlowDown; "500" answers 500 InternalError; "stall" waits ``stall_s`` before
#: forwarding; "reset" closes the connection with a TCP reset before answering.
FAULTS = ("503", "500", "stall", "reset")


@dataclass(frozen=True)
class Logged:
    """One request the proxy saw."""

    method: str
    path: str
    range: str | None
    status: int
    body_bytes: int
    fault: str | None


@dataclass
class _Injection:
    fault: str
    remaining: int
    match: Callable[[str, str], bool]


_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection"}


class FaultProxy:
    """An HTTP proxy on 127.0.0.1 in front of ``upstream`` (the S3 server) that injects bounded faults.

    ``inject("503", times=2, match=lambda method, path: method == "GET")`` makes the next two matching requests
    fail; requests are logged in ``log`` (thread-safe list of :class:`Logged`).
    """

    def __init__(self, upstream: str, *, stall_s: float = 2.0) -> None:
        self.upstream = upstream.removeprefix("http://")
        self.stall_s = stall_s
        self.log: list[Logged] = []
        self._injections: list[_Injection] = []
        self._lock = threading.Lock()
        proxy = self

        class Handler(_ForwardingHandler):
            owner = proxy

        self._server = _ThreadingServer(("127.0.0.1", 0), Handler)
        self.endpoint_url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="fault-proxy", daemon=True)
        self._thread.start()

    def inject(self, fault: str, *, times: int = 1, match: Callable[[str, str], bool] | None = None) -> None:
        if fault not in FAULTS:
            raise ValueError(f"fault {fault!r}: expected one of {FAULTS}")
        with self._lock:
            self._injections.append(_Injection(fault, times, match or (lambda method, path: True)))

    def clear(self) -> None:
        with self._lock:
            self._injections.clear()
            self.log.clear()

    def requests(self, method: str | None = None) -> list[Logged]:
        with self._lock:
            return [entry for entry in self.log if method is None or entry.method == method]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _take_fault(self, method: str, path: str) -> str | None:
        with self._lock:
            for injection in self._injections:
                if injection.remaining > 0 and injection.match(method, path):
                    injection.remaining -= 1
                    return injection.fault
        return None

    def _record(self, entry: Logged) -> None:
        with self._lock:
            self.log.append(entry)


class _ThreadingServer(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class _ForwardingHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    owner: FaultProxy

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
        pass  # the proxy's own log is FaultProxy.log

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _handle(self) -> None:
        try:
            self._exchange()
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client gave up (a stall past its timeout): nothing to answer

    def _exchange(self) -> None:
        body = self._body()
        fault = self.owner._take_fault(self.command, self.path)
        if fault == "reset":
            self.owner._record(Logged(self.command, self.path, self.headers.get("Range"), 0, 0, fault))
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close_connection = True
            self.connection.close()
            return
        if fault in ("503", "500"):
            self._answer_error(fault)
            return
        if fault == "stall":
            time.sleep(self.owner.stall_s)
        self._forward(body, fault)

    def _answer_error(self, fault: str) -> None:
        code, name = (503, "SlowDown") if fault == "503" else (500, "InternalError")
        payload = (
            f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{name}</Code>'
            f"<Message>injected by the test proxy</Message></Error>"
        ).encode()
        # Logged before answering: a test reads the log as soon as its client has the answer.
        self.owner._record(Logged(self.command, self.path, self.headers.get("Range"), code, 0, fault))
        self.send_response(code)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":  # an answer to HEAD has no body: one would corrupt the next answer
            self.wfile.write(payload)

    def _forward(self, body: bytes, fault: str | None) -> None:
        upstream = http.client.HTTPConnection(self.owner.upstream, timeout=60)
        try:
            upstream.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
            for name, value in self.headers.items():
                if name.lower() not in _HOP_BY_HOP and name.lower() != "content-length":
                    upstream.putheader(name, value)
            if body or self.command in ("PUT", "POST"):
                upstream.putheader("Content-Length", str(len(body)))
            upstream.endheaders(body or None)
            response = upstream.getresponse()
            data = response.read()
        finally:
            upstream.close()
        self.owner._record(
            Logged(self.command, self.path, self.headers.get("Range"), response.status, len(data), fault)
        )
        self.send_response_only(response.status, response.reason)
        for name, value in response.getheaders():
            if name.lower() not in _HOP_BY_HOP and name.lower() != "content-length":
                self.send_header(name, value)
        if self.command != "HEAD":
            self.send_header("Content-Length", str(len(data)))
        else:
            self.send_header("Content-Length", response.getheader("Content-Length") or "0")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle  # noqa: N815 - BaseHTTPRequestHandler's names
