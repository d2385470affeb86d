"""A two-node Ray cluster as a separate process, for the tests that join one with --address:
run `python -c CLUSTER`, read the address from its first line of stdout, close its stdin to
shut it down. Every node binds to 127.0.0.1."""

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
