"""The thin executable around a plugin's library call: stdin in, stdout out, exit code."""
from __future__ import annotations

import os
import sys

from .errors import IO_FAILURE, CNIError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Callable, Mapping

    Call = Callable[[Mapping[str, str], bytes], tuple[bytes, int]]


def serve(run: Call) -> int:
    """Read the config from stdin, run the call with this process's environment, write exactly
    its output (result or error JSON; libcni reads errors on stdout too) and return its code."""
    try:
        stdin = sys.stdin.buffer.read()
    except OSError as e:
        out, code = CNIError(IO_FAILURE, f"cannot read network config from stdin: {e}").to_json(None), 1
    else:
        out, code = run(os.environ, stdin)
    sys.stdout.buffer.write(out)
    sys.stdout.flush()
    return code
