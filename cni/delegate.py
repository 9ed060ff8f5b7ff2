"""Delegated IPAM, the CNI way: execute `ipam.type` from CNI_PATH with our env and config."""
from __future__ import annotations

import json
import os
import subprocess
from typing import Mapping, Optional

from .errors import IPAM_FAILED, CNIError
from .result import Result

TIMEOUT_S = 60.0


def find_plugin(name: str, path: list[str]) -> str:
    for d in path:
        cand = os.path.join(d, name)
        if os.path.isfile(cand) and os.access(cand, os.X_OK):
            return cand
    raise CNIError(IPAM_FAILED, f"IPAM plugin {name!r} not found in CNI_PATH",
                   f"CNI_PATH={':'.join(path) or '(empty)'}")


def run(name: str, command: str, environ: Mapping[str, str], path: list[str], conf: dict) -> Optional[dict]:
    """Run the IPAM plugin; return its decoded stdout (None when it printed nothing)."""
    exe = find_plugin(name, path)
    env = dict(environ)
    env["CNI_COMMAND"] = command
    try:
        proc = subprocess.run([exe], input=json.dumps(conf).encode(), env=env, capture_output=True,
                              timeout=TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise CNIError(IPAM_FAILED, f"IPAM plugin {name} {command} could not run: {e}") from e
    out = proc.stdout.strip()
    doc = None
    if out:
        try:
            doc = json.loads(out)
        except json.JSONDecodeError:
            doc = None
    if proc.returncode != 0:
        # pass the IPAM plugin's own spec error through (its code is meaningful to the runtime)
        if isinstance(doc, dict) and isinstance(doc.get("code"), int):
            raise CNIError(doc["code"], f"IPAM plugin {name}: {doc.get('msg', '')}", str(doc.get("details", "")))
        err = (proc.stderr or proc.stdout).decode(errors="replace").strip()[-500:]
        raise CNIError(IPAM_FAILED, f"IPAM plugin {name} {command} failed with exit {proc.returncode}", err)
    if out and doc is None:
        raise CNIError(IPAM_FAILED, f"IPAM plugin {name} {command} printed something that is not JSON",
                       out.decode(errors="replace")[:500])
    return doc


def add(name: str, environ: Mapping[str, str], path: list[str], conf: dict) -> Result:
    doc = run(name, "ADD", environ, path, conf)
    if doc is None:
        raise CNIError(IPAM_FAILED, f"IPAM plugin {name} ADD returned no result")
    res = Result.parse(doc, f"IPAM plugin {name} result")
    if not res.ips:
        raise CNIError(IPAM_FAILED, f"IPAM plugin {name} returned no IP address")
    return res


def supports(name: str, version: str, environ: Mapping[str, str], path: list[str]) -> bool:
    """Whether the IPAM plugin speaks `version` (asked with VERSION, as GC/STATUS need 1.1.0)."""
    try:
        doc = run(name, "VERSION", environ, path, {"cniVersion": version})
    except CNIError:
        return False
    return isinstance(doc, dict) and version in (doc.get("supportedVersions") or [])
