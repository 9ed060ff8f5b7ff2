"""cni/spec/spawn.py executes a delegated plugin as subprocess.run did: stdin in, stdout and stderr
out, the exit code (minus the signal), a timeout that kills, SIGPIPE at its default in the child,
no inherited descriptor, and subprocess's error for what cannot be executed."""
from __future__ import annotations

import os
import sys

import pytest

from cni.spec import spawn

ENV = {"PATH": "/usr/bin:/bin"}


def _script(tmp_path, body: str, name: str = "plugin") -> str:
    p = tmp_path / name
    p.write_text(f"#!{sys.executable} -IS\nimport os, sys, signal\n{body}\n")
    p.chmod(0o755)
    return str(p)


def test_stdin_stdout_stderr_exit_code_and_environment(tmp_path):
    exe = _script(tmp_path, "data = sys.stdin.buffer.read()\nsys.stdout.buffer.write(data[::-1])\n"
                            "sys.stderr.write(os.environ['CNI_COMMAND'])\nsys.exit(3)")
    big = os.urandom(1 << 20)  # larger than a pipe holds: a pipe-based runner would need pumping
    out, err, code = spawn.run(exe, big, dict(ENV, CNI_COMMAND="ADD"), 30)
    assert (out, err, code) == (big[::-1], b"ADD", 3)


def test_signal_is_a_negative_code(tmp_path):
    exe = _script(tmp_path, "print('x', flush=True)\nos.kill(os.getpid(), signal.SIGTERM)")
    assert spawn.run(exe, b"", ENV, 30) == (b"x\n", b"", -15)


def test_sigpipe_and_sigxfsz_are_not_ignored_in_the_child(tmp_path):
    """Python ignores SIGPIPE, and an ignored signal stays ignored across exec: a Go plugin writing
    to a closed pipe would get EPIPE where it expects to die."""
    p = tmp_path / "sig"
    p.write_text("#!/bin/sh\nexec grep SigIgn /proc/self/status\n")
    p.chmod(0o755)
    out, _, code = spawn.run(str(p), b"", ENV, 30)
    ignored = int(out.split()[1], 16)
    assert code == 0 and not ignored & (1 << 12) and not ignored & (1 << 24), out  # SIGPIPE 13, SIGXFSZ 25


def test_no_descriptor_of_ours_reaches_the_child(tmp_path):
    r, w = os.pipe()
    os.set_inheritable(w, True)  # as a runtime might leave one
    try:
        exe = _script(tmp_path, f"print(sorted(int(f) for f in os.listdir('/proc/self/fd')))")
        out, _, code = spawn.run(exe, b"", ENV, 30)
    finally:
        os.close(r)
        os.close(w)
    assert code == 0 and eval(out) in ([0, 1, 2], [0, 1, 2, 3]), out  # 3: the listing's own fd


def test_timeout_kills_and_reaps(tmp_path):
    pidfile = tmp_path / "pid"
    exe = tmp_path / "plugin"  # sh: its pid is written within a millisecond, long before the timeout
    exe.write_text(f"#!/bin/sh\necho $$ > {pidfile}\nexec sleep 60\n")
    exe.chmod(0o755)
    with pytest.raises(spawn.Timeout, match="timed out after 0.5 seconds"):
        spawn.run(str(exe), b"", ENV, 0.5)
    # killed and reaped: not even a zombie is left (kill(pid, 0) succeeds on a zombie)
    with pytest.raises(ProcessLookupError):
        os.kill(int(pidfile.read_text()), 0)


@pytest.mark.parametrize("mode,body,errno_", [(0o644, "#!/bin/sh\n", 13), (0o755, "echo no shebang\n", 8)])
def test_what_cannot_run_raises_subprocess_message(tmp_path, mode, body, errno_):
    p = tmp_path / "bad"
    p.write_text(body)
    p.chmod(mode)
    with pytest.raises(OSError) as e:
        spawn.run(str(p), b"", ENV, 30)
    assert e.value.errno == errno_ and str(e.value).endswith(f": '{p}'")
    with pytest.raises(FileNotFoundError, match=r"\[Errno 2\] No such file or directory"):
        spawn.run(str(tmp_path / "none"), b"", ENV, 30)
