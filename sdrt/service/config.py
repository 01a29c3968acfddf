"""What a deployer sets: where to listen, how much to queue, and the limits on requests."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Limits:
    """The most a request may ask for; safe defaults for a public endpoint."""

    max_pixels: int = 1024 * 1024  # width * height of one image
    max_n: int = 4  # images per request
    max_steps: int = 100  # num_inference_steps
    max_prompt_chars: int = 2000  # prompt and negative_prompt, each
    max_body_bytes: int = 1024 * 1024  # a JSON body
    max_upload_bytes: int = 8 * 1024 * 1024  # one uploaded image (multipart part)
    max_upload_pixels: int = 4096 * 4096  # an uploaded image's decoded size


@dataclass(frozen=True)
class ServeConfig:
    folder: Path
    host: str = "127.0.0.1"
    port: int = 8000
    backend: str = "auto"
    workers: int = 1  # threads running the pipeline (measured best on 2 cores: README)
    # Images per batched call of concurrent compatible requests; 1: each alone (README:
    # measured no better on 2 cores). Capped at the folder's --max-batch.
    max_batch: int = 1
    batch_wait_ms: float = 0.0  # how long a worker waits for more requests to batch
    max_queue: int = 8  # requests waiting for a busy worker (0: none); more are answered 429
    timeout: float | None = None  # seconds from arrival; then 504 and the work is cancelled
    api_key: str | None = None  # bearer token required on /v1/* when set
    grace: float = 30.0  # seconds SIGTERM waits for queued and in-flight work
    warmup: bool = True  # one tiny generation at load, so the first image is fast
    replicas: int = 0  # 0: one process (uvicorn); N >= 1: N Ray Serve replicas
    # Name the replica (host name and pid, or Ray's tag) in /readyz and a response header:
    # off by default, as it tells any client about the deployment.
    expose_replica: bool = False
    limits: Limits = field(default_factory=Limits)
