#!/usr/bin/env python3
"""The cases of each step of a lane, from the JUnit reports its guest wrote.

scripts/vm/guest-init runs the lane's suite in steps (the end-to-end suite, then the
Bumble step), each a pytest run with its own ``junit-<step>.xml``. This counts each
report's cases by outcome (passed, failed, errors, skipped, xfailed) and its time, for
``metrics.json`` (``steps``) and vm-test's summary. Standard library only: it runs on
the host before any venv is trusted.

    scripts/vm/steps.py LOGS     add "steps" to LOGS/metrics.json; print one line a step
"""

from __future__ import annotations

import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

STEP_ORDER = ("suite", "bumble")
OUTCOMES = ("passed", "failed", "errors", "skipped", "xfailed")


def count_cases(report: Path) -> dict[str, Any]:
    """Outcome counts and seconds of one JUnit report as pytest writes it (an xfail is
    a ``skipped`` element of type ``pytest.xfail``)."""
    root = ET.parse(report).getroot()
    counts = dict.fromkeys(OUTCOMES, 0)
    seconds = 0.0
    suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
    for suite in suites:
        seconds += float(suite.get("time", "0") or 0)
        for case in suite.iter("testcase"):
            if case.find("failure") is not None:
                counts["failed"] += 1
            elif case.find("error") is not None:
                counts["errors"] += 1
            elif (skipped := case.find("skipped")) is not None:
                kind = "xfailed" if skipped.get("type") == "pytest.xfail" else "skipped"
                counts[kind] += 1
            else:
                counts["passed"] += 1
    return {**counts, "cases": sum(counts.values()), "time_s": round(seconds, 1)}


def lane_steps(logs: Path) -> list[dict[str, Any]]:
    """Every step's counts (``step``: its name), in the order the guest runs them."""
    reports = {p.name.removeprefix("junit-").removesuffix(".xml"): p
               for p in logs.glob("junit-*.xml")}
    ordered = [n for n in STEP_ORDER if n in reports] + sorted(set(reports) - set(STEP_ORDER))
    steps: list[dict[str, Any]] = []
    for name in ordered:
        try:
            steps.append({"step": name, **count_cases(reports[name])})
        except (ET.ParseError, OSError) as exc:  # a step killed while writing its report
            steps.append({"step": name, "unreadable": str(exc)})
    return steps


def describe(step: dict[str, Any]) -> str:
    """One line: ``bumble: 27 cases, 25 passed, 1 skipped, 1 xfailed in 31.2 s``."""
    name = step["step"]
    if "unreadable" in step:
        return f"{name}: report unreadable ({step['unreadable']})"
    counts = ", ".join(f"{step[o]} {o}" for o in OUTCOMES if step[o])
    return f"{name}: {step['cases']} cases, {counts or 'none run'} in {step['time_s']} s"


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    logs = Path(argv[1])
    steps = lane_steps(logs)
    path = logs / "metrics.json"
    data = json.loads(path.read_text()) if path.exists() else {}
    data["steps"] = steps
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    for step in steps:
        print(describe(step))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
