"""The VM runner's pieces that need no VM: the exact reason it cannot run, the module list of the
initramfs (dependencies first), and the cpio archive the kernel unpacks."""
from __future__ import annotations

import gzip
import shutil
import subprocess
from pathlib import Path

import pytest

from lab import vm


@pytest.fixture
def as_root(monkeypatch):
    monkeypatch.setattr(vm.os, "geteuid", lambda: 0)
    monkeypatch.setattr(vm, "GUEST_RUN", "/nonexistent/moor-vm")


def test_why_not_names_the_missing_package(as_root, monkeypatch):
    monkeypatch.setattr(vm, "QEMU", "qemu-system-moor-nonexistent")
    assert vm.why_not() == ("qemu-system-moor-nonexistent not found (Debian package qemu-system-x86; "
                            "scripts/setup.sh installs it)")


def test_why_not_without_a_cloud_kernel(as_root, monkeypatch):
    monkeypatch.setattr(vm.shutil, "which", lambda name: f"/usr/bin/{name}")
    monkeypatch.setattr(vm, "_find_virtiofsd", lambda: "/usr/lib/qemu/virtiofsd")
    monkeypatch.setattr(vm, "KERNEL_GLOB", "/nonexistent/vmlinuz-*-cloud-amd64")
    assert vm.find_cloud_kernel() is None
    assert vm.why_not() == ("no Debian cloud kernel with its modules (/nonexistent/vmlinuz-*-cloud-amd64 and "
                            "/lib/modules/<version>/modules.dep; Debian package linux-image-cloud-amd64, "
                            "scripts/setup.sh installs it)")


def test_module_closure_puts_dependencies_first(tmp_path: Path):
    (tmp_path / "modules.dep").write_text(
        "kernel/fs/fuse/virtiofs.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko "
        "kernel/fs/fuse/fuse.ko\n"
        "kernel/fs/fuse/fuse.ko:\n"
        "kernel/drivers/virtio/virtio_ring.ko: kernel/drivers/virtio/virtio.ko\n"
        "kernel/drivers/virtio/virtio.ko:\n"
        "kernel/net/8021q/8021q.ko.xz: kernel/net/802/garp.ko.xz\n"
        "kernel/net/802/garp.ko.xz:\n")
    (tmp_path / "modules.builtin").write_text("kernel/fs/overlayfs/overlay.ko\n")
    got = [str(p.relative_to(tmp_path)) for p in vm.module_closure(tmp_path, ["virtiofs", "overlay", "8021q"])]
    assert got == ["kernel/drivers/virtio/virtio.ko", "kernel/drivers/virtio/virtio_ring.ko",
                   "kernel/fs/fuse/fuse.ko", "kernel/fs/fuse/virtiofs.ko",
                   "kernel/net/802/garp.ko.xz", "kernel/net/8021q/8021q.ko.xz"]
    with pytest.raises(vm.VMError, match="module nosuch is neither"):
        vm.module_closure(tmp_path, ["nosuch"])


def test_compressed_modules_are_unpacked(tmp_path: Path):
    import lzma
    (tmp_path / "a.ko.xz").write_bytes(lzma.compress(b"\x7fELF-a"))
    (tmp_path / "b.ko").write_bytes(b"\x7fELF-b")
    assert vm._module_bytes(tmp_path / "a.ko.xz") == b"\x7fELF-a"
    assert vm._module_bytes(tmp_path / "b.ko") == b"\x7fELF-b"


def test_the_cpio_archive_unpacks(tmp_path: Path):
    busybox = shutil.which("busybox")
    if busybox is None:
        pytest.skip("busybox not installed (Debian package busybox-static; scripts/setup.sh installs it)")
    c = vm._Cpio()
    c.dir("bin")
    c.file("bin/hello", b"#!/bin/sh\necho hi\n", 0o755)
    c.file("odd", b"x" * 5)
    c.symlink("bin/sh", "busybox")
    data = gzip.compress(c.finish())
    dest = tmp_path / "root"
    dest.mkdir()
    subprocess.run([busybox, "cpio", "-i", "-d", "-H", "newc"], input=gzip.decompress(data), cwd=dest, check=True,
                   capture_output=True)
    assert (dest / "bin/hello").read_bytes() == b"#!/bin/sh\necho hi\n"
    assert (dest / "bin/hello").stat().st_mode & 0o777 == 0o755
    assert (dest / "odd").read_bytes() == b"xxxxx"
    assert (dest / "bin/sh").is_symlink() and str((dest / "bin/sh").readlink()) == "busybox"
