"""Route delivery to a ToR: how long a BGP speaker takes to get N distinct /32 routes into BIRD's
table, and how much memory it needs for it, for moor's speaker, ExaBGP and GoBGP measured in the
same run on the same namespace topology; then moord's add-to-ToR latency for single pod routes.

Topology (dataplane.nslab.Lab, unique names, removed on exit): netns "tor" runs BIRD 2 as the
receiver (192.0.2.1, AS 65000, one eBGP protocol, `import all; export none`, passive, hold time 240 s);
netns "node" runs one speaker at a time (192.0.2.2, AS 65001), each against a fresh BIRD, so no two
daemons share the 2 CPUs. All config, control sockets, pid files and logs are in a private temp dir.

Routes are BGP NLRI only (never forwarded, BIRD exports nothing to any kernel table): N distinct /32s
counted up from 100.64.0.0 (RFC 6598 shared address space, 100.64.0.0/10 holds 4M /32s).

How each speaker gets its N routes (its fastest honest bulk path):
  moor       `python -m bgp.speaker` with `announce PREFIX` lines on stdin, written as fast as it reads
             them; its --announce option cannot carry a table this size (argparse is quadratic in the
             number of options: ~3 s for 10k, minutes for 100k)
  moor-lib   moor's Speaker class with the table loaded before start(), as moord does with the kernel's
             routes (the MOOR_LIB harness below); no CLI in the way
  exabgp     static routes in its config file (`route P next-hop self;` in a `static` block)
  exabgp-api (not in the default set) the same routes as `announce route` lines from an API process:
             over 2x slower than static routes at 10k (8.7 s against 3.8 s)
  gobgp      gobgpd, then `gobgp mrt inject global FILE` as soon as its API listens: one TABLE_DUMP_V2
             file streamed over gRPC AddPathStream (`gobgp global rib add` takes ~18 ms per exec here:
             100k of them would take ~30 min)

Measured per speaker and size, from BIRD's control socket (its CLI protocol, polled every 2 ms):
  start->est    speaker process start to BIRD's session Established
  est->all      Established to BIRD's table holding all N routes from that protocol
  est->1st      Established to the first route in BIRD's table (does the speaker stream or batch?)
  start->all    process start to all N routes in BIRD's table
  peak RSS      VmHWM of the speaker process (and its children, summed), read just before stopping it
  CPU           user+system seconds of the speaker; of BIRD from Established on, for context
  B/route       bytes BIRD received on the session / N (packing; a /32 NLRI is 5 bytes)
and the last route's next hop and AS path are checked at BIRD. --repeat runs (interleaved); medians.
GoBGP's start->est is its deliberate first-connect delay (fsm connectLoop: 5-10 s at random), so
its start->all is mostly that timer; its table is loaded by then: compare est->all.

Then moord (dataplane.agent; its API socket and GR state file in the temp dir, its eBPF probes off):
a route `203.0.113.x/32 dev lo proto 109` added by netlink in the node netns (what the CNI plugin
installs) until BIRD's import counter shows it; median/p90 over --adds, and the same for deleting.

Run as root: ./run bench bgp [--sizes 10000,100000] [--repeat 3] [--speakers moor,moor-lib,exabgp,gobgp]
             [--adds 50] [--profile]   (--profile: then cProfile moor's speaker at the largest size)
"""
from __future__ import annotations

import argparse
import ipaddress
import os
import pstats
import random
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dataplane.nslab import Lab, require_root  # noqa: E402

TOR, NODE = "192.0.2.1", "192.0.2.2"
TOR_AS, NODE_AS = 65000, 65001
BASE = int(ipaddress.ip_address("100.64.0.0"))
PY = str(ROOT / ".venv" / "bin" / "python") if (ROOT / ".venv" / "bin" / "python").exists() else sys.executable
EXABGP = str(Path(PY).parent / "exabgp")
TICK = os.sysconf("SC_CLK_TCK")

BIRD_CONF = """\
log "{log}" {{ info, remote, warning, error, auth, fatal, bug }};
router id {tor};
protocol device {{ scan time 60; }}
protocol bgp {proto} {{
  local {tor} as {tor_as};
  neighbor {node} as {node_as};
  passive on;
  hold time 240;
  keepalive time 80;
  ipv4 {{ import all; export none; }};
}}
"""

