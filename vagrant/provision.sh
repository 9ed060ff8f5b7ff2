#!/usr/bin/env bash
# Provisioning for vagrant/Vagrantfile (runs as root inside the Debian 12 VM, the repo at /moor):
# make sure the kernel has 8021q, install what the lab needs, run the lab and the VLAN test that
# the namespace machine skips. Not exercised by CI (see the Vagrantfile).
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

# the lab: macvlan, routed/BGP with BIRD and moord, the UDP loss cases; exits non-zero on any failed check
./run demo

# the VLAN case: with 8021q the sharing test must run and pass (not skip); the no-8021q error-path
# test skips here by design
out=$(./run test tests/integration/test_vlan.py -v -rs 2>&1) || { echo "$out"; exit 1; }
echo "$out"
if ! grep -q "test_pods_share_the_vlan_parent_and_the_last_one_removes_it PASSED" <<<"$out"; then
    echo "provision: the VLAN sharing test did not run and pass on this kernel" >&2
    exit 1
fi
echo "provision: the lab and the VLAN test passed"
