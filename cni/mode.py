"""What every attachment mode shares: the pod's netns, delegated IPAM, the MAC a fixed IP keeps,
GC of attachments the runtime forgot, STATUS."""
from __future__ import annotations

import os
import time

from ipam.inprocess import IN_PROCESS, UNDO_ENV

from . import mac as macs
from .config import NetConf
from .netlink import netns
from .netlink.rtnl import RTNL, Link
from .spec import delegate, netconf
from .spec.env import Env
from .spec.errors import CHECK_FAILED, INVALID_CONFIG, INVALID_ENV, NOT_AVAILABLE, UNKNOWN_CONTAINER, CNIError
from .spec.result import IPConfig, Result
from .state import Attachment, Store

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Mapping, Optional

    from .steps import Steps


def open_pod_netns(env: Env) -> int:
    try:
        return netns.open_netns(env.netns)
    except FileNotFoundError:
        raise CNIError(UNKNOWN_CONTAINER, f"network namespace {env.netns} does not exist") from None
    except (ValueError, IsADirectoryError, NotADirectoryError, PermissionError) as e:
        # code 4, not 3: the variable is wrong, and 3 would tell the runtime no clean-up is needed
        raise CNIError(INVALID_ENV, f"invalid CNI_NETNS {env.netns!r}: {e}") from None


def pod_socket(nsfd: int, path: str = "") -> RTNL:
    try:
        with netns.entered(nsfd):
            return RTNL()
    except ValueError:
        raise CNIError(INVALID_ENV, f"invalid CNI_NETNS {path!r}: not a network namespace") from None


