"""The lab on network namespaces. `python -m lab demo` (what `./run demo` runs):

    pod-a ─┐ macvlan (bridge)
           ├── up0 [node] ══ veth ══ pp0 [peer: the "physical" network, gateway 192.0.2.1]
    pod-b ─┘      └ host shim (node reaches its own macvlan pods)

moor is executed exactly as kubelet would execute it (env + stdin, inside the node's netns), with
the reference host-local IPAM; the demo pings pod to pod, pod to peer, node to pod, runs CHECK and
DEL and proves nothing is left behind. Exit status 0 only if every check held.

`demo` runs this macvlan scenario, then the routed/BGP one (lab/routed.py: a BIRD ToR, two
nodes running moord, pods that move, graceful restart under a UDP stream), then every UDP loss
case of the design notes (lab/cases/, lab/loss.py: each reproduced under a busy background, named
by `netdiag doctor` through moord's probe and through the kernel's counters, its remedy applied,
the loss measured before and after). `python -m lab list` lists them; `python -m lab NAME [options]`
runs one alone. Each scenario and case gets its own namespaces and temp dir, removed when it ends,
on failure and on Ctrl-C too.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from cni.install import write_launcher

from dataplane.nslab import Lab, LabError, require_root

REF_PLUGINS = "/usr/lib/cni"


class Demo:
    def __init__(self, lab: Lab, tmp: Path):
        self.lab, self.tmp = lab, tmp
        self.failures = 0
        self.bin = tmp / "cni-bin"
        self.bin.mkdir()
        self.moor = str(write_launcher(self.bin))
        for p in Path(REF_PLUGINS).iterdir():
            os.symlink(p, self.bin / p.name)

    def say(self, ok: bool, what: str) -> None:
        print(f"  [{'ok' if ok else 'FAIL'}] {what}")
        self.failures += 0 if ok else 1

    def cni(self, command: str, conf: dict, pod_ns: str, cid: str) -> tuple[int, Any]:
        env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin"), "CNI_COMMAND": command,
               "CNI_CONTAINERID": cid, "CNI_NETNS": Lab.path(pod_ns), "CNI_IFNAME": "eth0",
               "CNI_PATH": str(self.bin), "CNI_ARGS": f"IgnoreUnknown=1;K8S_POD_NAMESPACE=demo;K8S_POD_NAME={cid}"}
        p = self.lab.run(self.node, self.moor, input=json.dumps(conf).encode(), env=env, check=False)
        return p.returncode, json.loads(p.stdout) if p.stdout.strip() else None

    def run(self) -> int:
        lab = self.lab
        print(f"moor macvlan demo (namespaces prefixed {lab.prefix})")
        self.node, peer = lab.ns("node"), lab.ns("peer")
        lab.veth(self.node, "up0", peer, "pp0")
        lab.addr(self.node, "up0", "192.0.2.2/24")
        lab.addr(peer, "pp0", "192.0.2.1/24")
        pods = {"pod-a": lab.ns("pod-a"), "pod-b": lab.ns("pod-b")}
        conf = {"cniVersion": "1.0.0", "name": "demo", "type": "moor", "mode": "macvlan", "master": "up0",
                "hostShim": True, "stateDir": str(self.tmp / "state"),
                "ipam": {"type": "host-local", "dataDir": str(self.tmp / "ipam"),
                         "ranges": [[{"subnet": "192.0.2.0/24", "rangeStart": "192.0.2.10",
                                      "rangeEnd": "192.0.2.99", "gateway": "192.0.2.1"}]]}}
        print("\nADD (kubelet -> moor -> host-local):")
        results, ips = {}, {}
        for name, ns in pods.items():
            code, res = self.cni("ADD", conf, ns, name)
            self.say(code == 0, f"{name}: {json.dumps(res)}")
            if code != 0:
                return 1
            results[name] = res
            ips[name] = res["ips"][0]["address"].split("/")[0]

        print("\nreachability:")
        self.say(lab.ping(pods["pod-a"], ips["pod-b"]), f"pod-a -> pod-b ({ips['pod-b']})")
        self.say(lab.ping(pods["pod-b"], ips["pod-a"]), f"pod-b -> pod-a ({ips['pod-a']})")
        for name, ns in pods.items():
            self.say(lab.ping(ns, "192.0.2.1"), f"{name} -> physical peer 192.0.2.1")
        self.say(lab.ping(peer, ips["pod-a"]), f"physical peer -> pod-a ({ips['pod-a']})")
        self.say(lab.ping(self.node, ips["pod-b"]), f"node -> pod-b through the host shim ({ips['pod-b']})")

        print("\nCHECK:")
        for name, ns in pods.items():
            code, err = self.cni("CHECK", dict(conf, prevResult=results[name]), ns, name)
            self.say(code == 0, f"{name} matches its ADD result")
        lab.run(pods["pod-a"], "ip", "link", "set", "eth0", "down")
        code, err = self.cni("CHECK", dict(conf, prevResult=results["pod-a"]), pods["pod-a"], "pod-a")
        self.say(code != 0, f"after 'ip link set eth0 down' in pod-a, CHECK says: {err and err.get('msg')}")

        print("\nDEL (twice each, as containerd does):")
        for name, ns in pods.items():
            c1, _ = self.cni("DEL", dict(conf, prevResult=results[name]), ns, name)
            c2, _ = self.cni("DEL", conf, ns, name)
            self.say(c1 == 0 and c2 == 0, f"{name} deleted")
        leftovers = [l for l in lab.run(self.node, "ip", "-o", "link").stdout.decode().splitlines()
                     if "mshim" in l]
        leases = [p.name for p in (self.tmp / "ipam").rglob("192.0.2.*")]
        self.say(not leftovers and not leases, "nothing left behind (no shim, no IP lease)")
        print(f"\n{'all checks passed' if not self.failures else f'{self.failures} check(s) failed'}")
        return 0 if not self.failures else 1


def _macvlan(lab: Lab, tmp: Path) -> int:
    return Demo(lab, tmp).run()


def _bgp(lab: Lab, tmp: Path) -> int:
    from . import routed
    return routed.run(lab, tmp)


SCENARIOS: dict[str, tuple[Callable[[Lab, Path], int], str]] = {
    "macvlan": (_macvlan, "two macvlan pods, a physical peer and their node: ADD, ping, CHECK, DEL, nothing left"),
    "bgp": (_bgp, "a BIRD ToR and two moord nodes: routed pods, a fixed-IP pod moves, graceful restart under a "
                  "UDP stream"),
}
RESULTS: list = []  # the loss cases' results of this run (lab.loss.CaseResult), for the summary


def _cases() -> dict:
    from .cases import CASES
    return CASES


def _defaults(name: str) -> argparse.Namespace:
    from .cases import options
    return options(name)


def _loss_case(name: str, opts: argparse.Namespace) -> Callable[[Lab, Path], int]:
    def run(lab: Lab, tmp: Path) -> int:
        r = _cases()[name](lab, tmp, opts).run()
        RESULTS.append(r)
        status = ("skipped: " + r.skipped) if r.skipped else ("all checks passed" if r.ok else
                                                               f"{len(r.failed)} check(s) failed")
        soft = [c for c in r.checks if c.soft and not c.ok]
        print(f"\n{name}: {status}" + (f" ({len(soft)} soft check(s) not met yet)" if soft else ""))
        return 0 if r.ok else 1
    return run


@contextmanager
def _uninterrupted() -> Iterator[None]:
    """Clean-up that a Ctrl-C (or SIGTERM) cannot cut short; one that arrives meanwhile takes effect
    right after it."""
    got: list[int] = []
    try:
        old = {s: signal.signal(s, lambda n, _f: got.append(n)) for s in (signal.SIGINT, signal.SIGTERM)}
    except ValueError:  # not the main thread: signals cannot arrive here anyway
        old = {}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    if got:
        handler = old.get(got[0])
        if callable(handler):
            handler(got[0], None)
        elif handler == signal.SIG_DFL:
            raise _Terminated if got[0] == signal.SIGTERM else KeyboardInterrupt


def _scenario(name: str, run: Callable[[Lab, Path], int]) -> int:
    """Run one scenario in its own Lab and temp dir; both are removed whatever happens."""
    tmp = Path(tempfile.mkdtemp(prefix=f"moor-lab-{name}-"))
    lab = Lab()
    try:
        return run(lab, tmp)
    except (subprocess.SubprocessError, LabError, OSError) as e:
        print(f"  [FAIL] the {name} scenario stopped: {e}")
        return 1
    except Exception:  # a bug in the lab or in moor: show it, clean up, go on with the next scenario
        print(f"  [FAIL] the {name} scenario stopped with an error:")
        traceback.print_exc(file=sys.stdout)
        return 1
    finally:
        with _uninterrupted():
            lab.close(close_pipes=True)
            shutil.rmtree(tmp, ignore_errors=True)


class _Terminated(KeyboardInterrupt):
    """SIGTERM: the same clean-up as Ctrl-C."""


def _sigterm(*_: Any) -> None:
    raise _Terminated


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m lab", description="moor's lab on network namespaces: every "
                                 "scenario and loss case in fresh namespaces, removed when it ends.")
    sub = ap.add_subparsers(dest="scenario", metavar="SCENARIO")
    sub.required = True
    sub.add_parser("list", help="the scenarios and loss cases, with their options")
    d = sub.add_parser("demo", help="macvlan, bgp, then every loss case (what ./run demo runs)")
    d.add_argument("--only", metavar="NAME[,NAME...]", help="run just these scenarios/cases, in demo order")
    for name, (_, text) in SCENARIOS.items():
        sub.add_parser(name, help=text)
    sub.add_parser("loss", help="every loss case in sequence, with its defaults")
    for name, cls in _cases().items():
        p = sub.add_parser(name, help=cls.title, description=f"{cls.title}. {cls.design}. The doctor must name "
                           f"cause {cls.cause}.")
        cls.add_options(p)
    return ap


def _list(ap: argparse.ArgumentParser) -> None:
    print("scenarios (python -m lab NAME):")
    for name, (_, text) in SCENARIOS.items():
        print(f"  {name:18} {text}")
    print("\nloss cases (python -m lab CASE [options]); each: busy background, moord with its probe, the loss "
          "measured,\n`netdiag doctor` through the agent and the kernel, the doctor's remedy applied, the loss "
          "measured again:")
    sub = next(a for a in ap._actions if isinstance(a, argparse._SubParsersAction))
    for name, cls in _cases().items():
        print(f"\n  {name:18} {cls.title} (cause {cls.cause})")
        print(f"  {'':18} design notes {cls.design}")
        for act in sub.choices[name]._actions:
            if act.option_strings and act.dest != "help":
                print(f"  {'':18}   {', '.join(act.option_strings):16} {act.help}")
    print("\n  demo               macvlan, bgp and every loss case (./run demo); --only NAME,... for a subset")
    print("  loss               every loss case")


def _summary() -> None:
    if not RESULTS:
        return
    from .loss import pct
    print("\nloss cases (loss measured by the lab's own sender and receiver; the doctor's first finding per source;")
    print("'(not the case)': a finding of that cause, but about the background or not attributed to the case):")
    print(f"  {'case':17} {'before':>7} {'after':>7}  {'doctor #1 (agent)':32} {'doctor #1 (kernel)':20} result")
    for r in RESULTS:
        fa, fk = r.first.get("agent"), r.first.get("kernel")
        agent = (fa["cause"] + (" (not the case)" if fa["cause"] == r.cause and not r.named_first else "")
                 if fa else ("no finding" if "agent" in r.first else "-"))
        soft = sum(1 for c in r.checks if c.soft and not c.ok)
        res = ("skipped: " + r.skipped if r.skipped else "ok" if r.ok else "FAILED") + \
              (f", {soft} soft check not met" if soft else "")
        kernel = fk["cause"] if fk else ("no finding" if "kernel" in r.first else "-")
        print(f"  {r.name:17} {pct(r.loss_before):>7} {pct(r.loss_after):>7}  {agent:32} {kernel:20} {res}")


def main(argv: list[str] | None = None) -> int:
    ap = _parser()
    a = ap.parse_args(argv)
    if a.scenario == "list":
        _list(ap)
        return 0
    cases = _cases()
    if a.scenario in cases:
        why = cases[a.scenario].check_options(a)
        if why:
            ap.error(f"{a.scenario}: {why}")
    why = require_root()
    if why:
        print(f"lab: {why}", file=sys.stderr)
        return 2
    order = [*SCENARIOS, *cases]
    if a.scenario == "demo":
        names = order
        if a.only:
            want = [n.strip() for n in a.only.split(",") if n.strip()]
            bad = [n for n in want if n not in order]
            if bad:
                ap.error(f"--only: unknown {', '.join(bad)} (choose from {', '.join(order)})")
            names = [n for n in order if n in want]
    elif a.scenario == "loss":
        names = list(cases)
    else:
        names = [a.scenario]
    runs = {n: (SCENARIOS[n][0] if n in SCENARIOS else
                _loss_case(n, a if n == a.scenario else _defaults(n))) for n in names}
    RESULTS.clear()
    try:
        old_term = signal.signal(signal.SIGTERM, _sigterm)
    except ValueError:
        old_term = None
    t0 = time.monotonic()
    failed = []
    try:
        for i, name in enumerate(names):
            if i:
                print("\n" + "=" * 78 + "\n", flush=True)
            if _scenario(name, runs[name]):
                failed.append(name)
    except KeyboardInterrupt as e:
        print("\nlab: interrupted; namespaces, processes and temp dirs removed", file=sys.stderr)
        return 143 if isinstance(e, _Terminated) else 130
    finally:
        if old_term is not None:
            signal.signal(signal.SIGTERM, old_term)
    if len(names) > 1:
        print("\n" + "=" * 78)
        _summary()
        print(f"\n{a.scenario}: {', '.join(f'{n} ' + ('FAILED' if n in failed else 'ok') for n in names)} "
              f"({time.monotonic() - t0:.0f} s)")
        print("all checks passed" if not failed else f"{len(failed)} scenario(s) failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
