"""Build moor's container image from Debian packages, with no registry: an OCI image archive that
`ctr images import` and `podman load` take.

    ./run image [--out moor-image.tar] [--suite bookworm] [--mirror URL]

The root filesystem is Debian (`mmdebstrap --variant=minbase`) with python3, python3-bpfcc (bcc, for
the drop probe) and iproute2 (for an operator's `kubectl exec ... ip route`); moor goes in with
`moor install --root` exactly as on a node, under /opt/moor, so the image's moord, netdiag and the
`moor install` its init container runs are the same self-contained copy a node gets. One layer,
written reproducibly (sorted, numeric owners, clamped times): the same inputs give the same digest.

The image runs `/opt/moor/bin/moord --config /etc/moor/moord.yaml`; deploy/kubernetes/moor.yaml runs
it as a DaemonSet. bcc compiles the probe against the node's kernel headers at run time, so the
DaemonSet mounts the host's /lib/modules and /usr/src (read-only).
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ["python3", "python3-bpfcc", "iproute2"]
REPOSITORY = "localhost/moor"  # no registry: imported on each node (or pushed by the operator)
# what a minimal runtime image does not need: documentation, manuals, translations
EXCLUDES = ["/usr/share/doc/*", "/usr/share/man/*", "/usr/share/info/*", "/usr/share/locale/*",
            "/usr/share/lintian/*"]


class BuildError(Exception):
    pass


def version() -> str:
    for line in (ROOT / "pyproject.toml").read_text().splitlines():
        if line.startswith("version = "):
            return line.split('"')[1]
    raise BuildError("pyproject.toml has no version")


def rootfs(target: Path, suite: str, mirror: str | None) -> None:
    if shutil.which("mmdebstrap") is None:
        raise BuildError("mmdebstrap is not installed (scripts/setup.sh installs it)")
    cmd = ["mmdebstrap", "--quiet", "--variant=minbase", f"--include={','.join(PACKAGES)}",
           "--aptopt=APT::Install-Recommends \"false\"",
           *[f"--dpkgopt=path-exclude={p}" for p in EXCLUDES],
           # the copyright files stay: they are the licences of what the image ships
           "--dpkgopt=path-include=/usr/share/doc/*/copyright",
           suite, str(target)]
    if mirror:
        cmd.append(mirror)
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise BuildError(f"mmdebstrap failed ({r.returncode}): {r.stderr.strip()[-2000:]}")
    for d in ("var/cache/apt", "var/lib/apt/lists"):  # package indexes: not needed to run
        for p in (target / d).glob("*"):
            if p.is_file():
                p.unlink()


def install_moor(target: Path) -> str:
    """moor install into the image, from this checkout's interpreter and dependencies."""
    r = subprocess.run([sys.executable, "-m", "cni.install", "--root", str(target), "--no-cni",
                        "--prefix", "/opt/moor", "--python", "/usr/bin/python3"],
                       cwd=ROOT, capture_output=True, text=True)
    if r.returncode != 0:
        raise BuildError(f"moor install into the image failed: {r.stderr.strip()}")
    (target / "etc/moor").mkdir(parents=True, exist_ok=True)
    return r.stdout


def _blob(out: Path, data: bytes) -> str:
    digest = hashlib.sha256(data).hexdigest()
    (out / "blobs/sha256" / digest).write_bytes(data)
    return f"sha256:{digest}"


def layer(target: Path, blobs: Path, epoch: int) -> tuple[str, str, int]:
    """The root filesystem as one gzip layer: (digest, diff_id, size)."""
    tar = subprocess.Popen(
        ["tar", "--sort=name", "--numeric-owner", "--owner=0", "--group=0", f"--mtime=@{epoch}",
         "--clamp-mtime", "--xattrs", "--exclude=./dev/*", "--exclude=./proc/*", "--exclude=./sys/*",
         "--exclude=./run/*", "--exclude=./tmp/*", "-C", str(target), "-cf", "-", "."],
        stdout=subprocess.PIPE)
    assert tar.stdout is not None
    diff, comp = hashlib.sha256(), hashlib.sha256()
    tmp = blobs / ".layer.tmp"

    class Tee:  # gzip writes here: hash the compressed bytes as they go to disk
        def __init__(self, f):
            self.f = f

        def write(self, b):
            comp.update(b)
            return self.f.write(b)

        def flush(self):
            self.f.flush()

    with open(tmp, "wb") as raw:
        with gzip.GzipFile(fileobj=Tee(raw), mode="wb", compresslevel=1, mtime=0) as gz:
            while chunk := tar.stdout.read(1 << 20):
                diff.update(chunk)
                gz.write(chunk)
    if tar.wait() != 0:
        tmp.unlink()
        raise BuildError(f"tar of the root filesystem failed ({tar.returncode})")
    size = tmp.stat().st_size
    tmp.rename(blobs / comp.hexdigest())
    return f"sha256:{comp.hexdigest()}", f"sha256:{diff.hexdigest()}", size