# moor's Speaker with the table loaded first, then start(): what moord does with the kernel's routes
MOOR_LIB = """\
import asyncio, signal, sys
sys.path.insert(0, {root!r})
from bgp.session import LocalConfig, PeerConfig
from bgp.speaker import Speaker

async def main():
    sp = Speaker(LocalConfig(asn={node_as}, router_id={node!r}, hold_time=240),
                 [PeerConfig(address={tor!r}, asn={tor_as}, hold_time=240)], {node!r}, 1179)
    with open(sys.argv[1]) as f:
        for line in f:
            sp.announce(line.strip())
    await sp.start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await sp.stop()

asyncio.run(main())
"""

EXABGP_ENV = """\
[exabgp.api]
cli = false
ack = false

[exabgp.daemon]
daemonize = false
drop = false
user = 'root'
pid = '{pid}'

[exabgp.log]
enable = true
level = WARNING
destination = '{log}'
"""

# ExaBGP's API process: all announcements written at once, then it stays until ExaBGP goes (the end
# of its stdin), as ExaBGP stops a peer whose process exits
EXABGP_FEED = """\
import sys
with open(sys.argv[1]) as f:
    sys.stdout.write("".join(f"announce route {line.strip()} next-hop self\\n" for line in f))
sys.stdout.flush()
for _ in sys.stdin:
    pass
"""

GOBGP_CONF = """\
[global.config]
  as = {node_as}
  router-id = "{node}"
  port = -1
[[neighbors]]
  [neighbors.config]
    neighbor-address = "{tor}"
    peer-as = {tor_as}
  [neighbors.timers.config]
    hold-time = 240
    keepalive-interval = 80
  [[neighbors.afi-safis]]
    [neighbors.afi-safis.config]
      afi-safi-name = "ipv4-unicast"
"""


def prefixes(n: int) -> list[str]:
    return [f"{ipaddress.ip_address(BASE + i)}/32" for i in range(n)]


# -- BIRD ---------------------------------------------------------------------------------------
class BirdCtl:
    """BIRD's CLI protocol on its control socket: one request at a time, replies are lines
    `CCCC-text` (more follow), ` text` (continuation) and `CCCC text` (last)."""

    def __init__(self, path: str):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)
        self.buf = b""
        self._reply()  # the 0001 greeting

    def _reply(self) -> list[str]:
        lines = []
        while True:
            while b"\n" not in self.buf:
                data = self.sock.recv(65536)
                if not data:
                    raise ConnectionError("BIRD closed its control socket")
                self.buf += data
            line, self.buf = self.buf.split(b"\n", 1)
            text = line.decode(errors="replace")
            lines.append(text)
            if len(text) >= 5 and text[:4].isdigit() and text[4] == " ":
                return lines

    def cmd(self, text: str) -> list[str]:
        self.sock.sendall(text.encode() + b"\n")
        return self._reply()

    def status(self, proto: str) -> tuple[str, int]:
        """(BGP state, routes imported) of one protocol: O(1) for BIRD, unlike counting the table."""
        state, imported = "", 0
        for line in self.cmd(f"show protocols all {proto}"):
            s = line[5:].strip() if line[:4].isdigit() else line.strip()
            if s.startswith("BGP state:"):
                state = s.split(":", 1)[1].strip()
            elif s.startswith("Routes:"):
                imported = int(s.split(":", 1)[1].split()[0])
        return state, imported

    def close(self) -> None:
        self.sock.close()


@dataclass
class Bird:
    lab: Lab
    ns: str
    dir: Path
    proto: str
    proc: subprocess.Popen | None = None
    ctl: BirdCtl | None = None

    def start(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        conf = self.dir / "bird.conf"
        conf.write_text(BIRD_CONF.format(log=self.dir / "bird.log", tor=TOR, node=NODE, tor_as=TOR_AS,
                                         node_as=NODE_AS, proto=self.proto))
        sock = self.dir / "bird.ctl"
        self.proc = self.lab.spawn(self.ns, ["bird", "-f", "-c", str(conf), "-s", str(sock), "-P",
                                             str(self.dir / "bird.pid")],
                                   stdout=subprocess.DEVNULL, stderr=open(self.dir / "bird.err", "wb"))
        deadline = time.monotonic() + 20
        while True:
            try:
                self.ctl = BirdCtl(str(sock))
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"BIRD did not start: {(self.dir / 'bird.err').read_text()}")
                time.sleep(0.01)

    def stop(self) -> None:
        if self.ctl is not None:
            self.ctl.close()
            self.ctl = None
        stop(self.proc)


