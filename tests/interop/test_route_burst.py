"""Route bursts between moord and BIRD 2, each in its own netns, with the BGP session Established:

- 100,000 pod routes (`proto moor`, on a veth) added with one `ip -batch`, withdrawn with one, and a
  mixed add/delete burst: BIRD ends with exactly the node's live set each time. The withdrawal and the
  mixed burst run while moord is stopped (SIGSTOP, a CPU-starved agent), so its route-watch socket
  overflows for certain and the re-read-and-reconcile path is what makes the result exact;
- BIRD announcing 100,000 routes to moord (installLearned), then changing half of them, then
  withdrawing them: the node's kernel table (protocol 111) ends exact each time.
The session stays Established throughout (BIRD's state-change time never moves). Timeouts are hang
guards only; the times and the agent's worst API latency (an event-loop stall probe) are printed.
"""
from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from dataplane.api.client import AgentClient
from dataplane.nslab import Lab
from lab.bird import Bird
from tests.helpers import REPO
from tests.interop.conftest import wait_for

pytestmark = [pytest.mark.interop, pytest.mark.skipif(shutil.which("bird") is None, reason="bird2 is not installed")]

N = 100_000
TOR, NODE = "192.0.2.1", "192.0.2.2"
GUARD_S = 240.0  # hang guard for one convergence, far above what it takes

BIRD_CONF = """
router id {tor};
protocol device {{}}
protocol static st {{ ipv4; route 198.51.100.0/24 blackhole; }}
{big}
protocol bgp node1 {{
  local {tor} as 65000; neighbor {node} as 4200000001;
  hold time 9; connect retry time 1; error wait time 1, 2;
  ipv4 {{ import all; export where proto = "st" || proto = "big"; }};
}}
"""


def pod_prefixes(lo: int, hi: int) -> list[str]:
    return [f"10.{64 + (i >> 16)}.{(i >> 8) & 255}.{i & 255}/32" for i in range(lo, hi)]


def learned_prefixes(lo: int, hi: int) -> list[str]:
    return [f"172.{16 + (i >> 16)}.{(i >> 8) & 255}.{i & 255}/32" for i in range(lo, hi)]


def static_protocol(prefixes: list[str]) -> str:
    if not prefixes:
        return ""
    return "protocol static big { ipv4;\n" + "".join(f"  route {p} blackhole;\n" for p in prefixes) + "}\n"


@dataclass
class Fabric:
    lab: Lab
    tmp: Path
    tor: str
    node: str
    bird: Bird
    agent: subprocess.Popen | None = None
    probe: subprocess.Popen | None = None

    # -- BIRD's side ---------------------------------------------------------------------------
    def birdc(self, *args: str) -> str:
        return subprocess.run(["birdc", "-s", str(self.bird.ctl), *args], capture_output=True, text=True,
                              timeout=60).stdout

    def bird_routes(self) -> set[str]:
        """Prefixes BIRD holds from moord."""
        out = set()
        for line in self.birdc("show", "route", "protocol", "node1").splitlines():
            head = line.split(" ", 1)[0]
            if "/" in head:
                out.add(head)
        return out

    def session(self) -> tuple[str, str]:
        """(state, since) of BIRD's session to moord; `since` moves whenever the state changes."""
        for line in self.birdc("show", "protocols", "node1").splitlines():
            parts = line.split()
            if parts and parts[0] == "node1" and len(parts) >= 6:
                return parts[5], parts[4]
        return "", ""

    def configure(self, big: list[str]) -> None:
        (self.tmp / "bird.conf").write_text(BIRD_CONF.format(tor=TOR, node=NODE, big=static_protocol(big)))
        out = self.birdc("configure")
        assert "Reconfigured" in out or "Reconfiguration in progress" in out, out

    # -- the node's side -----------------------------------------------------------------------
    def batch(self, name: str, lines: list[str]) -> None:
        path = self.tmp / f"{name}.batch"
        path.write_text("".join(lines))
        self.lab.run(self.node, "ip", "-batch", str(path), timeout=300)

    def kernel_learned(self) -> set[str]:
        out = self.lab.run(self.node, "ip", "-4", "route", "show", "proto", "111", timeout=60).stdout.decode()
        got = set()
        for line in out.splitlines():
            if line and not line[0].isspace():
                dst = line.split(" ", 1)[0]
                got.add(dst if "/" in dst else f"{dst}/32")
        return got

    def losses(self) -> int:
        """Route-watch overflows moord reported (each is logged with its running count)."""
        n = [int(m) for m in re.findall(r"loss #(\d+)", (self.tmp / "moord.log").read_text())]
        return max(n, default=0)

    @contextmanager
    def stopped(self):
        """moord gets no CPU at all meanwhile (SIGSTOP): the burst cannot be read as it comes."""
        self.agent.send_signal(signal.SIGSTOP)
        try:
            yield
        finally:
            self.agent.send_signal(signal.SIGCONT)

    def converge(self, what: str, read, want: set[str]) -> float:
        """Wait until read() == want (a hang guard, not a speed check) and stays so; seconds taken."""
        t0 = time.monotonic()
        got: set[str] = set()
        while time.monotonic() - t0 < GUARD_S:
            assert self.agent.poll() is None, (self.tmp / "moord.log").read_text()[-3000:]
            got = read()
            if got == want:
                took = time.monotonic() - t0
                time.sleep(1.0)  # nothing stale may come back after it
                got = read()
                if got == want:
                    return took
            time.sleep(0.5)
        raise AssertionError(f"{what}: {len(got - want)} extra (e.g. {sorted(got - want)[:3]}), "
                             f"{len(want - got)} missing (e.g. {sorted(want - got)[:3]}) after {GUARD_S} s")


