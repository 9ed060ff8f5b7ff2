"""deploy/kubernetes: every object passes the Kubernetes OpenAPI schema in strict mode (an unknown or
misspelt field fails) for the oldest and newest versions kubernetes-validate knows; the containers
run the image ./run image builds; the ConfigMap's moord.yaml and conflist are what moord and the
plugin accept; the hostPaths are the ones moor uses."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import kubernetes_validate as kv
import pytest
import yaml

from cni.config import parse as parse_netconf
from dataplane.agent import expand_env, load
from tests.helpers import REPO

MANIFEST = REPO / "deploy/kubernetes/moor.yaml"
VERSIONS = ("1.28", kv.latest_version().rsplit(".", 1)[0])  # containerd 1.6 supports kubelet >= 1.24


def image_builder():
    """deploy/image/build.py, a script rather than a package of moor's"""
    spec = importlib.util.spec_from_file_location("moor_image_build", REPO / "deploy/image/build.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def docs() -> list[dict]:
    return [d for d in yaml.safe_load_all(MANIFEST.read_text()) if d]


def by_kind(kind: str) -> dict:
    (d,) = [d for d in docs() if d["kind"] == kind]
    return d


@pytest.mark.parametrize("version", VERSIONS)
def test_every_object_passes_the_schema_strictly(version):
    kinds = []
    for d in docs():
        kv.validate(d, version, strict=True)
        kinds.append(d["kind"])
    assert sorted(kinds) == ["ConfigMap", "DaemonSet", "ServiceAccount"]


def test_a_misspelt_field_fails_the_schema():  # the check above can fail
    ds = by_kind("DaemonSet")
    ds["spec"]["template"]["spec"]["containers"][0]["securityContex"] = {"privileged": True}
    with pytest.raises(kv.ValidationError, match="securityContex"):
        kv.validate(ds, VERSIONS[0], strict=True)


def test_containers_run_the_image_this_checkout_builds():
    build = image_builder()
    pod = by_kind("DaemonSet")["spec"]["template"]["spec"]
    images = {c["image"] for c in pod["containers"] + pod["initContainers"]}
    assert images == {f"{build.REPOSITORY}:{build.version()}"}


def test_no_api_access_and_only_the_host_paths_moor_uses():
    assert by_kind("ServiceAccount")["automountServiceAccountToken"] is False
    pod = by_kind("DaemonSet")["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False and pod["hostNetwork"] is True
    host = {v["hostPath"]["path"] for v in pod["volumes"] if "hostPath" in v}
    assert host == {"/opt/moor", "/opt/cni/bin", "/etc/cni/net.d", "/usr/bin", "/run/moor", "/var/lib/moor",
                    "/var/lib/cni", "/var/run/netns", "/sys/fs/bpf", "/sys/kernel/btf", "/lib/modules", "/usr/src"}
    (init,) = pod["initContainers"]
    assert init["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert all(m.get("readOnly") for m in init["volumeMounts"] if not m["mountPath"].startswith("/host/opt")
               and m["mountPath"] != "/host/etc/cni/net.d")
    moord = pod["containers"][0]
    assert moord["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert moord["readinessProbe"]["httpGet"]["path"] == "/readyz"


def test_the_configmap_is_what_moord_and_the_plugin_accept():
    data = by_kind("ConfigMap")["data"]
    conf = load(expand_env(data["moord.yaml"], {"NODE_IP": "192.0.2.9"}))
    assert conf.local.router_id == "192.0.2.9" and conf.cni_socket == "/run/moor/cni.sock"
    (plugin,) = json.loads(data["10-moor.conflist"])["plugins"]
    nc = parse_netconf(dict(plugin, cniVersion="1.0.0", name="moor"))
    assert nc.mode == "bgp" and nc.ipam["type"] == "moor-ipam"
    pod = by_kind("DaemonSet")["spec"]["template"]["spec"]
    args = pod["initContainers"][0]["command"]
    assert args[args.index("--conf") + 1] == "/etc/moor/10-moor.conflist"
    assert Path(conf.ipam_config).name in data