def build(out: Path, suite: str = "bookworm", mirror: str | None = None, work: Path | None = None) -> str:
    """Write the OCI archive to `out`; return the image name."""
    ver = version()
    name = f"{REPOSITORY}:{ver}"
    epoch = int(os.environ.get("SOURCE_DATE_EPOCH", "0"))
    with tempfile.TemporaryDirectory(prefix="moor-image-", dir=work) as tmp:
        target, layout = Path(tmp) / "rootfs", Path(tmp) / "oci"
        rootfs(target, suite, mirror)
        install_moor(target)
        blobs = layout / "blobs/sha256"
        blobs.mkdir(parents=True)
        digest, diff_id, size = layer(target, blobs, epoch)
        shutil.rmtree(target)
        config = {
            "architecture": "amd64", "os": "linux",
            "created": "1970-01-01T00:00:00Z" if epoch == 0 else None,
            "config": {
                "Entrypoint": ["/opt/moor/bin/moord"],
                "Cmd": ["--config", "/etc/moor/moord.yaml"],
                "Env": ["PATH=/opt/moor/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
                "Labels": {"org.opencontainers.image.title": "moor",
                           "org.opencontainers.image.version": ver,
                           "org.opencontainers.image.description": "moor node agent (moord), CNI plugins and netdiag"},
            },
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
            "history": [{"created_by": f"mmdebstrap {suite} {' '.join(PACKAGES)}; moor install --root"}],
        }
        config = {k: v for k, v in config.items() if v is not None}
        cdata = json.dumps(config, sort_keys=True).encode()
        manifest = {
            "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": _blob(layout, cdata), "size": len(cdata)},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": digest, "size": size}],
        }
        mdata = json.dumps(manifest, sort_keys=True).encode()
        index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                 "manifests": [{"mediaType": manifest["mediaType"], "digest": _blob(layout, mdata), "size": len(mdata),
                                "platform": {"architecture": "amd64", "os": "linux"},
                                # containerd names the image by the first, podman by the second
                                "annotations": {"io.containerd.image.name": name,
                                                "org.opencontainers.image.ref.name": name}}]}
        (layout / "index.json").write_text(json.dumps(index, sort_keys=True))
        (layout / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
        out.parent.mkdir(parents=True, exist_ok=True)
        partial = out.with_name(out.name + ".partial")
        r = subprocess.run(["tar", "--sort=name", "--numeric-owner", "--owner=0", "--group=0", "--mtime=@0",
                            "-C", str(layout), "-cf", str(partial), "oci-layout", "index.json", "blobs"],
                           capture_output=True, text=True)
        if r.returncode != 0:
            partial.unlink(missing_ok=True)
            raise BuildError(f"writing {out} failed: {r.stderr.strip()}")
        partial.rename(out)
    return name


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="./run image", description="Build moor's image (an OCI archive) from "
                                 "Debian packages; load it with `ctr -n k8s.io images import` or `podman load`.")
    ap.add_argument("--out", default="moor-image.tar", help="the archive to write (default moor-image.tar)")
    ap.add_argument("--suite", default="bookworm", help="the Debian suite (default bookworm)")
    ap.add_argument("--mirror", help="a Debian mirror URL (default: mmdebstrap's, deb.debian.org)")
    a = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("./run image: run as root (mmdebstrap and moor install write a root filesystem)", file=sys.stderr)
        return 2
    try:
        name = build(Path(a.out).resolve(), a.suite, a.mirror)
    except BuildError as e:
        print(f"./run image: {e}", file=sys.stderr)
        return 1
    print(f"{name} written to {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
