"""Run a command on a kernel this machine lacks: Debian's cloud kernel booted under QEMU.

    host                                        guest (linux-image-cloud-amd64, its own modules)
    /  --ro bind, private mount ns--> virtiofsd ==vhost-user-fs "root"==> overlay lower ─┐
                                                            tmpfs upper ───────────────┴─> /
    <run dir>/out  --> virtiofsd ==vhost-user-fs "out"==> /run/moor-vm/out (read-write)
    kernel + a tiny initramfs built here (busybox-static, the virtio/virtiofs/overlay modules)

The guest sees the host's root file system (Python, the venv, iproute2, the CNI plugins, this
repo) read-only under a tmpfs overlay, so it writes anywhere and nothing reaches the host but
the `out` directory; /run, /tmp, /var/tmp and /var/lib/moor are fresh tmpfs. It loads the
requested modules (`modprobe 8021q`), runs one command and powers off; the command's exit code,
stdout and stderr come back through `out`, where the command may leave files too ($MOOR_VM_OUT).
Network namespaces, veth, macvlan and VLAN sub-interfaces work in the guest as on the host; the
guest has no NIC. Only Debian packages are used (scripts/setup.sh installs them):
qemu-system-x86 (qemu-system-x86_64 and virtiofsd), linux-image-cloud-amd64, busybox-static.

The cloud kernel has no 9p, hence virtiofs (QEMU's virtiofsd, shared memory from a memfd).
Software emulation (TCG) by default; MOOR_VM_ACCEL=kvm asks for KVM where it works (nested
KVM does not on this project's machines, see choose_accel). A run that does not finish within
`timeout` seconds is killed (a hang guard, not a performance bound).

    python -m lab.vm [--modules 8021q,...] [--timeout S] -- COMMAND [ARG...]
"""
from __future__ import annotations

import argparse
import glob
import gzip
import io
import lzma
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Optional, Sequence

QEMU = "qemu-system-x86_64"
VIRTIOFSD = ("/usr/lib/qemu/virtiofsd", "/usr/libexec/virtiofsd", "/usr/lib/virtiofsd")
BUSYBOX = ("/bin/busybox", "/usr/bin/busybox")
KERNEL_GLOB = "/boot/vmlinuz-*-cloud-amd64"
MODULES_ROOT = "/lib/modules"
GUEST_RUN = "/run/moor-vm"
GUEST_OUT = f"{GUEST_RUN}/out"
# what the initramfs loads to reach the shared root (dependencies are added from modules.dep)
BOOT_MODULES = ("virtio_pci", "virtiofs", "overlay")
# fresh in the guest: the host's own state under these paths must not leak into it
GUEST_TMPFS = ("/run", "/tmp", "/var/tmp", "/var/lib/moor")
GUEST_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class VMUnavailable(RuntimeError):
    """This host cannot boot the guest; the message says exactly what is missing."""


class VMError(RuntimeError):
    """The guest did not boot, did not finish, or did not report a result."""


@dataclass
class GuestKernel:
    version: str
    image: Path
    modules: Path


@dataclass
class VMResult:
    returncode: int
    stdout: str
    stderr: str
    console: str               # the guest's serial console (kernel messages, init's progress)
    out: Path                  # the shared directory ($MOOR_VM_OUT in the guest)
    accel: str                 # "kvm" or "tcg"
    kernel: str                # the guest's kernel version
    boot_seconds: float        # QEMU started -> the guest is ready to run the command (host clock)
    command_seconds: float     # the command alone (guest clock)
    total_seconds: float       # QEMU started -> QEMU exited (host clock)
    modules: dict[str, str] = field(default_factory=dict)  # requested module -> "ok" or modprobe's error


def find_cloud_kernel() -> Optional[GuestKernel]:
    """The newest installed Debian cloud kernel whose modules are installed too."""
    found = []
    for image in glob.glob(KERNEL_GLOB):
        version = os.path.basename(image)[len("vmlinuz-"):]
        mods = Path(MODULES_ROOT) / version
        if (mods / "modules.dep").is_file():
            found.append(GuestKernel(version, Path(image), mods))
    if not found:
        return None
    return max(found, key=lambda k: [int(x) if x.isdigit() else x for x in re.split(r"[.-]", k.version)])