def stop(proc: subprocess.Popen | None) -> None:
    if proc is not None and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# -- /proc --------------------------------------------------------------------------------------
def tree(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for t in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{t}/children") as f:
                    todo += [int(c) for c in f.read().split()]
        except OSError:
            pass
    return out


def hwm_kib(pid: int) -> int:
    """Peak RSS of a process and its live children (summed), in KiB."""
    total = 0
    for p in tree(pid):
        try:
            with open(f"/proc/{p}/status") as f:
                total += next(int(l.split()[1]) for l in f if l.startswith("VmHWM:"))
        except (OSError, StopIteration):
            pass
    return total


def cpu_s(pid: int) -> float:
    total = 0.0
    for p in tree(pid):
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])) / TICK
        except OSError:
            pass
    return total


# -- MRT for GoBGP ------------------------------------------------------------------------------
def write_mrt(path: Path, pfx: list[str], pad: int = 0) -> None:
    """TABLE_DUMP_V2 (RFC 6396): a PEER_INDEX_TABLE, then one RIB_IPV4_UNICAST record per prefix with
    one entry: ORIGIN IGP, empty AS_PATH, NEXT_HOP the node (GoBGP prepends its AS towards eBGP).

    Then `pad` RIB_IPV6_UNICAST records (2001:db8::/128s) that the ipv4-only neighbor never gets:
    `gobgp mrt inject` (3.10) exits without closing its gRPC stream, so the last few hundred paths it
    sent are lost with it; the padding is what gets lost instead, and BIRD sees exactly `pfx`."""
    now = int(time.time())

    def rec(subtype: int, body: bytes) -> bytes:
        return struct.pack("!IHHI", now, 13, subtype, len(body)) + body
    peer = struct.pack("!B4s4sI", 0x02, socket.inet_aton(NODE), socket.inet_aton(NODE), NODE_AS)  # AS4 peer
    out = [rec(1, socket.inet_aton(NODE) + struct.pack("!H", 0) + struct.pack("!H", 1) + peer)]
    base = bytes([0x40, 1, 1, 0]) + bytes([0x40, 2, 0])
    attrs = base + bytes([0x40, 3, 4]) + socket.inet_aton(NODE)
    entry = struct.pack("!HIH", 0, now, len(attrs)) + attrs
    for seq, p in enumerate(pfx):
        addr = socket.inet_aton(p.split("/")[0])
        out.append(rec(2, struct.pack("!IB", seq, 32) + addr + struct.pack("!H", 1) + entry))
    nh = ipaddress.ip_address("2001:db8::2").packed
    for i in range(pad):
        a = (ipaddress.ip_address("2001:db8::1:0") + i).packed
        mp = struct.pack("!HBB", 2, 1, 16) + nh + b"\0" + bytes([128]) + a
        attrs6 = base + bytes([0x80, 14, len(mp)]) + mp
        e6 = struct.pack("!HIH", 0, now, len(attrs6)) + attrs6
        out.append(rec(4, struct.pack("!IB", len(pfx) + i, 128) + a + struct.pack("!H", 1) + e6))
    path.write_bytes(b"".join(out))


# -- one run ------------------------------------------------------------------------------------
@dataclass
class Result:
    speaker: str
    n: int
    start_est: float = float("nan")
    start_first: float = float("nan")
    start_all: float = float("nan")
    rss_kib: int = 0
    cpu: float = 0.0
    bird_rss_kib: int = 0
    bird_cpu: float = 0.0
    wire_bytes: int = 0
    extra: dict = field(default_factory=dict)

    @property
    def est_all(self) -> float:
        return self.start_all - self.start_est


def check_route(bird: Bird, proto: str, prefix: str) -> None:
    """The last route is what an eBGP neighbor should send: next hop the node, AS path its AS."""
    text = "\n".join(bird.ctl.cmd(f"show route {prefix} protocol {proto} all"))
    if f"via {NODE}" not in text or f"BGP.as_path: {NODE_AS}\n" not in text + "\n":
        raise RuntimeError(f"{proto}: unexpected route at BIRD:\n{text}")


