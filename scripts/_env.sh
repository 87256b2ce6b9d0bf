# Shared set-up for scripts/demo and scripts/test (sourced, not run):
# Debian tools the package needs, then a local virtualenv with the package.
# Usage: source scripts/_env.sh [test]   ("test" adds the test, bench, metrics and
# bluezero extras)
set -euo pipefail

mushpi_need_apt=()
command -v dbus-daemon >/dev/null 2>&1 || mushpi_need_apt+=(dbus-daemon)
command -v dbus-send >/dev/null 2>&1 || mushpi_need_apt+=(dbus-bin)
if [ "${1:-}" = "test" ]; then
    command -v gdbus >/dev/null 2>&1 || mushpi_need_apt+=(libglib2.0-bin)
    command -v busctl >/dev/null 2>&1 || mushpi_need_apt+=(systemd)
    # bluez's bluetooth.service, which setup's drop-in for it is verified against
    [ -f /lib/systemd/system/bluetooth.service ] || mushpi_need_apt+=(bluez)
fi
if [ "${#mushpi_need_apt[@]}" -gt 0 ]; then
    echo "installing Debian packages: ${mushpi_need_apt[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get -o DPkg::Lock::Timeout=300 update -qq
    apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends "${mushpi_need_apt[@]}" >/dev/null
fi

MUSHPI_VENV="${MUSHPI_VENV:-.venv}"
if [ ! -x "$MUSHPI_VENV/bin/python" ]; then
    python3 -m venv "$MUSHPI_VENV"
    "$MUSHPI_VENV/bin/python" -m pip install -q --upgrade pip
fi
if [ "${1:-}" = "test" ]; then
    # everything the suite exercises: test tools, benchmark peers, metrics, and
    # the legacy BlueZero backend (its Debian build packages come first)
    "$MUSHPI_VENV/bin/python" -m pip install -q -e ".[test,bench,metrics]"
    MUSHPI_VENV="$MUSHPI_VENV" scripts/install-bluezero-deps "$MUSHPI_VENV"
else
    "$MUSHPI_VENV/bin/python" -m pip install -q -e .
fi
