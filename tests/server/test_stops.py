"""Stop sequences over a token stream, including stops split across pieces."""

from __future__ import annotations

import pytest

from server.engines.stops import StopMatcher


@pytest.mark.parametrize(
    ("stops", "pieces", "emitted", "stopped"),
    [
        ((), ["Hel", "lo"], "Hello", False),
        (("\n",), ["Hi", " there\nmore"], "Hi there", True),
        (("END",), ["abc E", "N", "D xyz"], "abc ", True),  # split across three pieces
        (("END",), ["abc E", "N", "o"], "abc ENo", False),  # a false start is released
        (("END",), ["abc EN"], "abc EN", False),  # held back, then flushed at the end
        (("ab", "b"), ["xab"], "x", True),  # the earliest match wins
        (("。",), ["你好", "。再见"], "你好", True),
    ],
)
def test_stop_matcher(stops, pieces, emitted, stopped):
    m = StopMatcher(stops)
    out = "".join(m.feed(p) for p in pieces) + m.flush()
    assert out == emitted
    assert m.stopped is stopped
    if stopped:
        assert m.feed("more") == ""  # nothing leaks after the stop
