"""The loss causes the doctor knows, one module each (like one BGP attribute per module): each has
KEY, TEXT and find(ctx), which reads the evidence through the Context and adds Findings. They run
in REGISTRY's order: a cause claims the per-flow drops it explains, so the specific ones come
first, the known-benign background before everything, `generic` last."""
from __future__ import annotations

from . import fragment, generic, host_queue, no_listener, noise, rcvbuf, session_limit, stale_session
from .context import Context, Finding

# a long-lived session whose packets a closed port, a full buffer or queue drops is that cause, not a
# stale path: stale_session runs after them and sees only the drops they left
REGISTRY = (noise, fragment, rcvbuf, host_queue, no_listener, stale_session, session_limit, generic)
# cause key -> what it means, in the order the help text lists them
CAUSES = {m.KEY: m.TEXT for m in (rcvbuf, host_queue, session_limit, fragment, stale_session, no_listener,
                                   generic, noise)}

__all__ = ["CAUSES", "REGISTRY", "Context", "Finding"]
