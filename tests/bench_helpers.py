"""Shared setup of the benchmark harness tests."""

from __future__ import annotations


class SilentProgress:
    """The harness's progress reporter, saying nothing (the tests read its results)."""

    def status(self, message: str) -> None:
        pass

    def start_runs(self, total: int) -> None:
        pass

    def advance(self, description: str) -> None:
        pass
