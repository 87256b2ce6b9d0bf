# Shared by scripts/vm/lane and the per-generation preparation scripts
# (sourced, not run): messages, the loud "could not run" exit, apt on the
# host, the Debian mirror the host already uses, the cache lock, and the
# kernel and initramfs steps both generations share.
# Expects: $repo, $CACHE, $LOGS, $GEN.

EXIT_NO_VM=90
EXIT_NO_RESULT=91

say() { printf '== vm-test [%s]: %s\n' "${GEN:-?}" "$*" >&2; }

die_no_vm() {
    {
        echo
        echo "############################################################"
        echo "## vm-test FAILED: the ${GEN:-?} lane could not run."
        echo "## $*"
        echo "## Nothing was tested; this is NOT a pass."
        echo "## logs: $LOGS"
        echo "############################################################"
    } >&2
    exit "$EXIT_NO_VM"
}

# -- apt on the host ----------------------------------------------------------------------
apt_updated=0
apt_update() {
    if [ "$apt_updated" = 0 ]; then
        apt-get -o DPkg::Lock::Timeout=300 update -qq >>"$LOGS/apt.log" 2>&1 \
            || die_no_vm "apt-get update failed (see $LOGS/apt.log)"
        apt_updated=1
    fi
}

# apt_install PKG... : install what is missing (names only, no versions).
apt_install() {
    [ "$#" -gt 0 ] || return 0
    say "installing Debian packages: $*"
    export DEBIAN_FRONTEND=noninteractive
    apt_update
    apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends "$@" \
        >>"$LOGS/apt.log" 2>&1 \
        || die_no_vm "apt-get install $* failed (see $LOGS/apt.log)"
}

static_busybox() {  # the initramfs needs a static one with switch_root
    [ -x /bin/busybox ] && ! ldd /bin/busybox >/dev/null 2>&1 \
        && /bin/busybox --list 2>/dev/null | grep -qx switch_root
}

# The packages every lane needs on the host: qemu, a static busybox for the
# initramfs, depmod, xz and zstd for the kernel images and modules.
host_packages() {
    local need=()
    command -v qemu-system-x86_64 >/dev/null 2>&1 || need+=(qemu-system-x86)
    static_busybox || need+=(busybox-static)
    command -v depmod >/dev/null 2>&1 || need+=(kmod)
    command -v xz >/dev/null 2>&1 || need+=(xz-utils)
    command -v zstd >/dev/null 2>&1 || need+=(zstd)
    need+=("$@")
    apt_install "${need[@]}"
    command -v qemu-system-x86_64 >/dev/null 2>&1 || die_no_vm "qemu-system-x86_64 is not available"
}