def wire_bytes(lab: Lab, tor: str) -> int:
    """Bytes BIRD has received on the BGP connection (headers, OPEN, KEEPALIVEs included): how
    densely a speaker packs its UPDATEs."""
    out = lab.run(tor, "ss", "-tinH", "state", "established", "( sport = :179 )", check=False).stdout.decode()
    for tok in out.split():
        if tok.startswith("bytes_received:"):
            return int(tok.split(":")[1])
    return 0


def _feed(proc: subprocess.Popen, pfx: list[str], done: dict) -> None:
    """moor's stdin: `announce P` lines as fast as the speaker reads them (a pipe holds 64 KiB)."""
    try:
        data = "".join(f"announce {p}\n" for p in pfx).encode()
        view = memoryview(data)
        for i in range(0, len(data), 1 << 16):
            proc.stdin.write(view[i:i + (1 << 16)])
        proc.stdin.flush()
        done["fed"] = time.monotonic()
    except (BrokenPipeError, ValueError, OSError):
        pass


def run_one(lab: Lab, tor: str, node: str, work: Path, name: str, n: int, poll: float,
            profile: Path | None = None) -> Result:
    d = Path(tempfile.mkdtemp(prefix=f"{name}-{n}-", dir=work))
    proto = name.replace("-", "_")
    bird = Bird(lab, tor, d / "bird", proto)
    pfx = prefixes(n)
    res = Result(name, n)
    proc: subprocess.Popen | None = None
    fed: dict = {}
    try:
        bird.start()
        # inputs are prepared before the clock starts (a config file that exists already)
        if name == "moor":
            cmd = [PY, "-m", "bgp.speaker", "--asn", str(NODE_AS), "--router-id", NODE, "--peer", f"{TOR}:{TOR_AS}",
                   "--listen", NODE, "--port", "1179", "--hold-time", "240"]
            if profile is not None:
                cmd[1:1] = ["-m", "cProfile", "-o", str(profile)]
        elif name == "moor-lib":
            (d / "harness.py").write_text(MOOR_LIB.format(root=str(ROOT), node=NODE, tor=TOR, node_as=NODE_AS,
                                                          tor_as=TOR_AS))
            (d / "prefixes").write_text("\n".join(pfx) + "\n")
            cmd = [PY, str(d / "harness.py"), str(d / "prefixes")]
            if profile is not None:
                cmd[1:1] = ["-m", "cProfile", "-o", str(profile)]
        elif name == "exabgp":
            (d / "exabgp.env").write_text(EXABGP_ENV.format(pid=d / "exabgp.pid", log=d / "exabgp.log"))
            routes = "".join(f"      route {p} next-hop self;\n" for p in pfx)
            (d / "exabgp.conf").write_text(
                f"neighbor {TOR} {{\n  router-id {NODE};\n  local-address {NODE};\n  local-as {NODE_AS};\n"
                f"  peer-as {TOR_AS};\n  hold-time 240;\n  family {{ ipv4 unicast; }}\n"
                f"  static {{\n{routes}  }}\n}}\n")
            cmd = [EXABGP, "server", str(d / "exabgp.conf")]
        elif name == "exabgp-api":
            (d / "exabgp.env").write_text(EXABGP_ENV.format(pid=d / "exabgp.pid", log=d / "exabgp.log"))
            (d / "prefixes").write_text("\n".join(pfx) + "\n")
            (d / "feed.py").write_text(EXABGP_FEED)
            (d / "exabgp.conf").write_text(
                f"process feed {{\n  run {PY} {d / 'feed.py'} {d / 'prefixes'};\n  encoder text;\n}}\n"
                f"neighbor {TOR} {{\n  router-id {NODE};\n  local-address {NODE};\n  local-as {NODE_AS};\n"
                f"  peer-as {TOR_AS};\n  hold-time 240;\n  family {{ ipv4 unicast; }}\n"
                f"  api {{ processes [ feed ]; }}\n}}\n")
            cmd = [EXABGP, "server", str(d / "exabgp.conf")]
        elif name == "gobgp":
            (d / "gobgpd.toml").write_text(GOBGP_CONF.format(node=NODE, tor=TOR, node_as=NODE_AS, tor_as=TOR_AS))
            write_mrt(d / "routes.mrt", pfx, pad=2000)
            cmd = ["gobgpd", "-f", str(d / "gobgpd.toml"), "-p", "--pprof-disable", "--api-hosts", "127.0.0.1:50051"]
        else:
            raise ValueError(name)
        env = dict(os.environ, EXABGP_ENVFILE=str(d / "exabgp.env")) if name.startswith("exabgp") else None
        log = open(d / "speaker.log", "wb")
        t0 = time.monotonic()
        proc = lab.spawn(node, cmd, cwd=str(ROOT), env=env, stdout=log, stderr=subprocess.STDOUT,
                         stdin=subprocess.PIPE if name == "moor" else subprocess.DEVNULL)
        if name == "moor":
            threading.Thread(target=_feed, args=(proc, pfx, fed), daemon=True).start()
        if name == "gobgp":
            threading.Thread(target=_inject, args=(lab, node, d, res, t0, proc.pid), daemon=True).start()
        bird_cpu0 = cpu_s(bird.proc.pid)
        guard = t0 + 60 + n / 200  # a guard against a hung run, not a speed requirement
        while True:
            now = time.monotonic()
            state, imported = bird.ctl.status(proto)
            if state == "Established" and res.start_est != res.start_est:
                res.start_est = now - t0
                bird_cpu0 = cpu_s(bird.proc.pid)  # BIRD's work from here on is receiving routes
            if imported and res.start_first != res.start_first:
                res.start_first = now - t0
            if imported >= n:
                res.start_all = now - t0
                break
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited ({proc.returncode}); see {d / 'speaker.log'}: "
                                   f"{(d / 'speaker.log').read_text()[-2000:]}")
            if now > guard:
                raise TimeoutError(f"{name}: {imported}/{n} routes at BIRD after {now - t0:.0f} s (state {state})")
            time.sleep(poll)
        check_route(bird, proto, pfx[-1])
        if "fed" in fed:
            res.extra["stdin written"] = fed["fed"] - t0
        res.rss_kib, res.cpu = hwm_kib(proc.pid), cpu_s(proc.pid)
        res.wire_bytes = wire_bytes(lab, tor)
        res.bird_rss_kib, res.bird_cpu = hwm_kib(bird.proc.pid), cpu_s(bird.proc.pid) - bird_cpu0
        if name == "gobgp":
            deadline = time.monotonic() + 30
            while "inject rc" not in res.extra and time.monotonic() < deadline:
                time.sleep(0.05)
            if res.extra.get("inject rc") != 0:
                raise RuntimeError(f"gobgp mrt inject failed: {(d / 'inject.log').read_text()[-2000:]}")
            if res.extra["inject done"] > res.start_est:
                print(f"  note: GoBGP's session came up {_ms(res.start_est)} after start, before its table "
                      f"was loaded ({_ms(res.extra['inject done'])}): its est->all includes loading")
        return res
    finally:
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30 if profile else 5)  # cProfile writes its stats on the way out
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        bird.stop()


