"""Connecting to Ray: a private local instance by default, or a cluster to join.

The local instance listens on 127.0.0.1 only (Ray's single-machine mode), has no dashboard
and no usage reporting. An address (or RAY_ADDRESS) joins an existing cluster instead, with
its token authentication handled. Shared by every delfx job that runs on Ray (extraction,
the parts of a gallery index).
"""

from __future__ import annotations

import logging
import os
import sys

log = logging.getLogger(__name__)


def connect(address: str | None = None, *, num_cpus: int | None = None,
            verbosity: int = 0) -> bool:
    """Initialise Ray in this process (a no-op when it already is); True when a local
    instance was started here (the caller shuts it down)."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if address is None and "ray" not in sys.modules:
        # Single-machine mode: every Ray service binds to 127.0.0.1 (read at import time).
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    if address and "ray" not in sys.modules:
        _use_cluster_token(address)  # before `import ray`, which reads RAY_AUTH_MODE
    import ray
    from delfx import tf_quiet
    common = dict(configure_logging=False, log_to_driver=verbosity >= 1,
                  runtime_env={"env_vars": tf_quiet.quiet_environment()})
    if ray.is_initialized():
        log.info("using the Ray runtime already initialised in this process")
        return False
    if address:
        log.info("joining the Ray cluster at %s", address)
        ray.init(address=address, **common)
        return False
    cpus = num_cpus or os.cpu_count() or 1
    log.info("starting a local Ray instance (%d CPUs, 127.0.0.1 only)", cpus)
    if verbosity < 1:
        # Ray warns that it turned token authentication on: for delfx's own private,
        # loopback-only instance that is not news the user must act on.
        logging.getLogger("ray._private.authentication.authentication_token_setup"
                          ).setLevel(logging.ERROR)
    ray.init(address="local", num_cpus=cpus, include_dashboard=False, **common)
    return True


def _cluster_requires_token(address: str) -> bool | None:
    """Ask the cluster's GCS, without credentials, whether it wants a token (None: unknown).

    One unauthenticated GetClusterId call: UNAUTHENTICATED means token authentication is on.
    Raw gRPC (the request is an empty message) because Ray reads RAY_AUTH_MODE when it is
    imported: this must run before `import ray`.
    """
    if "://" in address or ":" not in address:
        return None  # ray:// client addresses and "auto" are resolved by Ray itself
    try:
        import grpc
        with grpc.insecure_channel(address) as channel:
            call = channel.unary_unary("/ray.rpc.NodeInfoGcsService/GetClusterId",
                                       request_serializer=lambda m: m,
                                       response_deserializer=lambda m: m)
            call(b"", timeout=10)
        return False
    except ImportError:
        return None
    except Exception as exc:  # grpc.RpcError and friends
        code = getattr(exc, "code", lambda: None)()
        return True if code is not None and code.name == "UNAUTHENTICATED" else None


def _use_cluster_token(address: str) -> None:
    """Make joining a token-authenticated cluster just work.

    Ray 2.60 turns token authentication on by default for `ray start --head`, but a client
    sends the token only when RAY_AUTH_MODE=token; without it the connection times out with
    InvalidAuthToken. Forcing token mode on a cluster without authentication breaks the other
    way (workers cannot call back the driver). So delfx asks the cluster: if it wants a token
    and the user has not chosen a mode, RAY_AUTH_MODE=token is set, and the token is read from
    RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token (copy that file from the head node).
    """
    if os.environ.get("RAY_AUTH_MODE"):
        return
    if _cluster_requires_token(address):
        from pathlib import Path
        if not (os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH")
                or (Path.home() / ".ray" / "auth_token").is_file()):
            from delfx.errors import DelfxError
            raise DelfxError(f"the Ray cluster at {address} requires token authentication: copy "
                             f"~/.ray/auth_token from its head node to this machine, or set "
                             f"RAY_AUTH_TOKEN_PATH (or RAY_AUTH_TOKEN)")
        os.environ["RAY_AUTH_MODE"] = "token"
        log.info("the cluster uses token authentication: RAY_AUTH_MODE=token")


class WorkerDied(Exception):
    """The worker process running a chunk is gone (killed, crashed, node lost)."""


class ClusterLost(Exception):
    """Ray itself can no longer run work (a dead raylet or GCS, an unreachable cluster)."""


# Every wait on Ray is bounded, so that a dead cluster can never hang the driver: a worker that
# has not loaded its model (or index) in START_TIMEOUT_S is given up, and so is a cluster that
# answers nothing in CALL_TIMEOUT_S.
START_TIMEOUT_S = 900
CALL_TIMEOUT_S = 60


class RayActors:
    """The driver's side of a pool of Ray actors: connect, wait for and fetch results (a dead
    actor is WorkerDied), tell a lost cluster (ClusterLost) from a lost actor, disconnect in
    bounded time. Subclasses make the actors (extraction workers, query-job workers)."""

    def __init__(self, *, address: str | None = None, num_cpus: int | None = None,
                 verbosity: int = 0, cpus_per_worker: float = 1,
                 gpus_per_worker: float | None = 0):
        self.address = address or os.environ.get("RAY_ADDRESS") or None
        self.num_cpus = num_cpus
        self.verbosity = verbosity
        self.cpus_per_worker = cpus_per_worker
        self.gpus_per_worker = gpus_per_worker
        self.started_here = False
        self.lost = False

    def connect(self) -> None:
        self.started_here = connect(self.address, num_cpus=self.num_cpus,
                                    verbosity=self.verbosity)

    def capacity(self) -> int:
        """How many workers the cluster can hold at once."""
        import ray
        resources = ray.cluster_resources()
        if self.gpus_per_worker:
            return max(1, int(resources.get("GPU", 0) // self.gpus_per_worker))
        return max(1, int(resources.get("CPU", 1) // self.cpus_per_worker))

    def describe(self, worker, timeout: float = START_TIMEOUT_S) -> dict:
        """The actor's `describe()`, once it has loaded what it holds (a model, an index)."""
        import ray
        from delfx.errors import DelfxError
        try:
            return ray.get(worker.describe.remote(), timeout=timeout)
        except ray.exceptions.RayActorError as exc:
            try:
                self.health()
            except ClusterLost as lost:
                raise DelfxError(f"{lost} while the workers started: nothing was written; run "
                                 f"again to resume") from None
            raise DelfxError(f"a worker could not start the model: {_cause(exc)}") from None
        except ray.exceptions.GetTimeoutError:
            self.health()
            raise DelfxError(f"a worker did not start its model within {timeout:.0f} s (is the "
                             f"cluster short of resources?)") from None

    def wait(self, handles: list, timeout: float) -> list:
        import ray
        ready, _ = ray.wait(handles, num_returns=1, timeout=timeout)
        return ready

    def result(self, handle) -> list:
        import ray
        try:
            return ray.get(handle, timeout=CALL_TIMEOUT_S)
        except (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError,
                ray.exceptions.NodeDiedError, ray.exceptions.ObjectLostError) as exc:
            raise WorkerDied(_cause(exc)) from None
        except ray.exceptions.GetTimeoutError:
            # A ready result that cannot be fetched: the object store (the raylet) is gone.
            self.health()
            raise WorkerDied(f"the result could not be fetched in {CALL_TIMEOUT_S} s") from None

    def kill(self, worker) -> None:
        """Stop an actor (one that died, or is to be replaced)."""
        import ray
        try:
            ray.kill(worker)
        except Exception:  # already dead
            pass

    def health(self) -> None:
        """Raise ClusterLost when Ray can no longer run the job.

        The local instance (started here): its raylet or GCS process has died. A cluster: no
        node is alive, or the GCS does not answer within CALL_TIMEOUT_S.
        """
        import ray
        if self.started_here:
            node = getattr(ray._private.worker, "_global_node", None)
            dead = sorted({kind for kind, _ in (node.dead_processes() if node else [])
                           if kind in ("raylet", "gcs_server")})
            if dead:
                self.lost = True
                raise ClusterLost(f"the local Ray instance lost its {' and '.join(dead)}")
            return
        nodes = _bounded(ray.nodes, CALL_TIMEOUT_S)
        if nodes is None:
            self.lost = True
            raise ClusterLost(f"the Ray cluster at {self.address} did not answer in "
                              f"{CALL_TIMEOUT_S} s")
        if not any(n.get("Alive") for n in nodes):
            self.lost = True
            raise ClusterLost(f"no node of the Ray cluster at {self.address} is alive")

    def stop(self) -> None:
        """Disconnect (and stop the local instance), in bounded time even when Ray is broken."""
        import ray
        if not ray.is_initialized():
            return
        if self.lost and self.started_here:
            # Our own local instance is half dead: stop its remaining processes first, or
            # shutdown waits on daemons that wait on the dead raylet.
            node = getattr(ray._private.worker, "_global_node", None)
            if node is not None:
                try:
                    node.kill_all_processes(check_alive=False, allow_graceful=False, wait=True)
                except Exception as exc:  # best effort: the process exits next anyway
                    log.debug("killing the local Ray processes: %s", exc)
        if self.started_here or self.lost:
            if _bounded(ray.shutdown, CALL_TIMEOUT_S, done=True) is None:
                log.warning("Ray did not shut down within %d s; leaving it", CALL_TIMEOUT_S)


def _bounded(call, timeout: float, done=None):
    """call() in a daemon thread; its result, or None when it did not return within `timeout`
    (or raised). `done` is returned instead of call()'s result (for calls returning None)."""
    import threading
    box: list = []

    def run():
        try:
            value = call()
            box.append(value if done is None else done)
        except Exception as exc:
            log.debug("%s failed: %s", getattr(call, "__name__", call), exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout)
    return box[0] if box else None


def _cause(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
