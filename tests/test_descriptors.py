"""The open-file limit of ``fraisier metrics`` (fraisier_textfile/serve/descriptors.py): raised to the hard limit at
start, and the connections it leaves room for. Each case runs in a process of its own with the limits set as
systemd or a shell would set them: the limit is the whole process's."""

from __future__ import annotations

import json
import resource
import subprocess
import sys

import pytest

from fraisier_textfile.serve.descriptors import RESERVED_DESCRIPTORS

PROBE = """
import json, os, resource, sys
from fraisier_textfile.serve.descriptors import connection_limit, raise_descriptor_limit
before_and_after = raise_descriptor_limit()
open_now = len(os.listdir("/proc/self/fd"))
print(json.dumps({
    "raised": before_and_after,
    "limits": resource.getrlimit(resource.RLIMIT_NOFILE),
    "open": open_now,
    "connections": {str(wanted): connection_limit(wanted) for wanted in (0, 1, 10, 100000)},
}))
"""


def probe(soft: int, hard: int) -> dict[str, object]:
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, preexec_fn=limit,
                          timeout=60, check=True)
    result: dict[str, object] = json.loads(done.stdout)
    return result


def hard_limit_here() -> int:
    return resource.getrlimit(resource.RLIMIT_NOFILE)[1]


@pytest.mark.parametrize(("soft", "hard"), [(256, 1024), (1024, 1024)], ids=["below the hard limit", "at it"])
def test_the_soft_limit_is_raised_to_the_hard_one(soft: int, hard: int) -> None:
    if hard > hard_limit_here():
        pytest.skip(f"this process's hard limit is below {hard}")
    result = probe(soft, hard)
    assert result["raised"] == [soft, hard]
    assert result["limits"] == [hard, hard]


def test_connections_are_bounded_by_half_the_descriptors_left_and_by_what_is_asked() -> None:
    soft = 512
    if soft > hard_limit_here():
        pytest.skip(f"this process's hard limit is below {soft}")
    result = probe(soft, soft)
    open_now = result["open"]
    assert isinstance(open_now, int)
    budget = (soft - open_now - RESERVED_DESCRIPTORS) // 2
    assert result["connections"] == {"0": budget, "1": 1, "10": 10, "100000": budget}
    assert 2 * budget + open_now + RESERVED_DESCRIPTORS <= soft  # live and closing connections fit


def test_a_limit_too_low_for_any_connection_still_keeps_one() -> None:
    result = probe(RESERVED_DESCRIPTORS + 2, RESERVED_DESCRIPTORS + 2)  # the reserve and what Python holds: none left
    assert result["connections"] == {"0": 1, "1": 1, "10": 1, "100000": 1}