def _listening(pid: int, port: int) -> bool:
    """Whether the netns of `pid` has a TCP socket listening on `port` (/proc/PID/net is per netns)."""
    try:
        with open(f"/proc/{pid}/net/tcp") as f:
            return any(l.split()[1].endswith(f":{port:04X}") and l.split()[3] == "0A" for l in list(f)[1:])
    except OSError:
        return False


def _inject(lab: Lab, node: str, d: Path, res: Result, t0: float, pid: int) -> None:
    """GoBGP's table: as soon as its API listens, stream the MRT file into the global RIB."""
    deadline = time.monotonic() + 30
    while not _listening(pid, 50051) and time.monotonic() < deadline:
        time.sleep(0.002)
    res.extra["api up"] = time.monotonic() - t0
    p = lab.spawn(node, ["gobgp", "-p", "50051", "mrt", "inject", "global", str(d / "routes.mrt")],
                  stdout=subprocess.DEVNULL, stderr=open(d / "inject.log", "wb"))  # Lab.close stops it too
    _, status, ru = os.wait4(p.pid, 0)  # for its rusage
    p.returncode = os.waitstatus_to_exitcode(status)
    res.extra["inject done"] = time.monotonic() - t0
    res.extra["inject CLI peak RSS KiB"] = ru.ru_maxrss
    res.extra["inject rc"] = p.returncode