def _is_static(path: str) -> bool:
    """An ELF executable without a program interpreter runs in an initramfs without a libc."""
    with open(path, "rb") as f:
        ident = f.read(64)
        if ident[:4] != b"\x7fELF" or ident[4] != 2:  # 64-bit ELF only (this is an x86_64 runner)
            return False
        phoff = int.from_bytes(ident[32:40], "little")
        phentsize = int.from_bytes(ident[54:56], "little")
        phnum = int.from_bytes(ident[56:58], "little")
        f.seek(phoff)
        table = f.read(phentsize * phnum)
    return all(int.from_bytes(table[i * phentsize:i * phentsize + 4], "little") != 3  # PT_INTERP
               for i in range(phnum))


def _find_virtiofsd() -> Optional[str]:
    for p in VIRTIOFSD:
        if os.access(p, os.X_OK):
            return p
    return shutil.which("virtiofsd")


def _find_busybox() -> Optional[str]:
    for p in BUSYBOX:
        if os.access(p, os.X_OK) and _is_static(p):
            return p
    return None


def why_not() -> Optional[str]:
    """Why this host cannot run the guest, or None when it can."""
    if os.path.isdir(GUEST_RUN):
        return f"already inside a moor VM ({GUEST_RUN} exists): no VM in the VM"
    if os.geteuid() != 0:
        return "the VM runner needs root (virtiofsd shares the root file system through a private bind mount)"
    if shutil.which(QEMU) is None:
        return f"{QEMU} not found (Debian package qemu-system-x86; scripts/setup.sh installs it)"
    if _find_virtiofsd() is None:
        return "virtiofsd not found in " + ", ".join(VIRTIOFSD) + " or PATH (Debian 12 ships it in qemu-system-common)"
    if find_cloud_kernel() is None:
        return (f"no Debian cloud kernel with its modules ({KERNEL_GLOB} and {MODULES_ROOT}/<version>/modules.dep; "
                "Debian package linux-image-cloud-amd64, scripts/setup.sh installs it)")
    if _find_busybox() is None:
        return "no static busybox in " + ", ".join(BUSYBOX) + " (Debian package busybox-static) for the initramfs"
    if shutil.which("unshare") is None:
        return "unshare (util-linux) not found: needed for the private read-only bind of /"
    return None


def choose_accel() -> str:
    """Software emulation (TCG) unless MOOR_VM_ACCEL=kvm. Not KVM by default even where /dev/kvm
    opens: on this project's machines (themselves VMs) nested KVM fails (QEMU aborts setting MSR
    0x10a with -cpu host/max, and the guest hangs in early boot without arch-capabilities), while
    TCG boots the cloud kernel in seconds."""
    forced = os.environ.get("MOOR_VM_ACCEL", "").strip()
    return forced if forced in ("kvm", "tcg") else "tcg"


# --- the initramfs -------------------------------------------------------------------------------

def module_closure(modules_dir: Path, names: Iterable[str]) -> list[Path]:
    """The .ko files for `names` and everything they depend on (modules.dep), dependencies first.
    A name built into the kernel (modules.builtin) needs nothing."""
    deps: dict[str, list[str]] = {}
    by_name: dict[str, str] = {}
    for line in (modules_dir / "modules.dep").read_text().splitlines():
        if ":" not in line:
            continue
        mod, rest = line.split(":", 1)
        deps[mod] = rest.split()
        by_name[_modname(mod)] = mod
    builtin = set()
    if (modules_dir / "modules.builtin").is_file():
        builtin = {_modname(l) for l in (modules_dir / "modules.builtin").read_text().split()}
    order: list[str] = []
    seen: set[str] = set()

    def visit(mod: str) -> None:
        if mod in seen:
            return
        seen.add(mod)
        for d in deps.get(mod, []):
            visit(d)
        order.append(mod)

    for name in names:
        key = name.replace("-", "_")
        if key in by_name:
            visit(by_name[key])
        elif key not in builtin:
            raise VMError(f"module {name} is neither in {modules_dir}/modules.dep nor built into the kernel")
    return [modules_dir / m for m in order]


def _modname(path: str) -> str:
    base = os.path.basename(path)
    return base.split(".ko", 1)[0].replace("-", "_")


