"""CNI errors: the spec's well-known codes and moor's own (100+), raised as exceptions."""
from __future__ import annotations

from . import jsonc as json  # json without its regex start-up cost (cni/spec/jsonc.py)
TYPE_CHECKING = False
if TYPE_CHECKING:  # importing typing costs ~4 ms of plugin start-up; annotations are strings
    from typing import Optional

# The spec's codes (SPEC.md "Well-known Error Codes"); 1-99 are reserved to the spec.
INCOMPATIBLE_VERSION = 1
UNSUPPORTED_FIELD = 2
UNKNOWN_CONTAINER = 3
INVALID_ENV = 4
IO_FAILURE = 5
DECODE = 6
INVALID_CONFIG = 7
TRY_AGAIN_LATER = 11
NOT_AVAILABLE = 50  # STATUS: the plugin cannot serve ADD now
LIMITED_CONNECTIVITY = 51  # STATUS: and existing pods may have limited connectivity

# moor's own codes (documented in the README)
KERNEL_REFUSED = 100  # a netlink request failed; the message names the operation and errno
IPAM_FAILED = 101  # the delegated IPAM plugin could not be run or returned an unusable result
VLAN_UNSUPPORTED = 102  # the kernel cannot create VLAN sub-interfaces (no 8021q)
CHECK_FAILED = 103  # CHECK found the attachment differs from prevResult
INTERFACE_EXISTS = 104  # CNI_IFNAME already exists in the pod netns
INTERNAL = 199  # a bug in moor: please report with the details


class CNIError(Exception):
    def __init__(self, code: int, msg: str, details: str = ""):
        super().__init__(msg)
        self.code = code
        self.msg = msg
        self.details = details

    def to_json(self, cni_version: Optional[str]) -> bytes:
        doc = {"cniVersion": cni_version or "1.1.0", "code": self.code, "msg": self.msg}
        if self.details:
            doc["details"] = self.details
        return json.dumps(doc).encode() + b"\n"

    def __repr__(self) -> str:
        return f"CNIError({self.code}, {self.msg!r})"
