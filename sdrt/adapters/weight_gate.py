"""A readers-writer gate over weights that are changed in place (a TensorRT refit).

ONNX Runtime takes a LoRA as feeds, so each call carries its own adapters. A refitted engine
has one set of weights for everyone, so a call holds the gate shared from its first step to
its last (it keeps the adapters it started with), and a LoRA switch holds it alone: it waits
for the calls in flight to finish, and calls that start meanwhile wait for the switch (a
waiting switch goes first, so a busy service cannot starve it).

A thread already inside a call may enter again (a walk's frames, a prompt embedding asked for
from a callback), but may not switch adapters: that would wait for itself.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from sdrt.errors import InputError


class WeightGate:
    def __init__(self):
        self._condition = threading.Condition()
        self._readers = 0
        self._writing = False
        self._writers_waiting = 0
        self._held = threading.local()  # this thread's shared entries

    def _depth(self) -> int:
        return getattr(self._held, "depth", 0)

    @contextmanager
    def shared(self) -> Iterator[None]:
        """Held by a call for as long as it uses the weights."""
        depth = self._depth()
        with self._condition:
            if depth == 0:  # a re-entry must not queue behind a switch waiting for it
                while self._writing or self._writers_waiting:
                    self._condition.wait()
            self._readers += 1
        self._held.depth = depth + 1
        try:
            yield
        finally:
            self._held.depth = depth
            with self._condition:
                self._readers -= 1
                if self._readers == 0:
                    self._condition.notify_all()

    @contextmanager
    def exclusive(self, what: str) -> Iterator[None]:
        """Held by a change of the weights: no call runs meanwhile."""
        if self._depth():
            raise InputError(
                f"{what}: cannot change the adapters from inside a call (a callback) on a "
                "backend that refits its weights; change them between calls"
            )
        with self._condition:
            self._writers_waiting += 1
            try:
                while self._writing or self._readers:
                    self._condition.wait()
            finally:
                self._writers_waiting -= 1
            self._writing = True
        try:
            yield
        finally:
            with self._condition:
                self._writing = False
                self._condition.notify_all()