def _module_bytes(path: Path) -> bytes:
    """The plain ELF of a module: Debian may ship them as .ko, .ko.xz or .ko.zst."""
    data = path.read_bytes()
    if path.name.endswith(".ko.xz"):
        return lzma.decompress(data)
    if path.name.endswith(".ko.gz"):
        return gzip.decompress(data)
    if path.name.endswith(".ko.zst"):
        zstd = shutil.which("zstd")
        if zstd is None:
            raise VMError(f"{path} is zstd-compressed and no zstd binary is installed")
        return subprocess.run([zstd, "-dc"], input=data, capture_output=True, check=True).stdout
    return data


class _Cpio:
    """The newc cpio format the kernel unpacks as its initramfs."""

    def __init__(self) -> None:
        self.buf = io.BytesIO()
        self.ino = 1

    def _entry(self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)) -> None:
        fields = [self.ino, mode, 0, 0, 2 if mode & 0o040000 else 1, 0, len(data), 0, 0, rdev[0], rdev[1],
                  len(name) + 1, 0]
        self.ino += 1
        self.buf.write(b"070701" + b"".join(b"%08X" % v for v in fields) + name.encode() + b"\0")
        self.buf.write(b"\0" * (-self.buf.tell() % 4))
        self.buf.write(data)
        self.buf.write(b"\0" * (-self.buf.tell() % 4))

    def dir(self, name: str) -> None:
        self._entry(name, 0o040755)

    def file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        self._entry(name, 0o100000 | mode, data)

    def symlink(self, name: str, target: str) -> None:
        self._entry(name, 0o120777, target.encode())

    def chardev(self, name: str, major: int, minor: int) -> None:
        self._entry(name, 0o020600, rdev=(major, minor))

    def finish(self) -> bytes:
        self._entry("TRAILER!!!", 0)
        return self.buf.getvalue()


STAGE1 = r"""#!/bin/sh
# moor-vm stage 1 (busybox, in the initramfs): reach the host's root over virtiofs, overlay it
# with a tmpfs, mount the shares, switch to stage 2 in that root. Any failure powers off at once.
/bin/busybox --install -s /bin
export PATH=/bin
fail() { echo "moor-vm: stage 1: $*"; sync; echo b > /proc/sysrq-trigger; sleep 10; }
mount -t proc proc /proc && mount -t sysfs sysfs /sys && mount -t devtmpfs devtmpfs /dev || fail "proc/sys/dev"
. /moor-vm.conf
for m in $MODULES; do insmod "/modules/$m.ko" || fail "insmod $m"; done
mkdir -p /lower /upper /newroot
mount -t virtiofs -o ro root /lower || fail "mount the root share (virtiofs tag root)"
mount -t tmpfs -o mode=0755 upper /upper && mkdir /upper/data /upper/work || fail "tmpfs upper"
mount -t overlay -o lowerdir=/lower,upperdir=/upper/data,workdir=/upper/work overlay /newroot || fail "overlay"
for d in $TMPFS; do case $d in /tmp|/var/tmp) mode=1777;; *) mode=0755;; esac
    mkdir -p "/newroot$d" && mount -t tmpfs -o mode=$mode tmpfs "/newroot$d" || fail "tmpfs $d"; done
i=0
for p in $OVERLAYS; do
    i=$((i+1)); mkdir -p "/x$i/lower" "/x$i/upper" || fail "mkdir /x$i"
    mount -t virtiofs -o ro "x$i" "/x$i/lower" && mount -t tmpfs -o mode=0755 tmpfs "/x$i/upper" &&
        mkdir "/x$i/upper/data" "/x$i/upper/work" && mkdir -p "/newroot$p" &&
        mount -t overlay -o "lowerdir=/x$i/lower,upperdir=/x$i/upper/data,workdir=/x$i/upper/work" overlay "/newroot$p" ||
        fail "overlay share x$i on $p"
done
mkdir -p "/newroot$GUEST_OUT" && mount -t virtiofs out "/newroot$GUEST_OUT" || fail "mount the out share"
cp /stage2.sh "/newroot$GUEST_RUN/stage2.sh" || fail "copy stage 2"
for m in /proc /sys /dev; do mount --move "$m" "/newroot$m" || fail "move $m"; done
exec switch_root /newroot /bin/sh "$GUEST_RUN/stage2.sh"
fail "switch_root"
"""