@pytest.fixture
def fabric(tmp_path):
    lab = Lab()
    try:
        tor, node = lab.ns("tor"), lab.ns("node")
        lab.veth(tor, "t0", node, "n0")
        lab.addr(tor, "t0", f"{TOR}/24")
        lab.addr(node, "n0", f"{NODE}/24")
        # the pods' side: routes `dev pv0 proto moor` as the CNI plugin installs them (no dummy
        # devices on this kernel: a veth whose peer stays in the node)
        lab.run(node, "ip", "link", "add", "pv0", "type", "veth", "peer", "name", "pv1")
        lab.run(node, "ip", "link", "set", "pv0", "up")
        lab.run(node, "ip", "link", "set", "pv1", "up")
        bird = Bird(lab, tor, tmp_path)
        bird.start(BIRD_CONF.format(tor=TOR, node=NODE, big=""))
        f = Fabric(lab, tmp_path, tor, node, bird)
        conf = {"bgp": {"asn": 4200000001, "routerId": NODE, "holdTime": 9, "installLearned": True,
                        "peers": [{"address": TOR, "asn": 65000}]},
                "api": {"socket": str(tmp_path / "moord.sock")}, "cni": {"socket": ""}, "metrics": {"port": 0}, "probe": {"enabled": False}}
        (tmp_path / "moord.yaml").write_text(json.dumps(conf))
        # without -v: a line per route would be 100,000 lines per burst; losses are warnings
        f.agent = lab.spawn(node, [sys.executable, "-m", "dataplane.agent", "--config", str(tmp_path / "moord.yaml")],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=open(tmp_path / "moord.log", "w"))
        try:
            wait_for(lambda: f.session()[0] == "Established", timeout=30, what="BIRD Established with moord")
        except TimeoutError as e:
            raise TimeoutError(f"{e}: {(tmp_path / 'moord.log').read_text()[-2000:]}") from None

        # the agent's API is served on its event loop, so a slow answer is a loop stall: a probe
        # process (not a thread here, which would wait for this process's own work) asks it
        # 20 times a second and records (start, seconds) per call
        f.probe = lab.spawn(node, [sys.executable, "-c", PROBE, str(tmp_path / "moord.sock"),
                                   str(tmp_path / "probe.txt")], cwd=REPO, stderr=subprocess.DEVNULL)
        yield f
    finally:
        for p in lab.procs:  # a stopped agent cannot act on SIGTERM
            if p.poll() is None:
                p.send_signal(signal.SIGCONT)
        lab.close()


PROBE = """
import sys, time
from dataplane.api.client import AgentClient, AgentUnavailable
with AgentClient(sys.argv[1], timeout=60) as c, open(sys.argv[2], "a", buffering=1) as out:
    while True:
        t = time.monotonic()
        try:
            c.health()
            out.write(f"{t} {time.monotonic() - t}\\n")
        except AgentUnavailable:
            pass
        time.sleep(0.05)
"""


