"""A serving process hands the GIL over every 0.5 ms (runtime.share_the_gil; docs/benchmarks.md,
isolation): set when the ingress starts, never lengthened."""

from __future__ import annotations

import sys

from mailbridge import runtime


def test_the_switch_interval_is_shortened_not_lengthened() -> None:
    before = sys.getswitchinterval()
    try:
        sys.setswitchinterval(0.005)
        runtime.share_the_gil()
        assert abs(sys.getswitchinterval() - runtime.GIL_SWITCH_SECONDS) < 1e-9  # kept in microseconds
        sys.setswitchinterval(0.0001)
        runtime.share_the_gil()
        assert abs(sys.getswitchinterval() - 0.0001) < 1e-9  # an operator's shorter choice stays
    finally:
        sys.setswitchinterval(before)
