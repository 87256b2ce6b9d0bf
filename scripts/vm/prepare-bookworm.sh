# The bookworm generation (sourced by scripts/vm/lane): the host's own root
# over 9p — BlueZ 5.66 and Python 3.11 from this Debian bookworm host, the
# project venv — and bookworm's generic kernel (6.1), unpacked, never installed.
# Sets KDIR, KVER, GUEST_ROOT, GUEST_VENV, GUEST_SHARES, GUEST_LINK_PROJECT.

prepare_generation() {
    local need=() kpkg kver kdir d spec
    [ -x /usr/libexec/bluetooth/bluetoothd ] || need+=(bluez)
    command -v btvirt >/dev/null 2>&1 || need+=(bluez-test-tools)
    command -v dbus-daemon >/dev/null 2>&1 || need+=(dbus-daemon)
    command -v rfkill >/dev/null 2>&1 || need+=(rfkill)  # the suite blocks adapters with it
    host_packages "${need[@]}"

    # Python: the project venv with pytest, bleak and Bumble.
    if ! "$VENV/bin/python" -c 'import mushpi_ble, pytest' >/dev/null 2>&1; then
        say "creating the project venv"
        (cd "$repo" && MUSHPI_VENV=$VENV bash -c 'source scripts/_env.sh test') \
            >"$LOGS/venv.log" 2>&1 \
            || die_no_vm "could not create the venv (see $LOGS/venv.log)"
    fi
    for spec in "$BLEAK_SPEC" "$BUMBLE_SPEC"; do
        if ! "$VENV/bin/python" - "$spec" <<'EOF' >/dev/null 2>&1
import sys
from importlib.metadata import version
name, _, wanted = sys.argv[1].partition("==")
sys.exit(0 if not wanted or version(name) == wanted else 1)
EOF
        then
            say "installing $spec into $VENV"
            "$VENV/bin/python" -m pip install -q "$spec" >>"$LOGS/pip.log" 2>&1 \
                || die_no_vm "pip install $spec failed (see $LOGS/pip.log)"
        fi
    done
    # Byte-compile on the host: the guest sees the tree read-only and is slow.
    "$VENV/bin/python" -m compileall -q -j 0 "$repo/mushpi_ble" "$repo/tests_vm" \
        "$VENV/lib" >/dev/null 2>&1 || true

    # Kernel: bookworm's generic one, cached.
    lock_cache
    mkdir -p "$CACHE/bookworm"
    kdir=""
    for d in "$CACHE"/bookworm/kernel-*/; do
        [ -f "$d/.complete" ] && kdir=${d%/}
    done
    if [ -z "$kdir" ]; then
        apt_update
        kpkg=$(apt-cache depends linux-image-amd64 2>/dev/null \
            | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
        [ -n "$kpkg" ] || die_no_vm "cannot resolve linux-image-amd64 to a kernel package"
        kver=${kpkg#linux-image-}
        kdir=$CACHE/bookworm/kernel-$kver
        say "fetching and unpacking $kpkg into $kdir"
        rm -rf "$kdir" "$CACHE/bookworm/download"
        mkdir -p "$CACHE/bookworm/download" "$kdir"
        (cd "$CACHE/bookworm/download" && apt-get download "$kpkg") \
            >"$LOGS/kernel-fetch.log" 2>&1 \
            || die_no_vm "apt-get download $kpkg failed (see $LOGS/kernel-fetch.log)"
        unpack_kernel "$CACHE"/bookworm/download/*.deb "$kdir" "$kver"
        rm -rf "$CACHE/bookworm/download"
        echo "$kver" >"$kdir/.complete"
    fi
    KDIR=$kdir
    KVER=$(cat "$kdir/.complete")
    unlock_cache

    GUEST_ROOT=/
    GUEST_VENV=$VENV
    GUEST_SHARES=""          # the host's root already shows the repo and the kernel
    GUEST_LINK_PROJECT=0     # the project venv has the project (editable install)
}