def worst_stall(f: Fabric, since: float, stopped: list[tuple[float, float]] = ()) -> float:
    """The slowest API answer to a call made after `since`, leaving out calls that overlapped a
    window in which moord was stopped on purpose."""
    worst = 0.0
    for line in (f.tmp / "probe.txt").read_text().splitlines():
        t, d = map(float, line.split())
        if t >= since and not any(t <= b and t + d >= a for a, b in stopped):
            worst = max(worst, d)
    return worst


def test_a_burst_of_100k_pod_routes_reaches_bird_exactly_and_so_do_their_withdrawal_and_a_mixed_burst(fabric):
    f = fabric
    state0 = f.session()
    t_start = time.monotonic()
    a = pod_prefixes(0, N)
    f.batch("add", [f"route add {p} dev pv0 proto 109\n" for p in a])
    took_add = f.converge("BIRD after the add burst", f.bird_routes, set(a))
    losses_add = f.losses()

    stopped = []
    t = time.monotonic()
    with f.stopped():
        f.batch("del", [f"route del {p} dev pv0 proto 109\n" for p in a])
    stopped.append((t, time.monotonic()))
    took_del = f.converge("BIRD after the withdrawal burst", f.bird_routes, set())
    losses_del = f.losses()
    assert losses_del > losses_add, "the withdrawal burst did not overflow moord's route watch"

    f.batch("readd", [f"route add {p} dev pv0 proto 109\n" for p in a])
    took_readd = f.converge("BIRD after adding them again", f.bird_routes, set(a))
    b = pod_prefixes(N, N + N // 2)
    t = time.monotonic()
    with f.stopped():
        f.batch("mixed", [f"route del {p} dev pv0 proto 109\n" for p in a[: N // 2]]
                + [f"route add {p} dev pv0 proto 109\n" for p in b])
    stopped.append((t, time.monotonic()))
    live = set(a[N // 2:]) | set(b)
    took_mixed = f.converge("BIRD after the mixed burst", f.bird_routes, live)
    assert f.losses() > losses_del, "the mixed burst did not overflow moord's route watch"

    # the node's own table agrees, and the session never went down
    kernel = f.lab.run(f.node, "ip", "-4", "route", "show", "proto", "109", timeout=60).stdout.decode()
    assert {f"{line.split()[0]}/32" for line in kernel.splitlines() if line} == live
    assert f.session() == state0 and state0[0] == "Established"
    print(f"\n100k pod routes -> BIRD: add {took_add:.1f} s (losses {losses_add}), withdraw {took_del:.1f} s, "
          f"re-add {took_readd:.1f} s, mixed {took_mixed:.1f} s; route-watch losses {f.losses()}; "
          f"worst API latency while running {worst_stall(f, t_start, stopped) * 1000:.0f} ms")


def test_bird_announcing_100k_routes_installs_them_exactly_and_withdrawing_them_removes_them(fabric):
    f = fabric
    state0 = f.session()
    t_start = time.monotonic()
    st = {"198.51.100.0/24"}
    f.converge("the ToR's own route in the node's kernel", f.kernel_learned, st)

    a = learned_prefixes(0, N)
    f.configure(a)
    took_add = f.converge("100k learned routes in the kernel", f.kernel_learned, st | set(a))

    b = a[N // 2:] + learned_prefixes(N, N + N // 2)  # half withdrawn, as many new
    f.configure(b)
    took_change = f.converge("the changed learned routes in the kernel", f.kernel_learned, st | set(b))

    f.configure([])
    took_del = f.converge("the learned routes withdrawn from the kernel", f.kernel_learned, st)

    assert f.session() == state0 and state0[0] == "Established"
    with AgentClient(str(f.tmp / "moord.sock")) as c:
        peers = c.call("BgpPeers").peers
    assert [(p.address, p.state) for p in peers] == [(TOR, "Established")]
    assert f.losses() == 0, "learned-route churn must not reach the route watch (socket filter)"
    print(f"\n100k learned routes -> kernel: install {took_add:.1f} s, change half {took_change:.1f} s, "
          f"withdraw {took_del:.1f} s; worst API latency {worst_stall(f, t_start) * 1000:.0f} ms")
