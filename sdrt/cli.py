"""The ``sdrt`` command line: a thin layer from arguments to config dataclasses to API calls.

Each subcommand lives in ``sdrt/commands/<name>.py`` with ``add_arguments(parser)`` and
``run(args) -> int``; those modules import heavy libraries (torch, diffusers) only inside
``run``, so ``sdrt generate`` works with only the runtime installed. Errors a user can act
on (``SdrtError``) print as one line and exit with code 2, never as a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from sdrt import __version__
from sdrt.errors import SdrtError

# subcommand name -> module under sdrt.commands
COMMANDS = {
    "init-model": "init_model",
    "build": "build",
    "info": "info",
    "generate": "generate",
    "engines": "engines",
    "bench": "bench",
}

EXIT_USAGE = 2


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
            if e.name != f"sdrt.commands.{module_name}":
                raise
            continue  # command not part of this build
        command = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(command)
        command.set_defaults(handler=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except SdrtError as e:
        print(f"sdrt {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"sdrt {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
