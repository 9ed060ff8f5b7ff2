"""The inventory hook: a command told every allocation and release as JSON on stdin (a CMDB, a
source-IP authorisation list); a failing hook refuses an allocation."""
from __future__ import annotations

from cni.spec import jsonc as json  # json without its regex start-up cost (cni/spec/jsonc.py)

from cni.spec.errors import CNIError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .config import IPAMConf
    from .reservation import Reservation

HOOK_FAILED = 113  # the inventory hook refused or failed an allocation (it was rolled back)
HOOK_TIMEOUT_S = 10.0


def tell(conf: IPAMConf, event: str, reservations: list[Reservation]) -> None:
    """Tell the inventory about bindings; raises CNIError(113) when it refuses or cannot run."""
    if not conf.inventory_hook or not reservations:
        return
    import subprocess  # only with a hook: keeps the plugin's start-up lean
    doc = {"event": event, "network": conf.network, "reservations": [r.to_dict() for r in reservations]}
    try:
        p = subprocess.run(conf.inventory_hook, input=json.dumps(doc).encode(), capture_output=True,
                           timeout=HOOK_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise CNIError(HOOK_FAILED, f"inventory hook {conf.inventory_hook[0]} could not run: {e}") from e
    if p.returncode != 0:
        raise CNIError(HOOK_FAILED, f"inventory hook {conf.inventory_hook[0]} refused {event} (exit {p.returncode})",
                       p.stderr.decode(errors="replace").strip()[-500:])
