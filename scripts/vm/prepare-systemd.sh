# The systemd generation (sourced by scripts/vm/lane): trixie with systemd as
# PID 1, udev and Debian's own bluetooth.service, the way a Raspberry Pi OS
# trixie image boots. The guest is set up as a packager would: the project's
# wheel (built here, for this checkout) installed into a venv under /opt from
# a wheelhouse of its dependencies, then `mushpi-ble setup` for a controller's
# unit that runs `serve` as the stand-in controller (tests_systemd/ says what
# is proven). The kernel and the test venv (bleak, pytest) are trixie's, made
# by scripts/vm/prepare-trixie.sh under its lock; the root is a trixie tree of
# its own (its package list adds systemd and udev), cached beside trixie's.
# Sets what prepare-trixie.sh sets, plus GUEST_INIT (systemd, not guest-init).

# shellcheck source=scripts/vm/prepare-trixie.sh
. "$repo/scripts/vm/prepare-trixie.sh"
eval "trixie_$(declare -f prepare_generation)"

SYSTEMD_INCLUDE=$TRIXIE_INCLUDE,systemd,systemd-sysv,udev,dbus-user-session,procps,passwd

prepare_generation() {
    local wheels whash reqs had_build=0
    # trixie's kernel, lock and cache folder, with a root of this package list
    GEN=trixie TRIXIE_INCLUDE=$SYSTEMD_INCLUDE trixie_prepare_generation

    # The packager's wheelhouse: the runtime dependencies (and the metrics extra), as
    # wheels inside the root, so the guest installs with no network.
    reqs=$(python3 - "$repo/pyproject.toml" <<'EOF'
import sys, tomllib
project = tomllib.load(open(sys.argv[1], "rb"))["project"]
print(" ".join([*project["dependencies"], *project["optional-dependencies"]["metrics"]]))
EOF
    ) || die_no_vm "cannot read the dependencies from pyproject.toml"
    whash=$(echo "$reqs" | sha256sum | cut -c1-12)
    wheels=/opt/wheelhouse-$whash
    if [ ! -f "$GUEST_ROOT$wheels/.complete" ]; then
        say "filling the wheelhouse $wheels in the systemd root: $reqs"
        rm -rf "$GUEST_ROOT$wheels"
        # shellcheck disable=SC2086 # the requirement list splits on blanks
        chroot_run "$GUEST_ROOT" python3 -m pip wheel -q --no-cache-dir -w "$wheels" $reqs \
            >"$LOGS/wheelhouse.log" 2>&1 \
            || chroot_run "$GUEST_ROOT" "$GUEST_VENV/bin/python" -m pip wheel -q -w "$wheels" $reqs \
                >>"$LOGS/wheelhouse.log" 2>&1 \
            || die_no_vm "could not fill the wheelhouse (see $LOGS/wheelhouse.log)"
        touch "$GUEST_ROOT$wheels/.complete"
    fi

    # This checkout's wheel, into the job folder (the guest sees it at the same path).
    # An early preparation (CI's, while scripts/test makes the venv: MUSHPI_VM_NO_WHEEL,
    # as a venv half made has python but no pip yet) leaves it to the run.
    if [ "$action" = prepare ] && { [ -n "${MUSHPI_VM_NO_WHEEL:-}" ] || [ ! -x "$VENV/bin/python" ]; }; then
        say "no venv yet ($VENV): the wheel is built when the lane runs"
        GUEST_INIT=$repo/scripts/vm/systemd-init
        GUEST_WHEELHOUSE=$wheels
        return 0
    fi
    [ -e "$repo/build" ] && had_build=1
    rm -rf "$LOGS/wheel"
    "$VENV/bin/python" -m pip wheel -q --no-deps -w "$LOGS/wheel" "$repo" \
        >"$LOGS/wheel.log" 2>&1 \
        || die_no_vm "could not build the wheel (see $LOGS/wheel.log)"
    [ "$had_build" = 1 ] || rm -rf "$repo/build"

    GUEST_INIT=$repo/scripts/vm/systemd-init
    GUEST_WHEELHOUSE=$wheels
}