STAGE2 = r"""# moor-vm stage 2 (pid 1 in the overlaid host root): load the modules, run the command, power off.
export PATH={path}
O={out}
off() {{ sync; echo b > /proc/sysrq-trigger; sleep 10; }}
trap off EXIT
mkdir -p /dev/pts /dev/shm /dev/mqueue
mount -t devpts -o gid=5,mode=0620,ptmxmode=0666 devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
mount -t cgroup2 cgroup2 /sys/fs/cgroup 2>/dev/null
mount -t bpf bpf /sys/fs/bpf 2>/dev/null
mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null
for l in fd:/proc/self/fd stdin:/proc/self/fd/0 stdout:/proc/self/fd/1 stderr:/proc/self/fd/2; do
    [ -e "/dev/${{l%%:*}}" ] || ln -s "${{l#*:}}" "/dev/${{l%%:*}}"
done
mkdir -p /run/netns /run/lock
hostname moor-vm
ip link set lo up
MODPROBE=modprobe
command -v modprobe >/dev/null || MODPROBE="{busybox} modprobe"
: > "$O/vm-modules"
MODULES={modules}
for m in $MODULES; do  # one line each: the name, then "ok" or modprobe's message
    if err=$($MODPROBE "$m" 2>&1); then echo "$m ok"; else echo "$m" $err; fi >> "$O/vm-modules"
done
uname -r > "$O/vm-kernel"
read up idle < /proc/uptime; echo "$up" > "$O/vm-ready.tmp" && mv "$O/vm-ready.tmp" "$O/vm-ready"
echo "moor-vm: running the command"
cd {cwd} || {{ echo "moor-vm: no directory {cwd} in the guest" > "$O/vm-stderr"; : > "$O/vm-stdout"
    echo "0 0" > "$O/vm-times"; echo 126 > "$O/vm-rc"; exit; }}
read t0 idle < /proc/uptime
env -i {env} {argv} < /dev/null > "$O/vm-stdout" 2> "$O/vm-stderr"
rc=$?
read t1 idle < /proc/uptime
echo "$t0 $t1" > "$O/vm-times"
echo "$rc" > "$O/vm-rc.tmp" && mv "$O/vm-rc.tmp" "$O/vm-rc"
echo "moor-vm: the command exited $rc"
"""


def build_initramfs(kernel: GuestKernel, busybox: str, conf: Mapping[str, str], stage2: str) -> bytes:
    cpio = _Cpio()
    for d in ("bin", "dev", "proc", "sys", "modules"):
        cpio.dir(d)
    cpio.chardev("dev/console", 5, 1)
    cpio.chardev("dev/null", 1, 3)
    cpio.file("bin/busybox", Path(busybox).read_bytes(), 0o755)
    cpio.symlink("bin/sh", "busybox")
    cpio.file("init", STAGE1.encode(), 0o755)
    cpio.file("stage2.sh", stage2.encode(), 0o644)
    names = []
    for ko in module_closure(kernel.modules, BOOT_MODULES):
        name = _modname(str(ko))
        cpio.file(f"modules/{name}.ko", _module_bytes(ko))
        names.append(name)
    conf = dict(conf, MODULES=" ".join(names))
    cpio.file("moor-vm.conf", "".join(f"{k}={shlex.quote(v)}\n" for k, v in conf.items()).encode())
    return gzip.compress(cpio.finish(), compresslevel=1)


# --- the host side -------------------------------------------------------------------------------

def _mount_root(path: str) -> str:
    """The mount point holding `path` (the top of its file system as seen here)."""
    p = os.path.realpath(path)
    dev = os.stat(p).st_dev
    while p != "/" and os.stat(os.path.dirname(p)).st_dev == dev:
        p = os.path.dirname(p)
    return p


def _start_virtiofsd(virtiofsd: str, source: str, sock: Path, log: Path, readonly: bool,
                     mnt: Optional[Path] = None) -> subprocess.Popen:
    """virtiofsd for one share. Read-only: in a private mount namespace, `source` bind-mounted
    (without the mounts below it: no host /proc, /sys, /dev or netns files) and remounted ro,
    so the guest cannot write the host's files whatever it does."""
    opts = ["-o", "sandbox=chroot", "-o", "cache=always" if readonly else "cache=none", "-o", "no_posix_lock"]
    if readonly:
        assert mnt is not None
        mnt.mkdir()
        script = ('mount --bind "$1" "$2" && mount -o remount,bind,ro "$2" && shift 2 && exec "$@"')
        cmd = ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", source, str(mnt),
               virtiofsd, f"--socket-path={sock}", "-o", f"source={mnt}", *opts]
    else:
        cmd = [virtiofsd, f"--socket-path={sock}", "-o", f"source={source}", *opts]
    with open(log, "ab") as f:
        return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _tail(text: str, lines: int = 60) -> str:
    """The end of a console log, without the firmware's terminal escape sequences."""
    text = re.sub(r"\x1b(\[[0-9;?]*[A-Za-z]|c)", "", text)
    return "\n".join(text.splitlines()[-lines:])


