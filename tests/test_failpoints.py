"""keys.failpoints: the plan a test gives a process, and that a bad plan is refused."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from keys.failpoints import ENV, parse


def test_a_plan_names_failpoints_and_passes() -> None:
    assert parse("") == {}
    assert parse("broker.after_route=3, adapter.after_store=1") == {
        "broker.after_route": 3,
        "adapter.after_store": 1,
    }


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("broker.after_rout=3", "unknown failpoint 'broker.after_rout'"),
        ("broker.after_route", "needs a positive count"),
        ("broker.after_route=0", "needs a positive count"),
    ],
)
def test_a_bad_plan_is_refused(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse(text)


def test_the_planned_pass_kills_the_process_and_no_earlier_one() -> None:
    code = (
        "from keys.failpoints import failpoint\n"
        "failpoint('broker.before_ack'); print('first', flush=True)\n"
        "failpoint('broker.before_ack'); print('second', flush=True)\n"
    )
    done = subprocess.run(  # noqa: S603 - this interpreter, fixed code
        [sys.executable, "-c", code],
        env={**os.environ, ENV: "broker.before_ack=2"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.stdout == "first\n"
    assert done.returncode == -9
