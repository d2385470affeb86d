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