def run(argv: Sequence[str], *, cwd: str, env: Optional[Mapping[str, str]] = None,
        modules: Sequence[str] = ("8021q",), memory_mb: int = 2048, cpus: int = 2, timeout: float = 600,
        accel: Optional[str] = None, workdir: Optional[Path] = None) -> VMResult:
    """Boot the guest, run `argv` in `cwd` as root with `env` (plus PATH, HOME, LANG and
    MOOR_VM_OUT), and return its exit code and output. `workdir` (a fresh temp dir by default,
    removed afterwards) holds the sockets, the initramfs, the console log and `out`."""
    reason = why_not()
    if reason:
        raise VMUnavailable(reason)
    kernel = find_cloud_kernel()
    assert kernel is not None
    virtiofsd, busybox = _find_virtiofsd(), _find_busybox()
    assert virtiofsd and busybox
    accel = accel or choose_accel()
    for m in modules:
        if not re.fullmatch(r"[A-Za-z0-9_-]+", m):
            raise ValueError(f"bad module name {m!r}")

    if any(os.path.realpath(cwd) == d or os.path.realpath(cwd).startswith(d + "/") for d in ("/dev", "/proc", "/sys")):
        raise ValueError(f"cwd {cwd}: the guest has its own /dev, /proc and /sys")
    own_dir = workdir is None
    work = Path(tempfile.mkdtemp(prefix="moor-vm-")) if workdir is None else Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    out = work / "out"
    out.mkdir()
    os.chmod(out, 0o777)

    # paths the guest must see that are not on the root file system (a CI clone on a tmpfs, a
    # separate /usr) come as extra read-only shares, each overlaid with a tmpfs like the root
    keep = [os.path.realpath(p) for p in (cwd, "/usr", str(kernel.modules), sys.base_prefix, sys.prefix)]
    if os.path.isabs(argv[0]):
        keep.append(os.path.realpath(argv[0]))
    root_dev = os.stat("/").st_dev
    overlays = sorted({_mount_root(p) for p in keep if os.path.exists(p) and os.stat(p).st_dev != root_dev})
    tmpfs = [d for d in GUEST_TMPFS if not any(k == d or k.startswith(d + "/") for k in keep + overlays)]
    if "/run" not in tmpfs:
        raise ValueError(f"{cwd}: the guest's /run is its own (a fresh tmpfs)")

    full_env = {"PATH": GUEST_PATH, "HOME": "/root", "LANG": "C.UTF-8", "TERM": "dumb", "MOOR_VM_OUT": GUEST_OUT}
    full_env.update(env or {})
    stage2 = STAGE2.format(path=GUEST_PATH, out=GUEST_OUT, busybox=shlex.quote(busybox),
                           modules=shlex.quote(" ".join(modules)), cwd=shlex.quote(cwd),
                           env=" ".join(shlex.quote(f"{k}={v}") for k, v in full_env.items()),
                           argv=shlex.join(argv))
    conf = {"GUEST_RUN": GUEST_RUN, "GUEST_OUT": GUEST_OUT, "TMPFS": " ".join(tmpfs), "OVERLAYS": " ".join(overlays)}
    initrd = work / "initrd.img"
    initrd.write_bytes(build_initramfs(kernel, busybox, conf, stage2))

    console_log, fsd_log = work / "console.log", work / "virtiofsd.log"
    shares = [("root", "/", True)] + [(f"x{i + 1}", p, True) for i, p in enumerate(overlays)] + [("out", str(out), False)]
    procs: list[subprocess.Popen] = []
    qemu: Optional[subprocess.Popen] = None
    try:
        socks = []
        for tag, source, ro in shares:
            sock = work / f"{tag}.sock"
            procs.append(_start_virtiofsd(virtiofsd, source, sock, fsd_log, ro, work / f"{tag}.mnt"))
            socks.append((tag, sock))
        deadline = time.monotonic() + 60
        while not all(s.exists() for _, s in socks):
            dead = [p for p in procs if p.poll() is not None]
            if dead or time.monotonic() > deadline:
                raise VMError(f"virtiofsd did not start: {_tail(fsd_log.read_text(errors='replace'))}")
            time.sleep(0.02)

        cmd = [QEMU, "-nographic", "-nodefaults", "-no-reboot", "-serial", "stdio", "-monitor", "none",
               "-machine", f"q35,accel={accel}", "-cpu", "host" if accel == "kvm" else "max",
               "-smp", str(cpus), "-m", f"{memory_mb}M",
               "-object", f"memory-backend-memfd,id=mem,size={memory_mb}M,share=on", "-numa", "node,memdev=mem",
               "-kernel", str(kernel.image), "-initrd", str(initrd),
               "-append", "console=ttyS0 panic=-1 rdinit=/init loglevel=4 quiet"]
        for i, (tag, sock) in enumerate(socks):
            cmd += ["-chardev", f"socket,id=fs{i},path={sock}",
                    "-device", f"vhost-user-fs-pci,chardev=fs{i},tag={tag},queue-size=1024"]
        t0 = time.monotonic()
        boot = None
        with open(console_log, "wb") as clog:
            qemu = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=clog, stderr=subprocess.STDOUT)
            while qemu.poll() is None:
                now = time.monotonic()
                if boot is None and (out / "vm-ready").exists():
                    boot = now - t0
                if now - t0 > timeout:
                    _stop(qemu)
                    raise VMError(f"the guest did not finish within {timeout:.0f} s (hang guard); console:\n"
                                  f"{_tail(console_log.read_text(errors='replace'))}")
                time.sleep(0.05)
        total = time.monotonic() - t0
        console = console_log.read_text(errors="replace")
        if not (out / "vm-rc").exists():
            raise VMError(f"the guest ended without a result (QEMU exit {qemu.returncode}); console:\n"
                          f"{_tail(console)}")
        mods = {}
        for line in (out / "vm-modules").read_text().splitlines():
            name, _, status = line.partition(" ")
            mods[name] = status
        t_start, t_end = (float(x) for x in (out / "vm-times").read_text().split())
        if boot is None:  # finished between two polls: the guest's own clock is the next best
            boot = total - (t_end - t_start)
        return VMResult(returncode=int((out / "vm-rc").read_text()),
                        stdout=(out / "vm-stdout").read_text(errors="replace"),
                        stderr=(out / "vm-stderr").read_text(errors="replace"),
                        console=console, out=out, accel=accel, kernel=(out / "vm-kernel").read_text().strip(),
                        boot_seconds=boot, command_seconds=t_end - t_start, total_seconds=total, modules=mods)
    finally:
        if qemu is not None:
            _stop(qemu)
        for p in procs:
            _stop(p)
        if own_dir:
            shutil.rmtree(work, ignore_errors=True)


