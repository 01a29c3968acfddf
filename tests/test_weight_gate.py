"""The readers-writer gate behind TensorRT LoRA switches (sdrt/adapters/weight_gate.py)."""

from __future__ import annotations

import threading

import pytest

from sdrt.adapters.weight_gate import WeightGate
from sdrt.errors import InputError

WAIT = 0.3  # seconds a blocked thread is given to (wrongly) get through


def started(target) -> threading.Thread:
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread


def test_a_switch_waits_for_the_calls_in_flight_and_new_calls_wait_for_it():
    gate, order = WeightGate(), []
    in_call, end_call = threading.Event(), threading.Event()

    def call(name, hold=None):
        with gate.shared():
            order.append(f"{name} in")
            if hold:
                in_call.set()
                hold.wait(10)
            order.append(f"{name} out")

    def switch():
        with gate.exclusive("set_adapters"):
            order.append("switch")

    first = started(lambda: call("first", end_call))
    assert in_call.wait(10)
    writer = started(switch)
    writer.join(WAIT)
    assert writer.is_alive() and "switch" not in order
    second = started(lambda: call("second"))  # queued behind the waiting switch
    second.join(WAIT)
    assert second.is_alive() and "second in" not in order
    end_call.set()
    for thread in (first, writer, second):
        thread.join(10)
    assert order == ["first in", "first out", "switch", "second in", "second out"]


def test_a_thread_in_a_call_may_enter_again_while_a_switch_waits():
    gate, entered_again = WeightGate(), threading.Event()
    in_call, go_on = threading.Event(), threading.Event()

    def call():
        with gate.shared():
            in_call.set()
            go_on.wait(10)
            with gate.shared():  # a walk's next frame, a prompt embedding: no deadlock
                entered_again.set()

    caller = started(call)
    assert in_call.wait(10)
    writer = started(lambda: gate.exclusive("set_adapters").__enter__())
    writer.join(WAIT)
    go_on.set()
    assert entered_again.wait(10)
    caller.join(10)
    writer.join(10)
    assert not writer.is_alive()


def test_switching_from_inside_a_call_is_an_error_not_a_deadlock():
    gate = WeightGate()
    refused = pytest.raises(InputError, match="set_adapters: cannot change the adapters")
    with gate.shared(), refused, gate.exclusive("set_adapters"):
        pass
    with gate.exclusive("set_adapters"):  # the gate is free again
        pass
