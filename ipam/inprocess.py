"""moor-ipam as moor's modes call it: in process, through the delegate's registry of the caller's own
plugins (cni.spec.delegate), and the variable that turns its DEL into the undo of a failed ADD."""
from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Mapping

NAME = "moor-ipam"
# a DEL that rolls back a failed ADD: moor-ipam restores the previous holder (other IPAM plugins
# ignore the variable)
UNDO_ENV = "MOOR_IPAM_UNDO"


def run(environ: Mapping[str, str], stdin: bytes) -> tuple[bytes, int]:
    from .plugin import run as plugin_run  # loaded only when a network's IPAM is moor-ipam
    return plugin_run(environ, stdin)


IN_PROCESS = {NAME: run}
