"""``sdrt serve FOLDER``: the OpenAI-style images API over HTTP (the ``serve`` extra).

Listens on 127.0.0.1:8000 by default. ``--replicas N`` runs N Ray Serve replicas (the
``ray`` extra) behind Ray's HTTP proxy instead of one uvicorn process. The service itself
is sdrt/service/; this module only turns arguments into a ServeConfig.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from sdrt.backends.registry import BACKENDS
from sdrt.errors import InputError

HELP = "Serve a model folder over HTTP: OpenAI-style /v1/images/generations and /edits."
API_KEY_VARIABLE = "SDRT_API_KEY"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("folder", type=Path, help="model folder written by `sdrt build`")
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)"
    )
    parser.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    parser.add_argument("--backend", default="auto", help=f"{', '.join(BACKENDS)} (default: auto)")
    _add_admission_arguments(parser)
    _add_limit_arguments(parser)


def _add_admission_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="threads running generations (default: 1, measured best on 2 cores)",
    )
    parser.add_argument(
        "--max-batch",
        type=int,
        default=1,
        metavar="N",
        help="run concurrent compatible text-to-image requests as one call of up to N images, "
        "capped at the folder's --max-batch (default: 1, each alone: measured no faster here)",
    )
    parser.add_argument(
        "--batch-wait-ms",
        type=float,
        default=0.0,
        metavar="MS",
        help="how long a worker waits for more requests to batch (default: 0, only those "
        "already queued)",
    )
    parser.add_argument(
        "--max-queue",
        type=int,
        default=8,
        metavar="N",
        help="generations that may wait for a busy worker; more get 429 (0: accept only "
        "while a worker is free; default: 8)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=None,
        metavar="S",
        help="seconds a request may take from arrival; then 504 and its work stops (default: none)",
    )
    key = parser.add_mutually_exclusive_group()
    key.add_argument(
        "--api-key",
        default=None,
        metavar="KEY",
        help="require 'Authorization: Bearer KEY' on /v1/* (shows in the process list: "
        f"prefer --api-key-file or ${API_KEY_VARIABLE}; default: ${API_KEY_VARIABLE}, else none)",
    )
    key.add_argument(
        "--api-key-file",
        type=Path,
        default=None,
        metavar="PATH",
        help="read the API key from a file (its first line)",
    )
    parser.add_argument(
        "--expose-replica-id",
        action="store_true",
        help="name the replica (host name and process id, or Ray's replica tag) in /readyz "
        "and an x-sdrt-replica header on every answer (default: off, it tells clients "
        "about the deployment)",
    )
    parser.add_argument(
        "--grace",
        type=float,
        default=30.0,
        metavar="S",
        help="on SIGTERM, seconds to finish queued and in-flight work (default: 30)",
    )
    parser.add_argument(
        "--no-warmup",
        action="store_true",
        help="skip the warm-up generation at load (/readyz is then ready sooner, the first image slower)",
    )
    parser.add_argument(
        "--replicas",
        type=int,
        default=0,
        metavar="N",
        help="run N Ray Serve replicas behind Ray's HTTP proxy (needs the 'ray' extra; default: 0, one process)",
    )


def _add_limit_arguments(parser: argparse.ArgumentParser) -> None:
    from sdrt.service.config import Limits

    defaults = Limits()
    for name, help_text in (
        ("max_pixels", "pixels (width x height) of one image"),
        ("max_n", "images per request (n)"),
        ("max_steps", "num_inference_steps"),
        ("max_prompt_chars", "characters of prompt and negative_prompt"),
        ("max_body_bytes", "bytes of a JSON body"),
        ("max_upload_bytes", "bytes of one uploaded image"),
        ("max_upload_pixels", "pixels of one uploaded image"),
    ):
        parser.add_argument(
            "--" + name.replace("_", "-"),
            type=int,
            default=getattr(defaults, name),
            metavar="N",
            help=f"limit: {help_text} (default: {getattr(defaults, name)})",
        )


def config_from_args(args: argparse.Namespace):
    from sdrt.service.config import Limits, ServeConfig
    from sdrt.service.listen import check_port

    check_port(args.port)
    for option, value, minimum in (
        ("--workers", args.workers, 1),
        ("--max-batch", args.max_batch, 1),
        ("--max-queue", args.max_queue, 0),
        ("--replicas", args.replicas, 0),
    ):
        if value < minimum:
            raise InputError(f"{option}: expected an integer >= {minimum}, got {value}")
    if not args.batch_wait_ms >= 0:
        raise InputError(f"--batch-wait-ms: expected milliseconds >= 0, got {args.batch_wait_ms}")
    for option, value in (("--timeout", args.timeout), ("--grace", args.grace)):
        if value is not None and not value > 0:
            raise InputError(f"{option}: expected a number of seconds > 0, got {value}")
    limits = Limits(**{name: getattr(args, name) for name in Limits.__dataclass_fields__})
    for name, value in vars(args).items():
        if name in Limits.__dataclass_fields__ and value < 1:
            raise InputError(f"--{name.replace('_', '-')}: expected an integer >= 1, got {value}")
    return ServeConfig(
        folder=args.folder,
        host=args.host,
        port=args.port,
        backend=args.backend,
        workers=args.workers,
        max_batch=args.max_batch,
        batch_wait_ms=args.batch_wait_ms,
        max_queue=args.max_queue,
        timeout=args.timeout,
        api_key=api_key(args),
        grace=args.grace,
        warmup=not args.no_warmup,
        replicas=args.replicas,
        expose_replica=args.expose_replica_id,
        limits=limits,
    )


def api_key(args: argparse.Namespace) -> str | None:
    """The key from --api-key, --api-key-file or $SDRT_API_KEY (in that order); None when
    none is given. An empty one is an error, never "no authentication": `--api-key "$KEY"`
    with KEY unset must not start an open server."""
    if args.api_key is not None:
        source, key = "--api-key", args.api_key
    elif args.api_key_file is not None:
        source, key = "--api-key-file", _read_key_file(args.api_key_file)
    elif API_KEY_VARIABLE in os.environ:
        source, key = f"${API_KEY_VARIABLE}", os.environ[API_KEY_VARIABLE]
    else:
        return None
    key = key.strip()
    if not key:
        raise InputError(
            f"{source}: expected a non-empty API key, got an empty one (is the variable or "
            "file it comes from set?)"
        )
    return key


def _read_key_file(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(
            f"--api-key-file: expected a readable UTF-8 text file, got {str(path)!r} "
            f"({getattr(e, 'strerror', None) or e})"
        ) from None
    lines = text.splitlines()
    return lines[0] if lines else ""


def run(args: argparse.Namespace) -> int:
    import fastapi  # noqa: F401  (the 'serve' extra, named before the model loads)
    import uvicorn  # noqa: F401

    from sdrt.manifest import read_manifest
    from sdrt.service.listen import address, bind, exposure_warning

    config = config_from_args(args)
    read_manifest(config.folder)  # a folder that is not a model folder fails now, exit 2
    # Host and port are checked by binding them, before anything loads (exit 2 on failure).
    sock = bind(config.host, config.port)
    warning = exposure_warning(sock.getsockname()[0], config.api_key)
    if warning is not None:
        print(f"sdrt serve: {warning}", file=sys.stderr)
    if config.replicas:
        from sdrt.service.ray_app import serve_replicas

        sock.close()  # Ray's proxy binds the port itself
        return serve_replicas(config)
    from sdrt.service.server import serve

    print(f"sdrt serve: listening on {address(sock)}", file=sys.stderr, flush=True)
    return serve(config, sock=sock)
