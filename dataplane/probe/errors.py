"""Why a probe could not load: netdiag and the agent report it and fall back to plain counters."""
from __future__ import annotations


class ProbeUnavailable(RuntimeError):
    """The probe cannot run here; str() is the reason, for the user."""
