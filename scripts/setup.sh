#!/usr/bin/env bash
# Idempotent set-up of a fresh Debian 12 machine for moor's demo and tests (run as root).
# Installs Debian packages, builds .venv from /usr/bin/python3 with system site packages (bcc
# comes from python3-bpfcc), links the kernel headers bcc needs and mounts tracefs.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

if [ "$(id -u)" != 0 ]; then
    echo "setup: run as root (network namespaces, netlink and eBPF need it)" >&2
    exit 1
fi

PKGS=(
    python3 python3-venv python3-pip python3-bpfcc linux-headers-amd64 bpfcc-tools
    iproute2 iputils-ping tcpdump procps iperf3 nftables conntrack
    containernetworking-plugins podman runc busybox-static etcd-server bird2 gobgpd frr
    mmdebstrap containerd systemd  # the image (deploy/image), its containerd test, the unit's systemd-analyze
    gcc libc6-dev  # moor install builds the C CNI client (cni/client.c) with them; without, the Python client
)
installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
# The VM back end (lab/vm.py, tests/vm): QEMU and its virtiofsd boot Debian's cloud kernel, which has
# the 8021q this machine's kernel lacks; vagrant and its libvirt provider validate vagrant/Vagrantfile.
# MOOR_SETUP_VM=0 leaves them out (vagrant/provision.sh: that VM's kernel has 8021q itself).
if [ "${MOOR_SETUP_VM:-1}" != 0 ]; then
    PKGS+=(qemu-system-x86 vagrant vagrant-libvirt)
    if [ -e /etc/kernel/postinst.d/zz-update-grub ]; then
        # a machine that boots with GRUB would get the cloud kernel in its boot menu
        installed linux-image-cloud-amd64 ||
            echo "setup: GRUB boots this machine: not installing linux-image-cloud-amd64 (tests/vm will skip)" >&2
        installed linux-image-6.12-cloud-amd64 ||
            echo "setup: GRUB boots this machine: not installing linux-image-6.12-cloud-amd64 (the netkit VM test will skip)" >&2
    else
        # bookworm's 6.1 (8021q, netem as modules) and its 6.12 (netkit, CONFIG_NETKIT=y): the VM
        # boots the newest one, which runs the VLAN and the netkit tests alike
        PKGS+=(linux-image-cloud-amd64 linux-image-6.12-cloud-amd64)
        # a kernel package needs an initramfs generator: where none is installed (a container, CI's
        # VM) the tiny one, not initramfs-tools (udev, a systemd upgrade); never beside
        # initramfs-tools or dracut, which it conflicts with
        installed initramfs-tools || installed dracut || PKGS+=(tiny-initramfs)
    fi
fi
missing=()
for p in "${PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "setup: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# bcc compiles against /lib/modules/$(uname -r)/build and reads the tree in .../source; the installed
# headers may belong to another kernel (the probe reads struct offsets from BTF, never from these
# headers). Debian splits them: build -> linux-headers-X-amd64 (config, generated headers), source ->
# linux-headers-X-common (the tree with include/linux/kconfig.h).
KREL=$(uname -r)
HDR=$(ls -d /usr/src/linux-headers-*-amd64 2>/dev/null | sort -V | tail -1 || true)
if [ -n "$HDR" ]; then
    COMMON=${HDR%-amd64}-common
    mkdir -p "/lib/modules/$KREL"
    [ -e "/lib/modules/$KREL/build/Makefile" ] || ln -sfn "$HDR" "/lib/modules/$KREL/build"
    if [ ! -e "/lib/modules/$KREL/source/include/linux/kconfig.h" ] && [ -e "$COMMON/include/linux/kconfig.h" ]; then
        ln -sfn "$COMMON" "/lib/modules/$KREL/source"
    fi
fi
if ! mountpoint -q /sys/kernel/tracing 2>/dev/null; then
    mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null || echo "setup: could not mount tracefs" >&2
fi

# names for moor's route protocol numbers, so `ip route` shows "proto moor"
mkdir -p /etc/iproute2/rt_protos.d
printf '109\tmoor\n110\tmoor-shim\n111\tmoor-bgp\n' > /etc/iproute2/rt_protos.d/moor.conf

if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c 'import sys; sys.exit(sys.base_prefix != "/usr")' 2>/dev/null; then
    rm -rf .venv
    /usr/bin/python3 -m venv --system-site-packages .venv
fi
STAMP=.venv/.moor-installed
if [ ! -f "$STAMP" ] || [ pyproject.toml -nt "$STAMP" ]; then
    # compat mode: a .pth path entry, not an import-hook finder (~15 ms more per interpreter start)
    .venv/bin/pip install -q --disable-pip-version-check -e ".[test]" --config-settings editable_mode=compat
    touch "$STAMP"
fi
# a CNI bin dir as a node has it: moor's fast launcher next to the reference plugins
mkdir -p "$ROOT/.venv/cni"
.venv/bin/python -m cni.install --develop "$ROOT/.venv/cni" >/dev/null
for p in /usr/lib/cni/*; do ln -sfn "$p" "$ROOT/.venv/cni/$(basename "$p")"; done
