# Sourced by scripts/vm/guest-init (and tests/test_vm_steps.py, with a stand-in python):
# runs the lane's suite in steps, each a pytest run of its own with its own JUnit report
# (junit-<step>.xml: scripts/vm/steps.py counts them for vm-test's summary): the
# end-to-end suite, then the Bumble step (tests_vm/test_85_bumble.py: a central that is
# not BlueZ, once, in the classic pass). Arguments naming test files run as one step,
# exactly as named (an option's value that names a file goes as --opt=value: two words,
# `--deselect x.py::t`, read as a named file). The caller provides: $job,
# $MUSHPI_VM_VENV, $suite_timeout (seconds for all steps), $console (where pytest's
# output is echoed), out() and uptime_s(). run_steps sets $steps_rc: 5 (pytest's "no
# test selected") only when no step ran a test, else the first failing step's code,
# else 0.
# No plugin autoload: pytest-trio's plugin imports hypothesis, ~9 s under
# emulation, and this suite needs neither.
BUMBLE_TESTS=test_85_bumble.py
BUMBLE_RESERVE_S=180
run_step() {  # run_step NAME TIMEOUT_S [pytest args]: the step's exit code in $job/pytest-NAME.rc
    name=$1 limit=$2
    shift 2
    out "step $name: pytest in tests_vm/${*:+ $*} (at most ${limit} s)"
    rm -f "$job/junit-$name.xml"
    {
        PYTEST_DISABLE_PLUGIN_AUTOLOAD=1 timeout -s INT -k 15 "$limit" \
            "$MUSHPI_VM_VENV/bin/python" -m pytest \
            -c pytest.ini --junitxml="$job/junit-$name.xml" "$@"
        echo $? >"$job/pytest-$name.rc"
    } 2>&1 | tee -a "$job/pytest.log" >"${console:-/dev/null}"
    out "step $name: pytest exit code $(cat "$job/pytest-$name.rc" 2>/dev/null || echo none)"
}
run_steps() {  # run_steps [pytest args]
    named_files=0
    for arg in "$@"; do
        case "$arg" in -*) ;; *.py | *.py::*) named_files=1 ;; esac
    done
    case " $(echo "${MUSHPI_VM_PASSES:-att}" | tr ',' ' ') " in
        *" att "*) bumble_pass=1 ;;
        *) bumble_pass=0 ;;
    esac
    : >"$job/pytest.log"
    deadline=$(($(uptime_s) + suite_timeout))
    if [ "$named_files" = 1 ]; then
        run_step suite "$suite_timeout" "$@"
        steps_rc=$(cat "$job/pytest-suite.rc" 2>/dev/null)
    elif [ "$bumble_pass" = 0 ]; then
        out "step bumble: not run (it runs in the classic pass; MUSHPI_VM_PASSES=$MUSHPI_VM_PASSES)"
        run_step suite "$suite_timeout" --ignore="$BUMBLE_TESTS" "$@"
        steps_rc=$(cat "$job/pytest-suite.rc" 2>/dev/null)
    else
        limit=$((suite_timeout - BUMBLE_RESERVE_S))
        [ "$limit" -ge 60 ] || limit=$((suite_timeout / 2))
        run_step suite "$limit" --ignore="$BUMBLE_TESTS" "$@"
        left=$((deadline - $(uptime_s)))
        [ "$left" -ge 60 ] || left=60
        (MUSHPI_VM_PASSES=att && export MUSHPI_VM_PASSES && run_step bumble "$left" "$BUMBLE_TESTS" "$@")
        suite_rc=$(cat "$job/pytest-suite.rc" 2>/dev/null)
        bumble_rc=$(cat "$job/pytest-bumble.rc" 2>/dev/null)
        # pytest's 5 is "no test selected" (a -k that matches only the other step's tests):
        # the whole run is 5 only when neither step ran anything.
        case "${suite_rc:-95}:${bumble_rc:-95}" in
            5:5) steps_rc=5 ;;
            0:0 | 0:5 | 5:0) steps_rc=0 ;;
            5:*) steps_rc=${bumble_rc:-95} ;;
            *:*) if [ "${suite_rc:-95}" != 0 ]; then steps_rc=${suite_rc:-95}; else steps_rc=${bumble_rc:-95}; fi ;;
        esac
    fi
}