# -- moord: kernel route to ToR latency ---------------------------------------------------------
def moord_latency(lab: Lab, tor: str, node: str, work: Path, adds: int, poll: float) -> dict:
    from cni.netlink import wire as w
    from cni.netlink.netns import entered, open_netns
    from cni.netlink.rtnl import RTNL

    d = work / "moord"
    d.mkdir(parents=True)
    bird = Bird(lab, tor, d / "bird", "moord")
    conf = d / "moord.yaml"
    # private paths for everything the agent writes; its eBPF probes off (they trace the whole
    # kernel, not the test netns); its metrics listener stays inside the node netns
    conf.write_text(f"bgp:\n  asn: {NODE_AS}\n  routerId: {NODE}\n  holdTime: 240\n  listenAddress: {NODE}\n"
                    f"  listenPort: 1179\n  gracefulRestart:\n    stateFile: {d / 'moord-gr.json'}\n"
                    f"  peers:\n    - address: {TOR}\n      asn: {TOR_AS}\n"
                    f"api:\n  socket: {d / 'moord.sock'}\ncni:\n  socket: ''\nprobe:\n  enabled: false\n")
    proc = None
    fd = open_netns(Lab.path(node))
    try:
        with entered(fd):
            nl = RTNL()  # stays in the node netns
    finally:
        os.close(fd)
    out: dict = {"add": [], "del": []}
    try:
        bird.start()
        proc = lab.spawn(node, [PY, "-m", "dataplane.agent", "--config", str(conf)], cwd=str(ROOT),
                         stdout=subprocess.DEVNULL, stderr=open(d / "moord.log", "wb"))
        deadline = time.monotonic() + 30
        while bird.ctl.status("moord")[0] != "Established":
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"moord did not establish: {(d / 'moord.log').read_text()[-2000:]}")
            time.sleep(0.01)
        time.sleep(0.2)  # past the End-of-RIB
        rng = random.Random(1)

        def until(count: int, t: float) -> float:
            guard = t + 10
            while bird.ctl.status("moord")[1] != count:
                if time.monotonic() > guard:
                    raise TimeoutError(f"BIRD never reached {count} routes from moord")
                time.sleep(poll)
            return time.monotonic() - t
        for i in range(adds):
            dst = ipaddress.ip_network(f"203.0.113.{i + 1}/32")
            t = time.monotonic()
            nl.route_add(dst, oif=1, proto=w.RTPROT_MOOR)  # ifindex 1: lo
            out["add"].append(until(i + 1, t))
            time.sleep(rng.uniform(0.02, 0.05))  # apart, so no two adds share one UPDATE
        for i in range(adds):
            dst = ipaddress.ip_network(f"203.0.113.{i + 1}/32")
            t = time.monotonic()
            nl.route_del(dst, oif=1, proto=w.RTPROT_MOOR)
            out["del"].append(until(adds - i - 1, t))
            time.sleep(rng.uniform(0.02, 0.05))
        out["rss_kib"] = hwm_kib(proc.pid)
        return out
    finally:
        nl.close()
        stop(proc)
        bird.stop()


# -- report -------------------------------------------------------------------------------------
def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def _ms(x: float) -> str:
    return "-" if x != x else (f"{x * 1e3:.0f} ms" if x < 10 else f"{x:.1f} s")


def _med(rs: list[Result], f) -> float:
    return statistics.median(f(r) for r in rs)


NOTES = """\
  start->est: process start to BIRD's Established; est->1st / est->all: Established to BIRD holding
  the first / all N routes;
  routes/s: N / est->all; peak RSS: VmHWM of the speaker (and children); CPU: speaker user+sys s;
  B/route: bytes BIRD received on the session / N (a /32 NLRI is 5 bytes); BIRD CPU from Established.
  moor: `python -m bgp.speaker`, `announce P` lines on stdin (its table grows while the session is up);
  moor-lib: moor's Speaker with the whole table loaded before start(), as moord starts;
  exabgp: static routes in its config file; gobgp: `gobgp mrt inject global` once gobgpd's API is up.
  GoBGP's start->est is its first-connect timer (5-10 s at random), not work: its start->all is not
  comparable; its table is loaded before Established (see `inject` below), so compare est->all."""


