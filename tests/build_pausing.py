"""``sdrt build ARGS`` in its own process, paused mid-build until the test lets it go on.

It pauses once its partial folder holds the pipeline files (right after
``_copy_pipeline_files``), holding the output's lock: it writes ``$SDRT_TEST_PAUSED`` and
waits until ``$SDRT_TEST_GO`` exists. The test then starts a rival build, or kills it, or
lets it finish.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from sdrt.export import build as build_module

from sdrt import cli

WAIT_S = 300

copy_pipeline_files = build_module._copy_pipeline_files


def paused(*args, **kwargs):
    copy_pipeline_files(*args, **kwargs)
    Path(os.environ["SDRT_TEST_PAUSED"]).write_text(f"{os.getpid()}\n")
    go, deadline = Path(os.environ["SDRT_TEST_GO"]), time.monotonic() + WAIT_S
    while not go.exists():
        if time.monotonic() > deadline:
            raise SystemExit(f"build_pausing: {go} did not appear within {WAIT_S} s")
        time.sleep(0.02)


build_module._copy_pipeline_files = paused
sys.exit(cli.main(["build", *sys.argv[1:]]))