class Mode:
    def __init__(self, env: Env, conf: NetConf, environ: Mapping[str, str]):
        self.env = env
        self.conf = conf
        self.environ = environ
        self.store = Store(conf.state_dir)
        self.host = RTNL()

    def close(self) -> None:
        self.host.close()

    # -- helpers -----------------------------------------------------------------------------
    def _ipam(self, command: str) -> Optional[dict]:
        return delegate.run(self.conf.ipam["type"], command, self.environ, self.env.path, self.conf.raw, IN_PROCESS)

    def _ipam_undo(self) -> None:
        """Roll back this ADD's allocation: a DEL that tells moor-ipam (MOOR_IPAM_UNDO, which other
        IPAM plugins ignore) to put back exactly what the ADD replaced, e.g. the IP's previous
        holder, instead of holding the IP for a container that never ran."""
        env = dict(self.environ, **{UNDO_ENV: "1"})
        delegate.run(self.conf.ipam["type"], "DEL", env, self.env.path, self.conf.raw, IN_PROCESS)

    def _choose_mac(self, ips: list[IPConfig]) -> str:
        c = self.conf
        if c.runtime("mac"):
            return macs.parse(c.runtime("mac"), "runtimeConfig.mac", INVALID_CONFIG)
        cni_args = c.args.get("cni") if isinstance(c.args.get("cni"), dict) else {}
        if cni_args.get("mac"):
            return macs.parse(cni_args["mac"], "args.cni.mac", INVALID_CONFIG)
        if self.env.args.get("MAC"):
            return macs.parse(self.env.args["MAC"], "CNI_ARGS MAC", INVALID_ENV)
        if c.mac_from_ip and ips and not (c.mode == "macvlan" and c.macvlan_mode == "passthru"):
            v4 = [i for i in ips if i.version == 4]
            return macs.from_ip((v4 or ips)[0].address.ip)
        return ""

    def _delete_link_in(self, path: str, ifname: str, kind: str) -> None:
        """Delete the pod's link of `kind` if its netns still exists; a missing netns or link is fine."""
        try:
            nsfd = netns.open_netns(path)
        except (FileNotFoundError, ValueError, NotADirectoryError, IsADirectoryError, PermissionError):
            return  # the netns is gone (and the macvlan with it), or it never was one
        try:
            try:
                pod = pod_socket(nsfd, path)
            except CNIError:
                return  # not a network namespace: nothing of ours can be in it
            try:
                link = pod.link_get(ifname)
                if link is not None and link.kind == kind:
                    pod.link_del(link.index)
            finally:
                pod.close()
        finally:
            os.close(nsfd)

    def forgotten(self) -> bool:
        """No record of this attachment is left on the node (after a DEL or a rolled-back ADD)."""
        try:
            return self.store.get(self.conf.name, self.env.container_id, self.env.ifname) is None
        except CNIError:
            return False  # unreadable: keep its lock file, it costs nothing

    def gc(self) -> None:
        """Release attachments the runtime no longer lists. Like a leak in IPAM, a record is
        released only when a GC at least gcGraceSeconds after the one that first found it missing
        still finds it missing, a record younger than that is not judged at all (the runtime's list
        may predate an ADD that finished since: two overlapping GCs with such lists must not release
        a live pod), and never while another operation holds its lock. A list that is missing or
        malformed is code 7 and nothing is touched."""
        valid = netconf.gc_attachments(self.conf.raw)
        now, grace = time.time(), self.conf.gc_grace_s
        ipam_gc = bool(self.conf.ipam) and delegate.supports(self.conf.ipam["type"], "1.1.0", self.environ, self.env.path, IN_PROCESS)
        for seen in self.store.all(self.conf.name):
            if (seen.container_id, seen.ifname) in valid:
                if not seen.gc_seen and not self.store.has_temp(seen):
                    continue  # nothing to mend: no lock taken, no record read again
                with self.store.attachment_lock(seen.network, seen.container_id, seen.ifname, wait=False) as lock:
                    if lock is None:
                        continue
                    att = self.store.get(seen.network, seen.container_id, seen.ifname)
                    if att is None:
                        lock.discard()  # deleted since it was listed: its lock file goes too
                        continue
                    self.store.drop_temp(att)
                    if att.gc_seen:  # listed again (an ADD the previous list missed): no leak after all
                        att.gc_seen = 0
                        self.store.put(att)
                continue
            with self.store.attachment_lock(seen.network, seen.container_id, seen.ifname, wait=False) as lock:
                if lock is None:
                    continue  # an ADD or DEL of it is running: not a leak to judge now
                att = self.store.get(seen.network, seen.container_id, seen.ifname)
                if att is None:
                    lock.discard()  # deleted meanwhile: its lock file goes too
                    continue
                if not att.gc_seen:
                    if now - self.store.written_at(att) >= grace:
                        att.gc_seen = now
                        self.store.put(att)
                    continue
                if now - att.gc_seen < grace:
                    continue
                self._release(att)
                if self.conf.ipam and not ipam_gc:
                    env = dict(self.environ, CNI_CONTAINERID=att.container_id, CNI_IFNAME=att.ifname,
                               CNI_NETNS=att.netns)
                    delegate.run(self.conf.ipam["type"], "DEL", env, self.env.path, self.conf.raw, IN_PROCESS)
                lock.discard()
        # lock files of attachments that never got a record (an operation killed early whose DEL
        # never came): nothing lists them, so the sweep finds them
        self.store.sweep_locks(self.conf.name)
        self._sweep_shared()
        if ipam_gc:
            keep = self._ipam_gc_keep()
            conf = dict(self.conf.raw, **{k: list(self.conf.raw[k]) + keep for k in netconf.GC_KEYS
                                          if k in self.conf.raw})
            delegate.run(self.conf.ipam["type"], "GC", self.environ, self.env.path, conf, IN_PROCESS)

    def _record_pending(self, steps: Steps, att: Attachment) -> None:
        """Record the attachment before IPAM allocates for it: a plugin killed between the two
        would leave an IP that no record names, which an IPAM without GC (host-local) never gets
        back when the runtime's DEL does not come either. GC releases a pending record like any."""
        steps.run("pending", lambda: self.store.put(att, durable=False),
                  lambda: self.store.remove(att.network, att.container_id, att.ifname))

    def _sweep_shared(self) -> None:
        """Release what the mode shares between attachments and no attachment uses any more."""

    def _ipam_gc_keep(self) -> list[dict[str, str]]:
        """Allocations of this network that belong to no container the runtime lists, yet are
        live (a host shim's addresses), as entries for the IPAM GC's list of valid attachments."""
        return []

    # -- CHECK: what every mode verifies; the modes add their own host and link checks ---------
    def check(self) -> None:
        c, env = self.conf, self.env
        prev = c.prev_result
        if prev is None:
            raise CNIError(INVALID_CONFIG, "invalid network config: CHECK needs 'prevResult'")
        diffs = self._check_host(prev)
        nsfd = open_pod_netns(env)
        try:
            pod = pod_socket(nsfd, env.netns)
        finally:
            os.close(nsfd)
        try:
            idx = next((n for n, i in enumerate(prev.interfaces) if i.name == env.ifname and i.sandbox), None)
            if idx is None:
                diffs.append(f"prevResult lists no sandbox interface {env.ifname}")
            link = pod.link_get(env.ifname)
            if link is None:
                diffs.append(f"interface {env.ifname} does not exist in {env.netns}")
            else:
                diffs += self._check_link(pod, link, prev, idx)
                if not link.up:
                    diffs.append(f"{link.name} is down")
                have = set(pod.addrs(link.index))
                diffs += [f"address {ip.address} missing from {link.name}" for ip in prev.ips
                          if ip.interface == idx and ip.address not in have]
        finally:
            pod.close()
        if c.ipam:
            try:
                self._ipam("CHECK")
            except CNIError as e:
                diffs.append(f"IPAM: {e.msg}")
        if diffs:
            raise CNIError(CHECK_FAILED, f"CHECK failed for {env.ifname}: " + "; ".join(diffs))

    def _check_host(self, prev: Result) -> list[str]:
        """Differences on the node's side of the attachment."""
        return []

    def _check_link(self, pod: RTNL, link: Link, prev: Result, idx: Optional[int]) -> list[str]:
        """Differences of the pod's interface and routes (up and addresses are checked for all)."""
        return []

    def status(self) -> None:
        if self.conf.ipam:
            try:
                delegate.find_plugin(self.conf.ipam["type"], self.env.path)
            except CNIError as e:
                raise CNIError(NOT_AVAILABLE, e.msg, e.details) from e
            if delegate.supports(self.conf.ipam["type"], "1.1.0", self.environ, self.env.path, IN_PROCESS):
                self._ipam("STATUS")

    def _release(self, att: Attachment) -> None:
        """Undo what ADD left on the node for an attachment the runtime forgot (GC)."""
        raise NotImplementedError