def report(results: list[Result], repeat: int) -> None:
    groups: dict = {}
    for r in results:
        groups.setdefault((r.speaker, r.n), []).append(r)
    print(f"\nN distinct /32s from one speaker into BIRD; fresh BIRD per run; medians of {repeat} run(s); "
          "times read from BIRD's control socket")
    hdr = (f"{'speaker':<10} {'N':>7} {'start->est':>11} {'est->1st':>9} {'est->all':>10} {'start->all':>11} "
           f"{'(min-max)':>17} {'routes/s':>9} {'peak RSS':>9} {'CPU s':>6} {'B/route':>7} | "
           f"{'BIRD RSS':>9} {'BIRD CPU':>8}")
    print(hdr)
    print("-" * len(hdr))
    for (name, n), rs in groups.items():
        sa = [r.start_all for r in rs]
        ea = _med(rs, lambda r: r.est_all)
        spread = f"({_ms(min(sa))}-{_ms(max(sa))})" if len(rs) > 1 else ""
        print(f"{name:<10} {n:>7} {_ms(_med(rs, lambda r: r.start_est)):>11} "
              f"{_ms(_med(rs, lambda r: r.start_first - r.start_est)):>9} {_ms(ea):>10} "
              f"{_ms(statistics.median(sa)):>11} {spread:>17} {n / ea:>9.0f} "
              f"{_med(rs, lambda r: r.rss_kib) / 1024:>7.1f}MB {_med(rs, lambda r: r.cpu):>6.2f} "
              f"{_med(rs, lambda r: r.wire_bytes) / n:>7.1f} | {_med(rs, lambda r: r.bird_rss_kib) / 1024:>7.1f}MB "
              f"{_med(rs, lambda r: r.bird_cpu):>8.2f}")
    print(NOTES)
    for (name, n), rs in groups.items():
        keys = [k for k in rs[0].extra if isinstance(rs[0].extra[k], float)]
        if keys:
            items = ", ".join(f"{k} {_ms(statistics.median(r.extra.get(k, float('nan')) for r in rs))}" for k in keys)
            ints = ", ".join(f"{k} {statistics.median(r.extra.get(k, 0) for r in rs):.0f}" for k in rs[0].extra
                             if k not in keys)
            print(f"  {name} {n}: {items}{', ' + ints if ints else ''} (from process start, medians)")
    sizes = sorted({n for _, n in groups})
    print("\nratios of medians (>1: moor slower / bigger)")
    for mine in ("moor", "moor-lib"):
        for other in ("exabgp", "gobgp"):
            for n in sizes:
                a, b = groups.get((mine, n)), groups.get((other, n))
                if not (a and b):
                    continue
                sa = _med(a, lambda r: r.start_all) / _med(b, lambda r: r.start_all)
                ea = _med(a, lambda r: r.est_all) / _med(b, lambda r: r.est_all)
                rss = _med(a, lambda r: r.rss_kib) / _med(b, lambda r: r.rss_kib)
                cpu = _med(a, lambda r: r.cpu) / _med(b, lambda r: r.cpu)
                print(f"  {mine + '/' + other:<16} N={n:<7} start->all {sa:6.2f}x{'*' if other == 'gobgp' else ' '} "
                      f"est->all {ea:5.2f}x  peak RSS {rss:5.2f}x  CPU {cpu:5.2f}x")
    if any(s == "gobgp" for s, _ in groups):
        print("  * includes GoBGP's 5-10 s first-connect timer")


def print_profile(path: Path, what: str, top: int) -> None:
    print(f"\ncProfile: {what}")
    st = pstats.Stats(str(path)).strip_dirs()
    st.sort_stats("tottime").print_stats(top)
    st.sort_stats("cumulative").print_stats(r"speaker\.py|session\.py|update\.py|wire\.py|rib\.py|harness\.py|"
                                            r"ipaddress\.py:57|streams\.py:526", top)


