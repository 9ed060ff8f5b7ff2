"""The plugin as a library call: (environment, stdin bytes) -> (stdout bytes, exit code).

The executable (`moor`) is a thin wrapper; the agent can serve the same call warm later.
"""
from __future__ import annotations

from .spec import jsonc as json  # json without its regex start-up cost (cni/spec/jsonc.py)
import sys
import time
TYPE_CHECKING = False
if TYPE_CHECKING:  # importing typing costs ~4 ms of plugin start-up; annotations are strings
    from typing import Mapping

from . import config
from .spec import netconf, version
from .spec.env import parse_env
from .spec.executable import error_reply, serve
from .steps import Steps

FAILPOINT_ENV = "MOOR_FAILPOINT"  # tests: fail ADD right after the named step
PAUSE_ENV = "MOOR_PAUSE"  # tests: "STEP:SECONDS", sleep after that ADD step so other calls overlap it
TIMING_ENV = "MOOR_TIMING"  # print per-step timings to stderr


def _peek_version(stdin: bytes):
    try:
        doc = json.loads(stdin)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return None
    v = doc.get("cniVersion") if isinstance(doc, dict) else None
    return v if isinstance(v, str) else None


def run(environ: Mapping[str, str], stdin: bytes) -> tuple[bytes, int]:
    t0 = time.perf_counter()
    cni_version = None
    steps = Steps(failpoint=environ.get(FAILPOINT_ENV) or None, pause=environ.get(PAUSE_ENV) or None)
    try:
        if environ.get("CNI_COMMAND") == "VERSION":
            return version.reply(stdin), 0
        cni_version = _peek_version(stdin)  # errors about the environment speak it too
        env = parse_env(environ)
        doc = netconf.decode(stdin)
        conf = config.parse(doc)
        if env.command == "CHECK":
            version.require_at_least(conf.cni_version, "0.4.0", "CHECK")
        if env.command in ("GC", "STATUS"):
            version.require_at_least(conf.cni_version, "1.1.0", env.command)

        # modes are imported late: VERSION and bad input answer without loading them
        if conf.mode == "bgp":
            from .routed import RoutedPlugin as Plugin
        else:
            from .macvlan import MacvlanPlugin as Plugin
        plugin = Plugin(env, conf, environ)
        try:
            if env.command in ("ADD", "DEL", "CHECK"):
                # one operation per attachment at a time: a DEL that arrives during an ADD (kubelet
                # gave up waiting) waits for it and then undoes it, so the pod's interface, routes
                # and IP are either all there or all gone
                with plugin.store.attachment_lock(conf.name, env.container_id, env.ifname) as lock:
                    added = False
                    try:
                        if env.command == "ADD":
                            result = plugin.add(steps)
                            added = True  # its record exists: no need to look
                            return json.dumps(result.to_dict(conf.cni_version)).encode() + b"\n", 0
                        if env.command == "DEL":
                            plugin.delete()
                        else:
                            plugin.check()
                        return b"", 0
                    finally:
                        if not added and plugin.forgotten():
                            lock.discard()  # nothing of the attachment is left: neither is its lock file
            if env.command == "GC":
                plugin.gc()
            elif env.command == "STATUS":
                plugin.status()
            return b"", 0
        finally:
            plugin.close()
    except Exception as e:
        return error_reply(e, cni_version)
    finally:
        if environ.get(TIMING_ENV):
            print(f"moor: {environ.get('CNI_COMMAND')} took {(time.perf_counter() - t0) * 1e3:.2f} ms; "
                  f"steps: {', '.join(steps.names) or '-'}", file=sys.stderr)


def main() -> int:
    # a runtime runs the plugin without arguments; an operator runs `moor install ...`
    if len(sys.argv) > 1:
        if sys.argv[1] == "install":
            from .install import main as install
            return install(sys.argv[2:])
        print("usage: moor install [--help]   (without arguments moor is the CNI plugin: CNI_COMMAND "
              "and the network config on stdin)", file=sys.stderr)
        return 2
    return serve(run)
