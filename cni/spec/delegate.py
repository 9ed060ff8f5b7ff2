"""Delegated IPAM, the CNI way: execute `ipam.type` from CNI_PATH with our env and config.

A caller may name plugins it can call in process (`in_process`: plugin name -> the same
(environment, stdin) -> (stdout, exit code) call its executable makes), sparing a second interpreter
start; their executable must still be in CNI_PATH, and their error codes are the caller's own."""
from __future__ import annotations

from . import jsonc as json  # json without its regex start-up cost (cni/spec/jsonc.py)
import os
TYPE_CHECKING = False
if TYPE_CHECKING:  # importing typing costs ~4 ms of plugin start-up; annotations are strings
    from typing import Callable, Mapping, Optional

    Call = Callable[[Mapping[str, str], bytes], tuple[bytes, int]]
    Registry = Mapping[str, Call]

from .errors import INCOMPATIBLE_VERSION, IPAM_FAILED, CNIError
from .version import SUPPORTED, key
from .result import Result

TIMEOUT_S = 60.0


def find_plugin(name: str, path: list[str]) -> str:
    for d in path:
        cand = os.path.join(d, name)
        if os.path.isfile(cand) and os.access(cand, os.X_OK):
            return cand
    raise CNIError(IPAM_FAILED, f"IPAM plugin {name!r} not found in CNI_PATH",
                   f"CNI_PATH={':'.join(path) or '(empty)'}")


def run(name: str, command: str, environ: Mapping[str, str], path: list[str], conf: dict,
        in_process: Optional[Registry] = None) -> Optional[dict]:
    """Run the IPAM plugin; return its decoded stdout (None when it printed nothing).

    An IPAM plugin older than the config (Debian's host-local speaks up to 1.0.0) answers code 1;
    then it is asked again in the newest version both sides speak, since a 1.1.0 conflist with a
    1.0.0 IPAM is what nodes run in practice. Results of any version parse the same."""
    try:
        return _run_once(name, command, environ, path, conf, in_process)
    except CNIError as e:
        if e.code != INCOMPATIBLE_VERSION or command not in ("ADD", "DEL", "CHECK"):
            raise
        mine = conf.get("cniVersion", "")
        doc = _run_once(name, "VERSION", environ, path, {"cniVersion": mine}, in_process)
        theirs = set((doc or {}).get("supportedVersions") or [])
        common = [v for v in SUPPORTED if v in theirs and key(v) < key(mine)]
        if command == "CHECK":
            common = [v for v in common if key(v) >= (0, 4, 0)]
        if not common:
            raise
        return _run_once(name, command, environ, path, dict(conf, cniVersion=common[-1]), in_process)


def _run_once(name: str, command: str, environ: Mapping[str, str], path: list[str], conf: dict,
              in_process: Optional[Registry]) -> Optional[dict]:
    exe = find_plugin(name, path)
    env = dict(environ)
    env["CNI_COMMAND"] = command
    call = in_process.get(name) if in_process else None
    if call is not None:
        # the caller's own plugin, called in process: the same call its executable makes, without a
        # second interpreter start (~80 ms here)
        stdout, returncode = call(env, json.dumps(conf).encode())
        stderr = b""
    else:
        from . import spawn  # only to execute another plugin: moor-ipam in process never pays for it
        try:
            stdout, stderr, returncode = spawn.run(exe, json.dumps(conf).encode(), env, TIMEOUT_S)
        except (OSError, spawn.Timeout) as e:
            raise CNIError(IPAM_FAILED, f"IPAM plugin {name} {command} could not run: {e}") from e
    out = stdout.strip()
    doc = None
    if out:
        try:
            doc = json.loads(out)
        except json.JSONDecodeError:
            doc = None
    if returncode != 0:
        if isinstance(doc, dict) and isinstance(doc.get("code"), int):
            # spec codes (<100) mean the same to the runtime and pass through; 100+ are that
            # plugin's private codes and would collide with the caller's, so they become IPAM_FAILED
            # (an in-process plugin's codes are the caller's own and pass through)
            code = doc["code"] if doc["code"] < 100 or call is not None else IPAM_FAILED
            details = str(doc.get("details", "")) or (f"{name} error code {doc['code']}" if code != doc["code"] else "")
            raise CNIError(code, f"IPAM plugin {name}: {doc.get('msg', '')}", details)
        err = (stderr or stdout).decode(errors="replace").strip()[-500:]
        raise CNIError(IPAM_FAILED, f"IPAM plugin {name} {command} failed with exit {returncode}", err)
    if out and doc is None:
        raise CNIError(IPAM_FAILED, f"IPAM plugin {name} {command} printed something that is not JSON",
                       out.decode(errors="replace")[:500])
    return doc


def add(name: str, environ: Mapping[str, str], path: list[str], conf: dict, in_process: Optional[Registry] = None) -> Result:
    doc = run(name, "ADD", environ, path, conf, in_process)
    if doc is None:
        raise CNIError(IPAM_FAILED, f"IPAM plugin {name} ADD returned no result")
    try:
        res = Result.parse(doc, f"IPAM plugin {name} result")
    except CNIError as e:
        raise CNIError(IPAM_FAILED, e.msg, e.details) from e
    if not res.ips:
        raise CNIError(IPAM_FAILED, f"IPAM plugin {name} returned no IP address")
    return res


def supports(name: str, version: str, environ: Mapping[str, str], path: list[str], in_process: Optional[Registry] = None) -> bool:
    """Whether the IPAM plugin speaks `version` (asked with VERSION, as GC/STATUS need 1.1.0)."""
    try:
        doc = _run_once(name, "VERSION", environ, path, {"cniVersion": version}, in_process)
    except CNIError:
        return False
    return isinstance(doc, dict) and version in (doc.get("supportedVersions") or [])
