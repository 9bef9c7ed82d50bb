"""Checks on the Ray processes the cluster tests start (tests/test_ray_cluster.py,
tests/test_ray_join.py)."""

import psutil

LOOPBACK = ("127.0.0.1", "::ffff:127.0.0.1", "::1")


def exposed_sockets(pids) -> set:
    """Returns {(process name, ip, port)} of the listening TCP sockets of the pids that are not
    bound to loopback (empty: nothing reachable from outside the machine)."""
    out = set()
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            for c in proc.net_connections(kind="tcp"):
                if c.status == psutil.CONN_LISTEN and c.laddr.ip not in LOOPBACK:
                    out.add((proc.name(), c.laddr.ip, c.laddr.port))
        except psutil.NoSuchProcess:
            pass
    return out


def children_pids() -> list[int]:
    """Returns this process and every process it started (e.g. a cluster's GCS and raylets)."""
    me = psutil.Process()
    return [me.pid] + [p.pid for p in me.children(recursive=True)]
