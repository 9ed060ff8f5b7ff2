"""Did the agent restart, and did forwarding survive it? The answers go into the graceful-restart
capability (RFC 4724): the Restart State bit only after a real restart, the Forwarding State bit only
when the kernel still holds what we advertised. Both are wrong in the costly direction if guessed:
a peer told "forwarding kept" after a reboot blackholes the pods until the restart time runs out.

A state file marks a running agent; a clean shutdown removes it. Finding it at start means the
previous agent stopped without a shutdown (killed, crashed, or a graceful-restart stop). The boot ID
in it tells whether the kernel (and so every pod route and veth) is the same one."""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

BOOT_ID = "/proc/sys/kernel/random/boot_id"


@dataclass(frozen=True)
class RestartState:
    restarted: bool
    forwarding: bool
    previous_pid: int = 0


def _boot_id() -> str:
    try:
        return Path(BOOT_ID).read_text().strip()
    except OSError:
        return ""


def begin(path: str) -> RestartState:
    """Read what the previous agent left and mark this one as running."""
    p = Path(path)
    state = RestartState(False, False)
    try:
        prev = json.loads(p.read_text())
        same_boot = bool(prev.get("bootId")) and prev.get("bootId") == _boot_id()
        state = RestartState(True, same_boot, int(prev.get("pid", 0)))
    except FileNotFoundError:
        pass
    except (OSError, ValueError, AttributeError):
        state = RestartState(True, False)  # unreadable: a restart, but claim nothing about forwarding
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_text(json.dumps({"bootId": _boot_id(), "pid": os.getpid(), "started": time.time()}))
    os.replace(tmp, p)
    return state


def end(path: str) -> None:
    """A clean shutdown: the next start is not a restart."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
