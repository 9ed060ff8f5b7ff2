#!/usr/bin/env bash
# Provisioning for vagrant/Vagrantfile (runs as root inside the Debian 12 VM, the repo at /moor):
# make sure the kernel has 8021q, install what the lab needs, run the lab and the VLAN tests that
# the namespace machine skips (CI runs those in a QEMU VM instead: tests/vm). CI checks this file's
# syntax and `vagrant validate`s the Vagrantfile (tests/vm/test_vagrant.py); `vagrant up` has not run.
set -euo pipefail
REPO=${1:-/moor}
cd "$REPO"

# VLAN sub-interfaces: the stock Debian kernel ships 8021q as a module
modprobe 8021q
test -d /sys/module/8021q || { echo "provision: this kernel has no 8021q" >&2; exit 1; }

# the lab's buggy-gateway case needs nft (a Debian 12 default, installed here in case the box lacks
# it); scripts/setup.sh (run by ./run) installs everything else: Debian packages, .venv, plugins
export DEBIAN_FRONTEND=noninteractive
if ! command -v nft >/dev/null; then
    apt-get update -q
    apt-get install -y -q --no-install-recommends nftables
fi

# scripts/setup.sh (run by ./run) without the VM back end (QEMU, Debian's cloud kernel, vagrant):
# this VM's kernel has 8021q, so the VLAN tests run here directly instead of in a nested VM
export MOOR_SETUP_VM=0

# the lab, through its documented entry point: `./run demo` is `.venv/bin/python -m lab demo`
# (macvlan, routed/BGP with BIRD and moord, the UDP loss cases); exits non-zero on any failed check
./run demo
# a VLAN case of the lab, where the lab has one (`python -m lab list` names its cases)
cases=$(.venv/bin/python -m lab list 2>/dev/null || true)
if grep -qE '^[[:space:]]*vlan([[:space:]]|$)' <<<"$cases"; then
    .venv/bin/python -m lab vlan
fi

# the VLAN tests: with 8021q every one must run and pass (not skip), except the no-8021q
# error-path test, which skips here by design
out=$(./run test tests/integration/test_vlan.py -v -rs 2>&1) || { echo "$out"; exit 1; }
echo "$out"
not_passed=$(grep -E "::test_[^ ]* (SKIPPED|FAILED|ERROR)" <<<"$out" | grep -v "test_vlan_add_fails_cleanly_without_8021q" || true)
if ! grep -q "test_pods_share_the_vlan_parent_and_the_last_one_removes_it PASSED" <<<"$out" || [ -n "$not_passed" ]; then
    echo "provision: the VLAN tests did not all run and pass on this kernel" >&2
    exit 1
fi
echo "provision: the lab and the VLAN tests passed"
