"""A worker for the no-duplicate stress test: random ADD/DEL through moor-ipam's library call,
journalled (intent before, outcome after, fsync'd) so a SIGKILL at any point is accounted for.
With "threads" > 1 the process runs that many workers as threads, as moord's CNI server does (they
share the process's writer lock, ipam/store/sqlite.py), each with its own journal."""
from __future__ import annotations

import json
import os
import random
import sys


def worker(wid: int, n_ops: int, netconf: dict, journal: str, node: str, seed: int) -> None:
    from ipam.plugin import run as run_once
    import time

    def run(env: dict, data: bytes) -> tuple[bytes, int]:
        for _ in range(20):  # code 11 means try again later: a runtime retries, so do we
            out, code = run_once(env, data)
            if code == 0 or json.loads(out).get("code") != 11:
                return out, code
            time.sleep(rnd.uniform(0.01, 0.1))
        return out, code
    rnd = random.Random(seed)
    live: dict[str, str] = {}  # container -> pod name; each worker owns its pod names (k8s: one live pod a name)
    data = json.dumps(netconf).encode()
    env0 = {"CNI_NETNS": "/run/netns/none", "CNI_IFNAME": "eth0", "MOOR_NODE_NAME": node}
    with open(journal, "a") as j:
        def log(line: str) -> None:
            j.write(line + "\n")
            j.flush()
            os.fsync(j.fileno())

        for i in range(n_ops):
            if live and (len(live) >= 3 or rnd.random() < 0.45):
                cid = rnd.choice(sorted(live))
                log(f"del-start {cid}")
                out, code = run(dict(env0, CNI_COMMAND="DEL", CNI_CONTAINERID=cid), data)
                assert code == 0, out
                log(f"del {cid}")
                del live[cid]
                continue
            names = [f"w{wid}-{k}" for k in range(5) if f"w{wid}-{k}" not in live.values()]
            name = rnd.choice(names)
            cid = f"w{wid}-c{i}"
            args = f"IgnoreUnknown=1;K8S_POD_NAMESPACE=stress;K8S_POD_NAME={name}"
            if rnd.random() < 0.1:  # now and then ask for a fixed IP someone may hold
                args += f";IP=192.0.2.{rnd.randint(10, 40)}"
            log(f"add-start {cid}")
            out, code = run(dict(env0, CNI_COMMAND="ADD", CNI_CONTAINERID=cid, CNI_ARGS=args), data)
            if code == 0:
                ip = json.loads(out)["ips"][0]["address"].split("/")[0]
                log(f"add {cid} {ip}")
                live[cid] = name
            else:
                err = json.loads(out)
                assert err["code"] in (111, 112), err  # held by another identity, pool exhausted
                log(f"add-failed {cid} {err['code']}")


if __name__ == "__main__":
    a = json.loads(sys.argv[1])
    n = a.get("threads", 1)
    if n == 1:
        worker(a["wid"], a["n_ops"], a["netconf"], a["journal"], a["node"], a["seed"])
    else:
        import threading
        failed = []

        def one(t: int) -> None:
            try:
                worker(a["wid"] * 100 + t, a["n_ops"] // n, a["netconf"], f"{a['journal']}-t{t}", a["node"],
                       a["seed"] * 100 + t)
            except BaseException as e:  # a thread's failure must fail the process
                failed.append(e)
                raise
        threads = [threading.Thread(target=one, args=(t,)) for t in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if failed:
            sys.exit(1)
