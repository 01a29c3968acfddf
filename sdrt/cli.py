"""The ``sdrt`` command line: a thin layer from arguments to config dataclasses to API calls.

Each subcommand lives in ``sdrt/commands/<name>.py`` with ``add_arguments(parser)`` and
``run(args) -> int``; those modules import heavy libraries (torch, diffusers) only inside
``run``, so ``sdrt generate`` works with only the runtime installed.

No traceback reaches a user; every failure is one line on stderr and an exit code:

- 2: an error the user can act on (``SdrtError``, a bad argument, or a library from an
  extra that is not installed: the line names the extra to install);
- 1: an internal error (a bug, or a library failing in a way sdrt did not foresee);
  ``SDRT_DEBUG=1`` prints its traceback too;
- 130: interrupted (Ctrl-C);
- 141: stdout or stderr was a pipe whose reader went away (``sdrt info X | head``). This is
  128 + SIGPIPE, what the shell reports for ``cat`` or ``grep`` stopped the same way, so
  ``set -o pipefail`` scripts see what they would see with any other tool: the output was
  cut short (0 would claim it was all written, 1 would claim a bug).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

from sdrt import __version__
from sdrt.errors import ParameterError, SdrtError, SdrtWarning

# subcommand name -> module under sdrt.commands
COMMANDS = {
    "init-model": "init_model",
    "build": "build",
    "adopt": "adopt",
    "info": "info",
    "generate": "generate",
    "interpolate": "interpolate",
    "control": "control",
    "engines": "engines",
    "bench": "bench",
    "serve": "serve",
    "loadtest": "loadtest",
}

EXIT_INTERNAL = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 128 + 13  # SIGPIPE

# Top-level module -> the extras of pyproject.toml's [project.optional-dependencies] that
# install it (tests/test_cli_errors.py keeps this in step with pyproject.toml).
EXTRA_MODULES = {
    "torch": ("export",),
    "diffusers": ("export",),
    "transformers": ("export",),
    "accelerate": ("export",),
    "safetensors": ("export",),
    "peft": ("export",),  # diffusers' LoRA loading (sdrt build --lora)
    "tomesd": ("export",),  # the ToMe reference (sdrt build --tome-ratio)
    "onnx": ("export", "gpu"),
    "onnx_graphsurgeon": ("export",),
    "polygraphy": ("export", "gpu"),
    "tensorrt": ("gpu",),
    "cupy": ("gpu",),
    "matplotlib": ("bench",),
    "psutil": ("bench",),
    "rich": ("bench",),
    "imageio_ffmpeg": ("video",),
    "cv2": ("control",),  # OpenCV: sdrt control canny
    "fastapi": ("serve",),
    "uvicorn": ("serve",),
    "prometheus_client": ("serve",),
    "python_multipart": ("serve",),
    "ray": ("ray",),
    "openvino": ("openvino", "nncf"),
    "nncf": ("nncf",),
}
# The Python API's parameter names -> the arguments of the commands that set them, so that
# an error from the shared checks (sdrt.errors.ParameterError, from sdrt/request.py and
# sdrt/interpolation.py) names what the user typed: `--steps`, not num_inference_steps.
_CALL_ARGUMENTS = {
    "prompt": "PROMPT",
    "negative_prompt": "--negative-prompt",
    "num_inference_steps": "--steps",
    "guidance_scale": "--guidance",
    "height": "--height",
    "width": "--width",
    "scheduler": "--scheduler",
    "image": "--image",
    "strength": "--strength",
    "eta": "--eta",
}
PARAMETER_ARGUMENTS = {
    "generate": {
        **_CALL_ARGUMENTS,
        "mask_image": "--mask",
        "num_images_per_prompt": "--batch",
        "seed": "--seed",
        "deep_cache_interval": "--deep-cache-interval",
        "deep_cache_branch": "--deep-cache-branch",
        "vae": "--vae",
        # ControlNet (sdrt/control/): all four come from --control
        "control_image": "--control",
        "controlnet_conditioning_scale": "--control",
        "control_guidance_start": "--control",
        "control_guidance_end": "--control",
        # T2I-Adapter (sdrt/control/adapter.py): all three come from --adapter-image
        "adapter_image": "--adapter-image",
        "adapter_conditioning_scale": "--adapter-image",
        "adapter_conditioning_factor": "--adapter-image",
    },
    # sdrt build: export/build_config.py's BuildConfig fields
    "build": {
        "precision": "--precision",
        "vae_precision": "--vae-precision",
        "min_size": "--min-size",
        "max_size": "--max-size",
        "opt_size": "--opt-size",
        "max_batch": "--max-batch",
        "opset": "--opset",
    },
    "adopt": {"min_size": "--min-size", "max_size": "--max-size", "max_batch": "--max-batch"},
    # sdrt control canny: sdrt/control/canny.py's parameters
    "control": {"image": "IMAGE", "low_threshold": "--low", "high_threshold": "--high"},
    "interpolate": {
        **_CALL_ARGUMENTS,
        "prompts": "PROMPT",
        "seeds": "--seeds",
        "num_frames": "--frames",
        "batch_size": "--frames-per-call",
        "method": "--method",
    },
}
# Where a module is in several extras, the one a command needs (others: the first listed).
COMMAND_EXTRAS = {"engines": "gpu"}
# The runtime's own dependencies (pyproject.toml's [project] dependencies).
CORE_MODULES = ("numpy", "onnxruntime", "tokenizers", "PIL", "tqdm")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sdrt", description="Optimized Stable Diffusion inference runtime."
    )
    parser.add_argument("--version", action="version", version=f"sdrt {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, module_name in COMMANDS.items():
        try:
            module = importlib.import_module(f"sdrt.commands.{module_name}")
        except ModuleNotFoundError as e:
            if e.name == f"sdrt.commands.{module_name}":
                continue  # command not part of this build
            # It needs a library that is not installed: the other commands still work, and
            # this one says what to install when it is run.
            command = sub.add_parser(name, help=f"(unavailable: {e})")
            command.set_defaults(unavailable=e)
            continue
        command = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(command)
        # The subcommand's own parser, so that a mistyped option prints its usage.
        command.set_defaults(handler=module.run, command_parser=command)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        code = _run(argv)
    except SystemExit as e:  # argparse's --help, --version and usage errors
        if not _flush_stdout() and not e.code:
            raise SystemExit(EXIT_BROKEN_PIPE) from None
        raise
    if not _flush_stdout():
        return code or EXIT_BROKEN_PIPE
    return code


def _flush_stdout() -> bool:
    """Flush stdout now, so that a closed pipe shows here rather than at interpreter exit
    (as "Exception ignored" and exit code 120); False where it was closed."""
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        _silence(sys.stdout)
        return False
    return True


def _run(argv: list[str] | None) -> int:
    command, prog = "", "sdrt"  # the prefix of every message
    try:
        parser = build_parser()
        args, unknown = parser.parse_known_args(argv)
        command, prog = args.command, f"sdrt {args.command}"
        if getattr(args, "unavailable", None):  # its arguments are unknown: say why first
            raise args.unavailable
        if unknown:  # what parse_args says, with the subcommand's usage line
            args.command_parser.error(f"unrecognized arguments: {' '.join(unknown)}")
        with _one_line_warnings(prog):
            return int(args.handler(args) or 0)
    except BrokenPipeError as e:
        if not _stdio_broken():
            return _internal_error(prog, e)
        _silence(sys.stdout)
        return EXIT_BROKEN_PIPE
    except SdrtError as e:
        _debug_traceback()
        return _error(prog, f"error: {_spelled(e, command)}", EXIT_USAGE)
    except KeyboardInterrupt:
        return _error(prog, "interrupted", EXIT_INTERRUPTED)
    except ModuleNotFoundError as e:
        message = missing_module_message(e, command)
        if message is None:
            return _internal_error(prog, e)
        _debug_traceback()
        return _error(prog, f"error: {message}", EXIT_USAGE)
    except Exception as e:
        return _internal_error(prog, e)


def _spelled(error: SdrtError, command: str) -> str:
    """The error's message, with parameters named as ``command``'s arguments."""
    if isinstance(error, ParameterError):
        return error.spelled(PARAMETER_ARGUMENTS.get(command, {}))
    return str(error)


@contextmanager
def _one_line_warnings(prog: str) -> Iterator[None]:
    """sdrt's own warnings (SdrtWarning) as one ``PROG: warning: ...`` line each, rather
    than Python's two lines naming a source file; other libraries' warnings as Python
    shows them."""
    show = warnings.showwarning

    def one_line(message, category, filename, lineno, file=None, line=None):
        if not issubclass(category, SdrtWarning):
            show(message, category, filename, lineno, file, line)
            return
        text = " ".join(str(message).split())
        print(f"{prog}: warning: {text}", file=file or sys.stderr)

    with warnings.catch_warnings():
        warnings.showwarning = one_line
        yield


def missing_module_message(error: ModuleNotFoundError, command: str = "") -> str | None:
    """What to install for a missing module, or None where it is not a dependency of sdrt."""
    top = (error.name or "").partition(".")[0]
    if top in EXTRA_MODULES:
        extras = EXTRA_MODULES[top]
        preferred = COMMAND_EXTRAS.get(command)
        extra = preferred if preferred in extras else extras[0]
        return f"needs the {extra!r} extra (pip install 'sdrt[{extra}]'): {error}"
    if top in CORE_MODULES:
        return f"a dependency of sdrt is missing (reinstall sdrt): {error}"
    return None


def _debugging() -> bool:
    return os.environ.get("SDRT_DEBUG", "") not in ("", "0")


def _debug_traceback() -> None:
    if _debugging():
        traceback.print_exc()


def _internal_error(prog: str, error: BaseException) -> int:
    kind = type(error).__qualname__
    if type(error).__module__ != "builtins":
        kind = f"{type(error).__module__}.{kind}"
    message = " ".join(str(error).split())  # one line, whatever the library wrote
    if _debugging():
        traceback.print_exc()
        hint = ""
    else:
        hint = " (run with SDRT_DEBUG=1 for the traceback)"
    return _error(prog, f"internal error: {kind}: {message}{hint}", EXIT_INTERNAL)


def _error(prog: str, message: str, code: int) -> int:
    try:
        print(f"{prog}: {message}", file=sys.stderr)
    except BrokenPipeError:  # stderr is a closed pipe: nowhere left to say it
        _silence(sys.stderr)
    return code


def _stdio_broken() -> bool:
    """Whether stdout or stderr is a pipe whose reader has gone (so the error was ours to
    ignore), rather than some other pipe or socket a command wrote to."""
    try:
        import select

        poll = select.poll()
    except (ImportError, AttributeError):  # no poll (Windows): assume it was stdout
        return True
    polled = False
    for stream in (sys.stdout, sys.stderr):
        try:
            fd = stream.fileno()
        except (AttributeError, OSError, ValueError):  # replaced by a test, or closed
            continue
        poll.register(fd, select.POLLOUT)
        polled = True
    if not polled:
        return True
    return any(events & (select.POLLERR | select.POLLHUP) for _, events in poll.poll(0))


def _silence(stream) -> None:
    """Point a broken stdout or stderr at devnull, so that flushing it at exit raises nothing
    (https://docs.python.org/3/library/signal.html#note-on-sigpipe)."""
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):  # replaced by a test, or closed
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)


if __name__ == "__main__":
    sys.exit(main())
