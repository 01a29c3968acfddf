"""Helpers for the service tests: a real uvicorn server on a free 127.0.0.1 port (in a
thread, or as an `sdrt serve` process), and a small loopback HTTP client (http.client)."""

from __future__ import annotations

import base64
import http.client
import io
import json
import re
import socket
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass

import numpy as np
from PIL import Image

HOST = "127.0.0.1"  # every test talks to loopback only


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


@dataclass
class Reply:
    status: int
    headers: dict
    body: bytes

    def json(self):
        return json.loads(self.body)


def call(port, method, path, body=None, headers=None, timeout=60.0) -> Reply:
    connection = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        headers = dict(headers or {})
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
            headers.setdefault("Content-Type", "application/json")
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        return Reply(
            response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
        )
    finally:
        connection.close()


def generate(port, body, headers=None, timeout=60.0) -> Reply:
    return call(port, "POST", "/v1/images/generations", body, headers, timeout)


def multipart(fields: dict, files: dict) -> tuple[bytes, str]:
    """(body, content type) of a multipart/form-data request; a list value repeats its
    field."""
    boundary = uuid.uuid4().hex
    parts = []
    for name, value in _repeated(fields):
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
        )
    for name, data in _repeated(files):
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{name}.png"'
            "\r\nContent-Type: image/png\r\n\r\n"
        )
        parts.append(head.encode() + data + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def _repeated(items: dict):
    for name, value in items.items():
        for one in value if isinstance(value, list) else [value]:
            yield name, one


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def decode_png(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB"))


def read_events(response) -> list[tuple[str, dict]]:
    """Server-sent events of a streaming response, as (event name, data)."""
    events, name = [], None
    for raw in response:
        line = raw.decode().rstrip("\r\n")
        if line.startswith("event: "):
            name = line[len("event: ") :]
        elif line.startswith("data: "):
            events.append((name, json.loads(line[len("data: ") :])))
    return events


def metric(port, name: str, labels: str = "") -> float:
    """One sample of /metrics (0 where it is not there yet)."""
    text = call(port, "GET", "/metrics").body.decode()
    pattern = re.escape(name) + (r"\{" + re.escape(labels) + r"\}" if labels else "") + r" (\S+)"
    match = re.search(r"^" + pattern + r"$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def wait_for(predicate, timeout: float, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"not true within {timeout} s")


class ThreadServer:
    """uvicorn serving create_app(state) in a thread, on a free loopback port."""

    def __init__(self, state):
        import uvicorn

        from sdrt.service.app import create_app

        self.state = state
        self.port = free_port()
        config = uvicorn.Config(create_app(state), host=HOST, port=self.port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        wait_for(lambda: self.server.started, timeout=30)
        return self

    def wait_ready(self, timeout=60.0):
        wait_for(lambda: call(self.port, "GET", "/readyz").status == 200, timeout)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(timeout=30)


def start_process(folder, *args) -> tuple[subprocess.Popen, int]:
    """`sdrt serve FOLDER` as its own process on a free loopback port."""
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "sdrt",
            "serve",
            str(folder),
            "--host",
            HOST,
            "--port",
            str(port),
            *args,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    return process, port