def main(args: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lab.vm", description=__doc__.split("\n\n")[0])
    ap.add_argument("--modules", default="8021q", help="comma-separated modules to modprobe first (default 8021q)")
    ap.add_argument("--timeout", type=float, default=600, help="hang guard in seconds (default 600)")
    ap.add_argument("--cwd", default=os.getcwd())
    ap.add_argument("--accel", choices=("kvm", "tcg"))
    ap.add_argument("command", nargs="+")
    a = ap.parse_args(args)
    try:
        r = run(a.command, cwd=a.cwd, modules=[m for m in a.modules.split(",") if m], timeout=a.timeout,
                accel=a.accel, workdir=None)
    except VMUnavailable as e:
        print(f"lab.vm: cannot run a VM here: {e}", file=sys.stderr)
        return 2
    except VMError as e:
        print(f"lab.vm: {e}", file=sys.stderr)
        return 1
    sys.stdout.write(r.stdout)
    sys.stderr.write(r.stderr)
    bad = {m: s for m, s in r.modules.items() if s != "ok"}
    print(f"lab.vm: kernel {r.kernel} ({r.accel}), boot {r.boot_seconds:.1f} s, command {r.command_seconds:.1f} s, "
          f"total {r.total_seconds:.1f} s, exit {r.returncode}" + (f", modprobe failed: {bad}" if bad else ""),
          file=sys.stderr)
    return r.returncode


if __name__ == "__main__":
    sys.exit(main())
