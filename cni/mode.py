"""What every attachment mode shares: the pod's netns, delegated IPAM, the MAC a fixed IP keeps,
GC of attachments the runtime forgot, STATUS."""
from __future__ import annotations

import os

from . import delegate
from . import mac as macs
from .config import NetConf
from .env import Env
from .errors import CHECK_FAILED, INVALID_CONFIG, INVALID_ENV, NOT_AVAILABLE, UNKNOWN_CONTAINER, CNIError
from .netlink import netns
from .netlink.rtnl import RTNL, Link
from .result import IPConfig, Result
from .state import Attachment, Store

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Mapping, Optional


def open_pod_netns(env: Env) -> int:
    try:
        return netns.open_netns(env.netns)
    except FileNotFoundError:
        raise CNIError(UNKNOWN_CONTAINER, f"network namespace {env.netns} does not exist") from None
    except (ValueError, IsADirectoryError, PermissionError) as e:
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
        return delegate.run(self.conf.ipam["type"], command, self.environ, self.env.path, self.conf.raw)

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
        except (FileNotFoundError, ValueError, NotADirectoryError, IsADirectoryError):
            return  # the netns is gone, and the macvlan with it
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

    def gc(self) -> None:
        """Release attachments the runtime no longer lists. Like a leak in IPAM, a record is
        released only when a second GC still finds it missing (an ADD may be in flight while the
        runtime builds its list). Without a list, nothing is collected."""
        raw = self.conf.raw
        # SPEC 1.1.0 named the key cni.dev/attachments; libcni sends cni.dev/valid-attachments
        lists = [raw[k] for k in ("cni.dev/valid-attachments", "cni.dev/attachments") if isinstance(raw.get(k), list)]
        if not lists:
            return
        valid = {(a.get("containerID"), a.get("ifname")) for lst in lists for a in lst if isinstance(a, dict)}
        ipam_gc = bool(self.conf.ipam) and delegate.supports(self.conf.ipam["type"], "1.1.0", self.environ, self.env.path)
        for att in self.store.all(self.conf.name):
            if (att.container_id, att.ifname) in valid:
                continue
            if not att.gc_seen:
                att.gc_seen = 1
                self.store.put(att)
                continue
            self._release(att)
            if self.conf.ipam and not ipam_gc:
                env = dict(self.environ, CNI_CONTAINERID=att.container_id, CNI_IFNAME=att.ifname,
                           CNI_NETNS=att.netns)
                delegate.run(self.conf.ipam["type"], "DEL", env, self.env.path, self.conf.raw)
        if ipam_gc:
            self._ipam("GC")

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
            if delegate.supports(self.conf.ipam["type"], "1.1.0", self.environ, self.env.path):
                self._ipam("STATUS")

    def _release(self, att: Attachment) -> None:
        """Undo what ADD left on the node for an attachment the runtime forgot (GC)."""
        raise NotImplementedError