# The Debian mirror apt on this host already uses (never a name written here):
# the URI of the first source that serves the host's own release, read from
# deb822 .sources files and one-line .list files alike.
debian_mirror() {
    local codename
    codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
    [ -n "$codename" ] || return 1
    {
        for f in /etc/apt/sources.list.d/*.sources; do
            [ -f "$f" ] || continue
            awk -v want="$codename" '
                function flush() {
                    if (uris != "" && (" " suites " ") ~ (" " want " ") && types ~ /(^| )deb( |$)/) {
                        split(uris, u, " "); print u[1]
                    }
                    uris = ""; suites = ""; types = ""
                }
                /^[ \t]*$/ { flush(); next }
                /^[ \t]*#/ { next }
                tolower($1) == "uris:" { $1 = ""; uris = $0; sub(/^ +/, "", uris) }
                tolower($1) == "suites:" { $1 = ""; suites = $0; sub(/^ +/, "", suites) }
                tolower($1) == "types:" { $1 = ""; types = $0 }
                END { flush() }' "$f"
        done
        { cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null || true; } \
            | sed -e 's/\[[^]]*\]//' \
            | awk -v want="$codename" '$1 == "deb" && $3 == want { print $2 }'
    } | grep -E -m1 '^(https?|file)://'

}

# -- the cache ----------------------------------------------------------------------------
# One preparation of a generation at a time (several checkouts may share the cache).
lock_cache() {
    local lock=$CACHE/.lock-$GEN
    mkdir -p "$CACHE"
    exec 9>"$lock"
    if ! flock -n 9; then
        say "waiting for another run's preparation (lock $lock)"
        flock -w 1200 9 || die_no_vm "the cache lock $lock stayed taken for 20 min"
    fi
}
unlock_cache() { exec 9>&-; }

# -- kernel -------------------------------------------------------------------------------
# unpack_kernel DEB DIR VERSION: unpack a linux-image .deb (never installed),
# run depmod on it, decompress .ko.xz modules is left to the initramfs step,
# and extract the uncompressed vmlinux (booted through its PVH entry, ~2.5 s
# faster than the bzImage) from an xz or zstd payload.
unpack_kernel() {
    local deb=$1 dir=$2 kver=$3
    dpkg-deb -x "$deb" "$dir" || die_no_vm "dpkg-deb -x $deb failed"
    # 6.12 packages keep modules under /usr/lib/modules; depmod -b looks in lib/.
    if [ ! -e "$dir/lib" ] && [ -d "$dir/usr/lib/modules" ]; then
        ln -s usr/lib "$dir/lib"
    fi
    depmod -b "$dir" "$kver" || die_no_vm "depmod failed for $kver"
    extract_vmlinux "$dir/boot/vmlinuz-$kver" "$dir/vmlinux" \
        || say "vmlinux extraction failed; booting the bzImage"
}

extract_vmlinux() {
    local image=$1 out=$2 magic offset
    for magic in xz zstd; do
        case $magic in
            xz) offset=$(LC_ALL=C grep -aobP -m1 '\xfd7zXZ\x00' "$image" | cut -d: -f1 | head -n1) ;;
            zstd) offset=$(LC_ALL=C grep -aobP -m1 '\x28\xb5\x2f\xfd' "$image" | cut -d: -f1 | head -n1) ;;
        esac
        [ -n "$offset" ] || continue
        # The payload is followed by other data: decompressors complain, the
        # output is whole. Check it instead of the exit code.
        case $magic in
            xz) tail -c +"$((offset + 1))" "$image" | xz -dc 2>/dev/null >"$out.tmp" ;;
            zstd) tail -c +"$((offset + 1))" "$image" | zstd -dcq 2>/dev/null >"$out.tmp" ;;
        esac
        if [ "$(head -c4 "$out.tmp" | od -An -tx1 | tr -d ' ')" = 7f454c46 ]; then
            mv "$out.tmp" "$out"
            return 0
        fi
    done
    rm -f "$out.tmp"
    return 1
}

# -- initramfs ----------------------------------------------------------------------------
# Loaded in this order; the ones a kernel builds in (modules.builtin) are left out.
VM_MODULES="virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci netfs
fscache 9pnet 9pnet_virtio 9p overlay virtio-rng rfkill crc16 ecc ecdh_generic bluetooth
hci_vhci cmac"
# Folded into another module by newer kernels (fscache into netfs in 6.12).
VM_MODULES_MERGED="fscache"

# build_initramfs KDIR KVER -> prints the path of the (cached) initramfs.
build_initramfs() {
    local kdir=$1 kver=$2 mdir ihash initrd work m f order=""
    mdir=$kdir/lib/modules/$kver
    ihash=$( { cat "$repo/scripts/vm/initramfs-init"; echo "$kver $VM_MODULES $VM_MODULES_MERGED";
               sha256sum /bin/busybox; } | sha256sum | cut -c1-12)
    initrd=$(dirname "$kdir")/initramfs-$kver-$ihash.cpio.gz
    if [ ! -f "$initrd" ]; then
        say "building $initrd"
        work=$(mktemp -d)
        mkdir -p "$work"/{bin,dev,proc,sys,lib/modules,newroot,lower,rw}
        cp /bin/busybox "$work/bin/busybox"
        mknod -m 600 "$work/dev/console" c 5 1
        for applet in sh mount umount mkdir insmod switch_root cat sleep echo ln; do
            ln -s busybox "$work/bin/$applet"
        done
        for m in $VM_MODULES; do
            f=$(find "$mdir/kernel" \( -name "$m.ko" -o -name "$m.ko.xz" -o -name "$m.ko.zst" \) \
                | head -n1)
            if [ -z "$f" ]; then
                if grep -q "/$m\.ko$" "$mdir/modules.builtin" 2>/dev/null \
                    || case " $VM_MODULES_MERGED " in *" $m "*) true ;; *) false ;; esac; then
                    continue
                fi
                rm -rf "$work"
                die_no_vm "kernel module $m not found in $mdir (neither a file nor built in)"
            fi
            # busybox insmod takes plain .ko files only.
            case $f in
                *.xz) xz -dc "$f" >"$work/lib/modules/$m.ko" ;;
                *.zst) zstd -dcq "$f" >"$work/lib/modules/$m.ko" ;;
                *) cp "$f" "$work/lib/modules/$m.ko" ;;
            esac || { rm -rf "$work"; die_no_vm "cannot unpack module $f"; }
            order="$order $m"
        done
        echo "$order" >"$work/lib/modules/order"
        cp "$repo/scripts/vm/initramfs-init" "$work/init"
        chmod 755 "$work/init"
        (cd "$work" && find . | /bin/busybox cpio -o -H newc 2>/dev/null | gzip -1) >"$initrd.tmp"
        mv "$initrd.tmp" "$initrd"
        rm -rf "$work"
        # Older builds for this generation are of no further use.
        for f in "$(dirname "$kdir")"/initramfs-*.cpio.gz; do
            [ "$f" = "$initrd" ] || rm -f "$f"
        done
    fi
    printf '%s\n' "$initrd"
}
