"""`-m "not lab"` starts no lab: every collected test that uses a lab fixture carries the
`lab` marker (tests/lab/fixtures.py adds it from the fixtures a test uses)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.lab.fixtures import LAB_FIXTURES


def test_every_test_using_the_lab_is_marked(request):
    unmarked = [item.nodeid for item in request.session.items
                if LAB_FIXTURES & set(getattr(item, "fixturenames", ()))
                and item.get_closest_marker("lab") is None]
    assert not unmarked


def test_not_lab_deselects_files_that_never_said_lab():
    # tests/test_lab.py and test_a2c.py carry no `pytestmark = lab`; every test there uses
    # the lab or acme2certifier, so `-m "not lab"` must collect none of them
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--collect-only",
         "-m", "not lab", "tests/test_lab.py", "tests/test_a2c.py"],
        capture_output=True, text=True, timeout=120, cwd=Path(__file__).parent.parent)
    assert "no tests collected" in done.stdout, done.stdout[-2000:]
