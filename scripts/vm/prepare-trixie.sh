# The trixie generation (sourced by scripts/vm/lane): what Raspberry Pi OS
# trixie ships — BlueZ 5.82, Python 3.13, kernel 6.12 — on this bookworm host,
# which stays bookworm. The guest's root is a trixie tree made by debootstrap
# (mounted over 9p instead of the host's /) with a venv of its own holding the
# project's dependencies, pytest, bleak and Bumble; the kernel is trixie's generic one,
# fetched with an apt configuration of its own. All cached in $CACHE/trixie.
# Sets KDIR, KVER, GUEST_ROOT, GUEST_VENV, GUEST_SHARES, GUEST_LINK_PROJECT.

# rfkill: the suite blocks the adapters the way a user does (`rfkill block bluetooth`).
TRIXIE_INCLUDE=bluez,bluez-test-tools,dbus,dbus-daemon,python3,python3-venv,kmod,busybox-static,rfkill

prepare_generation() {
    local mirror tdir aptdir apt_opts kpkg kver kdir d rhash root tmp reqs vhash venv bhash btvirt
    local need=()
    command -v debootstrap >/dev/null 2>&1 || need+=(debootstrap)
    [ -f /usr/share/keyrings/debian-archive-keyring.gpg ] || need+=(debian-archive-keyring)
    host_packages "${need[@]}"
    mirror=$(debian_mirror) \
        || die_no_vm "cannot tell which Debian mirror apt uses (/etc/apt/sources.list*)"
    [ -n "$mirror" ] || die_no_vm "no Debian mirror for this host's release in /etc/apt/sources.list*"

    lock_cache
    tdir=$CACHE/trixie
    mkdir -p "$tdir"

    # -- kernel: trixie's linux-image-amd64, through an apt configuration of its own
    kdir=""
    for d in "$tdir"/kernel-*/; do
        [ -f "$d/.complete" ] && kdir=${d%/}
    done
    if [ -z "$kdir" ]; then
        aptdir=$tdir/apt
        rm -rf "$aptdir"
        mkdir -p "$aptdir/lists/partial" "$aptdir/cache/archives/partial"
        echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror trixie main" \
            >"$aptdir/sources.list"
        apt_opts=(-o "Dir::Etc::SourceList=$aptdir/sources.list" -o Dir::Etc::SourceParts=/dev/null
                  -o "Dir::State::Lists=$aptdir/lists" -o "Dir::Cache=$aptdir/cache")
        apt-get "${apt_opts[@]}" update -qq >"$LOGS/trixie-apt.log" 2>&1 \
            || die_no_vm "apt-get update for trixie failed (see $LOGS/trixie-apt.log)"
        kpkg=$(apt-cache "${apt_opts[@]}" depends linux-image-amd64 2>/dev/null \
            | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
        [ -n "$kpkg" ] || die_no_vm "cannot resolve trixie's linux-image-amd64 to a kernel package"
        kver=${kpkg#linux-image-}
        kdir=$tdir/kernel-$kver
        say "fetching and unpacking trixie's $kpkg into $kdir"
        rm -rf "$kdir" "$tdir/download"
        mkdir -p "$tdir/download" "$kdir"
        (cd "$tdir/download" && apt-get "${apt_opts[@]}" download "$kpkg") \
            >>"$LOGS/trixie-apt.log" 2>&1 \
            || die_no_vm "apt-get download $kpkg (trixie) failed (see $LOGS/trixie-apt.log)"
        unpack_kernel "$tdir"/download/*.deb "$kdir" "$kver"
        rm -rf "$tdir/download" "$aptdir"
        echo "$kver" >"$kdir/.complete"
    fi
    KDIR=$kdir
    KVER=$(cat "$kdir/.complete")

    # -- root filesystem: debootstrap, cached by its package list (a changed list
    # is a new root). Roots of other lists stay while in use: another checkout
    # may run with one; each use marks its root, one unused for a day is removed.
    rhash=$(echo "trixie minbase $TRIXIE_INCLUDE" | sha256sum | cut -c1-12)
    root=$tdir/root-$rhash
    if [ ! -f "$root/.complete" ]; then
        tmp=$tdir/root.tmp
        rm -rf "$tmp" "$root"
        say "building the trixie root with debootstrap (about a minute)"
        debootstrap --variant=minbase --include="$TRIXIE_INCLUDE" trixie "$tmp" "$mirror" \
            >"$LOGS/debootstrap.log" 2>&1 \
            || die_no_vm "debootstrap trixie failed (see $LOGS/debootstrap.log)"
        rm -rf "$tmp"/var/cache/apt/archives/*.deb "$tmp"/var/lib/apt/lists/*_Packages
        echo "$rhash" >"$tmp/.complete"
        mv "$tmp" "$root"
    fi
    touch "$root/.complete"
    for d in "$tdir"/root-*/; do
        [ "${d%/}" = "$root" ] && continue
        [ -n "$(find "${d%/}/.complete" -mmin +1440 2>/dev/null)" ] \
            || [ ! -f "${d%/}/.complete" ] && rm -rf "${d%/}"
    done
    GUEST_ROOT=$root

    # -- the emulated radio: trixie's btvirt 5.82 with the one-event mainloop patch
    # (scripts/vm/build-btvirt says why), ahead of the package's in the guest's PATH
    bhash=$(cat "$repo/scripts/vm/build-btvirt" "$repo/scripts/vm/btvirt-mainloop-one-event.patch" \
        | sha256sum | cut -c1-12)
    btvirt=$tdir/btvirt-$bhash/btvirt
    if [ ! -x "$btvirt" ]; then
        command -v gcc >/dev/null 2>&1 || host_packages gcc libc6-dev
        say "building btvirt 5.82 with the mainloop patch"
        "$repo/scripts/vm/build-btvirt" "$btvirt" "$mirror" >"$LOGS/btvirt-build.log" 2>&1 \
            || die_no_vm "could not build the patched btvirt (see $LOGS/btvirt-build.log)"
        for d in "$tdir"/btvirt-*/; do
            [ "${d%/}" = "$tdir/btvirt-$bhash" ] || rm -rf "${d%/}"
        done
    fi
    install -D -m 0755 "$btvirt" "$root/usr/local/bin/btvirt"

    # -- venv inside the root: the project's dependencies, pytest, bleak and Bumble on 3.13
    reqs=$(python3 - "$repo/pyproject.toml" <<'EOF'
import sys, tomllib
project = tomllib.load(open(sys.argv[1], "rb"))["project"]
print(" ".join([*project["dependencies"], *project["optional-dependencies"]["metrics"]]))
EOF
    ) || die_no_vm "cannot read the dependencies from pyproject.toml"
    reqs="$reqs pytest>=8 $BLEAK_SPEC $BUMBLE_SPEC"
    vhash=$(echo "$reqs" | sha256sum | cut -c1-12)
    venv=/opt/mushpi-venv-$vhash
    if [ ! -f "$root$venv/.complete" ]; then
        say "creating $venv in the trixie root: $reqs"
        rm -rf "$root$venv"
        cp /etc/resolv.conf "$root/etc/resolv.conf" 2>/dev/null || true
        mkdir -p "$root/etc/ssl/certs"
        [ -f /etc/ssl/certs/ca-certificates.crt ] \
            && cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/host-ca.crt"
        # shellcheck disable=SC2086 # the requirement list splits on blanks
        chroot_run "$root" python3 -m venv "$venv" >"$LOGS/trixie-venv.log" 2>&1 \
            && chroot_run "$root" "$venv/bin/python" -m pip install -q $reqs \
                >>"$LOGS/trixie-venv.log" 2>&1 \
            || die_no_vm "could not build the trixie venv (see $LOGS/trixie-venv.log)"
        for d in "$root"/opt/mushpi-venv-*/; do
            [ "${d%/}" = "$root$venv" ] || rm -rf "${d%/}"
        done
        touch "$root$venv/.complete"
    fi
    GUEST_VENV=$venv
    unlock_cache

    # Byte-compile the project for 3.13 on the host (the guest is slow and
    # sees the tree read-only): the tree bound into the root, in a mount
    # namespace of its own that vanishes with the command.
    mkdir -p "$root$repo"
    unshare -m sh -c 'mount --bind "$1" "$2$1" && chroot "$2" python3 -m compileall -q \
        "$1/mushpi_ble" "$1/tests_vm"' sh "$repo" "$root" >/dev/null 2>&1 \
        || say "byte-compiling for 3.13 failed; the guest compiles as it imports"

    GUEST_SHARES="$repo $KDIR"  # the repo at its own path; the kernel for modprobe
    GUEST_LINK_PROJECT=1        # the guest points the venv at the repo (as pip -e does)
}

# chroot_run ROOT CMD...: a command in the trixie root with a clean environment
# (no host pip configuration; the host's CA bundle, which this network may need).
chroot_run() {
    local root=$1
    shift
    unshare -m sh -c 'mount -t proc proc "$0/proc" && exec chroot "$0" "$@"' "$root" \
        env -i PATH=/usr/local/bin:/usr/bin:/bin HOME=/root LANG=C.UTF-8 \
        PIP_CERT=/etc/ssl/certs/host-ca.crt PIP_DISABLE_PIP_VERSION_CHECK=1 \
        PIP_DEFAULT_TIMEOUT=120 "$@"
}
