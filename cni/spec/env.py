"""The plugin's environment: CNI_* variables and CNI_ARGS."""
from __future__ import annotations

from .record import record, field

TYPE_CHECKING = False
if TYPE_CHECKING:  # importing typing costs ~4 ms of plugin start-up; annotations are strings
    from typing import Mapping

from .errors import INVALID_ENV, CNIError
from .names import valid_id

COMMANDS = ("ADD", "DEL", "CHECK", "VERSION", "GC", "STATUS")
# CNI_ARGS keys moor understands; others need IgnoreUnknown (as libcni and the Go plugins do).
KNOWN_ARGS = {"IgnoreUnknown", "K8S_POD_NAMESPACE", "K8S_POD_NAME", "K8S_POD_INFRA_CONTAINER_ID",
              "K8S_POD_UID", "IP", "MAC"}
# Verbs that need a container: what each requires of the environment.
_NEEDS = {"ADD": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"),
          "DEL": ("CNI_CONTAINERID", "CNI_IFNAME"),
          "CHECK": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME")}


@record
class Env:
    command: str
    container_id: str = ""
    netns: str = ""
    ifname: str = ""
    args: dict[str, str] = field(default_factory=dict)
    path: list[str] = field(default_factory=list)
    raw: Mapping[str, str] = field(default_factory=dict, repr=False)

    @property
    def pod(self) -> str:
        ns, name = self.args.get("K8S_POD_NAMESPACE", ""), self.args.get("K8S_POD_NAME", "")
        return f"{ns}/{name}" if name else ""


def parse_cni_args(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    if not text:
        return out
    for part in text.split(";"):
        if not part:
            continue
        k, sep, v = part.partition("=")
        if not sep or not k:
            raise CNIError(INVALID_ENV, f"invalid CNI_ARGS: {part!r} is not KEY=VALUE")
        out[k] = v
    ignore = out.get("IgnoreUnknown", "").lower() in ("1", "true")
    unknown = sorted(set(out) - KNOWN_ARGS)
    if unknown and not ignore:
        raise CNIError(INVALID_ENV, f"invalid CNI_ARGS: unknown key {unknown[0]!r}",
                       "set IgnoreUnknown=1 to pass keys moor does not use")
    return out


def _valid_ifname(name: str) -> bool:
    # '%' would make the kernel pick a name from a template (net%d -> net0)
    return 0 < len(name.encode()) <= 15 and name not in (".", "..") and not any(
        c in name for c in "/:% \t\n\0")


def parse_env(environ: Mapping[str, str]) -> Env:
    cmd = environ.get("CNI_COMMAND", "")
    if cmd not in COMMANDS:
        raise CNIError(INVALID_ENV, f"invalid CNI_COMMAND {cmd!r}", f"expected one of {', '.join(COMMANDS)}")
    env = Env(command=cmd, container_id=environ.get("CNI_CONTAINERID", ""),
              netns=environ.get("CNI_NETNS", ""), ifname=environ.get("CNI_IFNAME", ""),
              path=[p for p in environ.get("CNI_PATH", "").split(":") if p], raw=environ)
    missing = [v for v in _NEEDS.get(cmd, ()) if not environ.get(v)]
    if missing:
        raise CNIError(INVALID_ENV, f"missing environment variable {', '.join(missing)}",
                       f"CNI_COMMAND={cmd} needs {', '.join(_NEEDS[cmd])}")
    if env.container_id and not valid_id(env.container_id):  # as libcni validates it
        raise CNIError(INVALID_ENV, f"invalid CNI_CONTAINERID {env.container_id!r}",
                       "a container ID starts with a letter or digit and holds only [A-Za-z0-9_.-]")
    if env.ifname and not _valid_ifname(env.ifname):
        raise CNIError(INVALID_ENV, f"invalid CNI_IFNAME {env.ifname!r}",
                       "an interface name is 1-15 bytes without '/', ':', '%' or whitespace")
    env.args = parse_cni_args(environ.get("CNI_ARGS", ""))
    return env
