"""Shared checks of the command line's error output."""

from __future__ import annotations


def assert_one_error_line(capsys, prefix: str, expected: str) -> None:
    """stderr holds one line, no traceback: ``prefix`` then a message containing ``expected``."""
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith(prefix), err
    assert expected in err, err
