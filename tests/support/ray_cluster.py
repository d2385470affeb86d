"""A two-node Ray cluster as a separate process, for the tests that join one with --address:
run `python -c CLUSTER`, read the address from its first line of stdout, close its stdin to
shut it down (two_node_cluster does all that). Every node binds to 127.0.0.1."""

import contextlib
import subprocess
import sys
from typing import Iterator

CLUSTER = """
import os, sys, time
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"   # every node on 127.0.0.1
from ray.cluster_utils import Cluster
cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
cluster.add_node(num_cpus=1)
cluster.wait_for_nodes()
print(cluster.address, flush=True)
sys.stdin.read()          # until the test closes stdin
cluster.shutdown()
"""


@contextlib.contextmanager
def two_node_cluster(env: dict[str, str]) -> Iterator[str]:
    """CLUSTER in its own process (token authentication on, as `ray start --head` has by
    default, with `env` otherwise); yields its address; shut down on leaving."""
    cluster = subprocess.Popen([sys.executable, "-c", CLUSTER], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                               env={**env, "RAY_AUTH_MODE": "token"})
    try:
        address = cluster.stdout.readline().strip()
        assert address.startswith("127.0.0.1:"), address
        yield address
    finally:
        cluster.stdin.close()
        cluster.wait(timeout=60)
