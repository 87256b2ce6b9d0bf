"""The VM lane's steps: the guest's step runner (scripts/vm/steps.sh) and their counts
(scripts/vm/steps.py).

The step runner is sourced by the guest's init; here it runs under the same POSIX sh
with a stand-in for the guest venv's python that writes a JUnit report and exits with
the code each test gives it. The counts are read from reports a real pytest wrote.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import textwrap
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parent.parent
STEPS_SH = REPO / "scripts" / "vm" / "steps.sh"

# The guest venv's python, stood in for: records its environment's pass list and its
# arguments, writes a one-case JUnit report where --junitxml says, exits with the code
# the test gives the step (STAND_IN_RC_<step>, 0 by default).
STAND_IN_PYTHON = r"""#!/bin/sh
report=""
for arg in "$@"; do
    case "$arg" in --junitxml=*) report=${arg#--junitxml=} ;; esac
done
step=$(basename "$report" .xml)
step=${step#junit-}
echo "$step passes=${MUSHPI_VM_PASSES:-} args=$*" >>"$job/calls"
echo '<testsuites><testsuite name="pytest" time="1.5"><testcase name="t"/>' \
    '</testsuite></testsuites>' >"$report"
eval "exit \${STAND_IN_RC_$step:-0}"
"""


def load_steps_py() -> ModuleType:
    spec = importlib.util.spec_from_file_location("vm_steps", REPO / "scripts" / "vm" / "steps.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_steps(
    tmp_path: Path, *args: str, passes: str = "att eatt", **codes: int
) -> tuple[int, list[str]]:
    """Run the step runner as the guest does; its $steps_rc and the stand-in's calls."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True, exist_ok=True)
    python = venv / "bin" / "python"
    python.write_text(STAND_IN_PYTHON)
    python.chmod(0o755)
    job = tmp_path / "job"
    job.mkdir(exist_ok=True)
    (job / "calls").unlink(missing_ok=True)
    script = textwrap.dedent(
        f"""
        job={job}; MUSHPI_VM_VENV={venv}; suite_timeout=600; console=/dev/null
        export job
        out() {{ echo "$*" >>"$job/out"; }}
        uptime_s() {{ cut -d. -f1 /proc/uptime; }}
        . {STEPS_SH}
        run_steps "$@"
        echo "$steps_rc"
        """
    )
    env = {
        "PATH": "/usr/bin:/bin",
        "MUSHPI_VM_PASSES": passes,
        **{f"STAND_IN_RC_{step}": str(code) for step, code in codes.items()},
    }
    done = subprocess.run(
        ["sh", "-c", script, "sh", *args], capture_output=True, text=True, env=env, check=True
    )
    return int(done.stdout.strip()), (job / "calls").read_text().splitlines()


def test_the_suite_then_the_bumble_step_in_the_classic_pass(tmp_path: Path) -> None:
    rc, calls = run_steps(tmp_path, "-k", "portal")
    assert rc == 0
    assert calls == [
        "suite passes=att eatt args=-m pytest -c pytest.ini "
        f"--junitxml={tmp_path}/job/junit-suite.xml --ignore=test_85_bumble.py -k portal",
        "bumble passes=att args=-m pytest -c pytest.ini "
        f"--junitxml={tmp_path}/job/junit-bumble.xml test_85_bumble.py -k portal",
    ]


@pytest.mark.parametrize(
    ("suite", "bumble", "whole"),
    [
        (1, 0, 1),  # the suite failed
        (0, 1, 1),  # the Bumble step failed
        (2, 1, 2),  # the first failing step's code
        (5, 0, 0),  # a -k that selects only the Bumble step's tests
        (0, 5, 0),  # ... or only the suite's
        (5, 1, 1),
        (5, 5, 5),  # nothing selected anywhere: pytest's own "no tests" code
    ],
)
def test_the_whole_code_from_each_steps(
    tmp_path: Path, suite: int, bumble: int, whole: int
) -> None:
    rc, calls = run_steps(tmp_path, suite=suite, bumble=bumble)
    assert rc == whole
    assert len(calls) == 2  # a failing suite does not keep the Bumble step from running


def test_named_test_files_run_as_one_step(tmp_path: Path) -> None:
    rc, calls = run_steps(tmp_path, "test_20_portal.py", "-x", suite=1)
    assert rc == 1
    assert calls == [
        "suite passes=att eatt args=-m pytest -c pytest.ini "
        f"--junitxml={tmp_path}/job/junit-suite.xml test_20_portal.py -x"
    ]


def test_no_bumble_step_without_the_classic_pass(tmp_path: Path) -> None:
    rc, calls = run_steps(tmp_path, passes="eatt")
    assert rc == 0
    assert [c.split()[0] for c in calls] == ["suite"]
    assert "--ignore=test_85_bumble.py" in calls[0]
    assert "step bumble: not run" in (tmp_path / "job" / "out").read_text()


def test_counts_from_a_report_pytest_wrote(tmp_path: Path) -> None:
    (tmp_path / "test_sample.py").write_text(
        textwrap.dedent(
            """
            import pytest

            @pytest.fixture
            def broken():
                raise RuntimeError("set-up fails")

            def test_passes(): pass
            def test_fails(): assert False
            def test_errors(broken): pass
            def test_skipped(): pytest.skip("not here")
            def test_xfailed(): pytest.xfail("known")
            @pytest.mark.xfail(reason="known", strict=False)
            def test_xfail_marked(): assert False
            """
        )
    )
    report = tmp_path / "junit-bumble.xml"
    subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly",
         f"--junitxml={report}", str(tmp_path / "test_sample.py")],
        capture_output=True, cwd=tmp_path, check=False,
    )
    steps = load_steps_py()
    counts = steps.count_cases(report)
    assert {k: counts[k] for k in steps.OUTCOMES} == {
        "passed": 1, "failed": 1, "errors": 1, "skipped": 1, "xfailed": 2,
    }
    assert counts["cases"] == 6
    assert steps.describe({"step": "bumble", **counts}).startswith(
        "bumble: 6 cases, 1 passed, 1 failed, 1 errors, 1 skipped, 2 xfailed in "
    )


def test_steps_are_added_to_the_lanes_metrics(tmp_path: Path) -> None:
    run_steps(tmp_path, suite=0, bumble=0)
    job = tmp_path / "job"
    (job / "metrics.json").write_text(json.dumps({"passes": ["att", "eatt"]}))
    (job / "junit-bumble.xml").write_text("<testsuites><testsuite")  # killed while writing
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "vm" / "steps.py"), str(job)],
        capture_output=True, text=True, check=True,
    )
    lines = done.stdout.splitlines()
    assert lines[0] == "suite: 1 cases, 1 passed in 1.5 s"
    assert lines[1].startswith("bumble: report unreadable")
    data = json.loads((job / "metrics.json").read_text())
    assert data["passes"] == ["att", "eatt"]
    assert [step["step"] for step in data["steps"]] == ["suite", "bumble"]
    assert data["steps"][0]["passed"] == 1
