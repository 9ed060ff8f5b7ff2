"""The thin executable around a plugin's library call: stdin in, stdout out, exit code."""
from __future__ import annotations

import os
import sys

from .errors import DECODE, INTERNAL, IO_FAILURE, CNIError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Callable, Mapping

    Call = Callable[[Mapping[str, str], bytes], tuple[bytes, int]]


def serve(run: Call) -> int:
    """Read the config from stdin, run the call with this process's environment, write exactly
    its output (result or error JSON; libcni reads errors on stdout too) and return its code."""
    if sys.stdin is None:  # started with stdin closed (`<&-`): there is no config to read
        out, code = CNIError(DECODE, "cannot decode network config: stdin is closed").to_json(None), 1
    else:
        try:
            stdin = sys.stdin.buffer.read()
        except OSError as e:
            out, code = CNIError(IO_FAILURE, f"cannot read network config from stdin: {e}").to_json(None), 1
        else:
            out, code = run(os.environ, stdin)
    if sys.stdout is None:  # nowhere to answer; the exit code still tells
        return code
    try:
        sys.stdout.buffer.write(out)
        sys.stdout.flush()
    except OSError:  # the runtime stopped reading (a closed pipe): the exit code still tells
        pass
    return code


def error_reply(e: Exception, cni_version: str | None) -> tuple[bytes, int]:
    """Any failure as spec JSON and exit code 1: never a traceback on stdout, where libcni reads."""
    if isinstance(e, CNIError):
        err = e
    elif isinstance(e, RecursionError):
        err = CNIError(DECODE, "cannot decode network config: nested too deeply")
    elif isinstance(e, OSError):
        # an OSError class may name its own code (the netlink toolkit's errors: KERNEL_REFUSED)
        err = CNIError(getattr(e, "cni_code", IO_FAILURE), str(e))
    else:
        err = CNIError(INTERNAL, f"internal error: {e.__class__.__name__}: {e}")
    return err.to_json(cni_version), 1
