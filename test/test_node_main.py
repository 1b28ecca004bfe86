"""node_main.stop_quietly: the node's teardown is given a bounded time, then the process may leave."""
from __future__ import annotations

import signal
import threading
import time

import pytest

pytest.importorskip("rclpy")

from ood_monitor.ros.node_main import stop_quietly  # noqa: E402


class FakeNode:
    def __init__(self, seconds: float) -> None:
        self.seconds, self.destroyed = seconds, threading.Event()

    def destroy_node(self) -> None:
        time.sleep(self.seconds)
        self.destroyed.set()


@pytest.fixture
def restore_signals():
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    yield
    for s, handler in saved.items():
        signal.signal(s, handler)


def test_a_quick_teardown_completes_and_later_signals_are_ignored(restore_signals, capsys):
    node = FakeNode(0.0)
    stop_quietly(node, wait_s=5.0)
    assert node.destroyed.is_set()
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN and signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
    assert "teardown" not in capsys.readouterr().err


def test_a_stalled_teardown_is_abandoned_after_the_wait(restore_signals, capsys):
    node = FakeNode(3.0)
    start = time.monotonic()
    stop_quietly(node, wait_s=0.2)
    assert time.monotonic() - start < 1.5 and not node.destroyed.is_set()
    assert "teardown still running after 0.2 s" in capsys.readouterr().err