def main() -> int:
    ap = argparse.ArgumentParser(description="Time and peak memory for moor's speaker, ExaBGP and GoBGP to "
                                 "deliver N /32 routes to BIRD; moord's kernel-route-to-ToR latency. "
                                 "Details: the module docstring.")
    ap.add_argument("--sizes", default="10000,100000", help="route counts, comma-separated (default 10000,100000)")
    ap.add_argument("--speakers", default="moor,moor-lib,exabgp,gobgp",
                    help="which, in order, of moor, moor-lib, exabgp, exabgp-api, gobgp "
                         "(default moor,moor-lib,exabgp,gobgp)")
    ap.add_argument("--repeat", type=int, default=3, help="runs per speaker and size, medians reported (default 3)")
    ap.add_argument("--adds", type=int, default=50, help="moord latency samples (0: skip; default 50)")
    ap.add_argument("--poll", type=float, default=0.002, help="BIRD polling interval, s (default 0.002)")
    ap.add_argument("--profile", action="store_true",
                    help="then cProfile moor's speaker (stdin and preloaded) at the largest size")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (configs, logs)")
    args = ap.parse_args()
    why = require_root()
    if why:
        print(f"bgp bench: {why}", file=sys.stderr)
        return 2
    for exe in ("bird", "gobgpd", "gobgp", "ss"):
        if shutil.which(exe) is None:
            print(f"bgp bench: {exe} is not installed (scripts/setup.sh installs it)", file=sys.stderr)
            return 2
    speakers = [s for s in args.speakers.split(",") if s]
    unknown = set(speakers) - {"moor", "moor-lib", "exabgp", "exabgp-api", "gobgp"}
    if unknown:
        ap.error(f"unknown speakers {sorted(unknown)}")
    if {"exabgp", "exabgp-api"} & set(speakers) and not Path(EXABGP).exists():
        print(f"bgp bench: {EXABGP} missing: pip install -e .[bench]", file=sys.stderr)
        return 2
    sizes = [int(s) for s in args.sizes.split(",") if s]
    work = Path(tempfile.mkdtemp(prefix="moor-bgp-bench-"))
    results: list[Result] = []
    lat = None
    profiles: list[tuple[Path, str]] = []
    t_start = time.monotonic()
    load0 = open("/proc/loadavg").read().split()[:3]
    try:
        with Lab() as lab:
            tor, node = lab.ns("tor"), lab.ns("node")
            lab.veth(tor, "t0", node, "n0")
            lab.addr(tor, "t0", f"{TOR}/24")
            lab.addr(node, "n0", f"{NODE}/24")
            for n in sizes:
                for i in range(args.repeat):
                    for s in speakers:  # interleaved, so drift on the machine hits all alike
                        r = run_one(lab, tor, node, work, s, n, args.poll)
                        results.append(r)
                        print(f"  {s:<10} {n:>7} #{i + 1}: start->est {_ms(r.start_est)}, est->all {_ms(r.est_all)}, "
                              f"start->all {_ms(r.start_all)}, peak RSS {r.rss_kib / 1024:.1f} MB", flush=True)
            if args.adds:
                lat = moord_latency(lab, tor, node, work, args.adds, min(args.poll, 0.001))
            if args.profile:
                for s in ("moor", "moor-lib"):
                    prof = work / f"{s}.prof"
                    r = run_one(lab, tor, node, work, s, max(sizes), args.poll, profile=prof)
                    profiles.append((prof, f"{s}, {max(sizes)} routes (start->all {_ms(r.start_all)} "
                                           f"under the profiler, est->all {_ms(r.est_all)})"))
    except KeyboardInterrupt:
        print("interrupted; namespaces and processes removed", file=sys.stderr)
        return 130
    finally:
        if results:
            report(results, args.repeat)
        if lat:
            print(f"\nmoord: kernel route (proto 109, dev lo, added/deleted by netlink in the node netns) to "
                  f"BIRD's import counter, {len(lat['add'])} samples, polled every {min(args.poll, 0.001) * 1e3:.0f} ms")
            for k in ("add", "del"):
                print(f"  {k}: median {statistics.median(lat[k]) * 1e3:6.1f} ms   p90 {_pct(lat[k], 0.9) * 1e3:6.1f} ms"
                      f"   min {min(lat[k]) * 1e3:6.1f} ms   max {max(lat[k]) * 1e3:6.1f} ms")
            print(f"  moord peak RSS {lat['rss_kib'] / 1024:.1f} MB; the speaker waits 5 ms after a change before "
                  "sending (bgp/session.py _sender: coalescing), included above")
        for prof, what in profiles:
            if prof.exists():
                print_profile(prof, what, 18)
        print(f"\ntotal bench time {time.monotonic() - t_start:.0f} s; load average before {' '.join(load0)}, "
              f"after {' '.join(open('/proc/loadavg').read().split()[:3])} (other work on the machine skews times)")
        if args.keep:
            print(f"configs and logs kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
