"""Where extraction chunks run: Ray actors (local instance or a cluster), or in this process.

Both executors expose the same small interface to the job loop (`delfx.extractor.job`):
`start(config)` with the resolved extraction config (the only way a config reaches them),
workers that each hold one loaded model, `submit(worker, items) -> handle`, `wait(handles)`,
`result(handle)`, and `replace(worker)` after a worker died. Ray is imported only here.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import sys
from typing import Any

from delfx.config import ExtractConfig
from delfx.inputs import ImageItem

log = logging.getLogger(__name__)


class WorkerDied(Exception):
    """The worker process running a chunk is gone (killed, crashed, node lost)."""


class ClusterLost(Exception):
    """Ray itself can no longer run work (a dead raylet or GCS, an unreachable cluster)."""


# Bounds on every wait on Ray, so that a dead cluster can never hang the driver: a worker that
# has not loaded its model in this time is given up, and so is a cluster that answers nothing.
START_TIMEOUT_S = 900
CALL_TIMEOUT_S = 60


class ExtractWorker:
    """Holds one loaded model and extracts chunks of images (the body of a Ray actor)."""

    def __init__(self, config: ExtractConfig, threads: int, use_gpu: bool,
                 global_model: str | None = None):
        from delfx import tf_quiet
        from delfx.config import LEARNED_MODEL_NAMES
        from delfx.extractor.models import create_model
        if config.model in LEARNED_MODEL_NAMES:  # PyTorch runs here
            from delfx.extractor.torch_support import set_threads
            set_threads(threads)
        if config.model not in ("rootsift", *LEARNED_MODEL_NAMES) or global_model is not None:
            # TensorFlow runs here
            tf = tf_quiet.import_tensorflow()
            try:
                tf.config.threading.set_intra_op_parallelism_threads(threads)
                tf.config.threading.set_inter_op_parallelism_threads(max(1, threads))
            except RuntimeError:  # already initialised (in-process executor): keep as is
                pass
            # Several workers may share one GPU: grow memory as needed instead of taking it all.
            for gpu in tf.config.list_physical_devices("GPU") if use_gpu else []:
                try:
                    tf.config.experimental.set_memory_growth(gpu, True)
                except RuntimeError:
                    pass
        import cv2
        cv2.setNumThreads(threads)
        self.model = create_model(config)
        if global_model is not None:  # also store each image's GeM vector (schema v2)
            from delfx.extractor.with_global import WithGlobal
            from delfx.globalnet.model import load_global_model
            self.model = WithGlobal(self.model, load_global_model(global_model))

    def describe(self) -> dict[str, Any]:
        info = self.model.describe()
        info["output_config"] = self.model.output_config()
        info["pid"] = os.getpid()
        info["node_id"] = "in-process"
        if "ray" in sys.modules:  # never import ray here: get_runtime_context() would start it
            import ray
            if ray.is_initialized():
                info["node_id"] = ray.get_runtime_context().get_node_id()
        return info

    def process(self, items: list[tuple[str, str]]) -> list:
        from delfx.extractor.run import extract_items
        return list(extract_items(self.model, [ImageItem(i, p) for i, p in items]))


class InProcessExecutor:
    """Runs every chunk synchronously in this process (no Ray): for debugging and benchmarks."""

    name = "in-process"

    def __init__(self, *, global_model: str | None = None):
        self.global_model = global_model
        self.config: ExtractConfig | None = None

    def start(self, config: ExtractConfig) -> None:
        self.config = config

    def workers(self, count: int) -> list:
        return [ExtractWorker(self.config, os.cpu_count() or 1, False, self.global_model)]

    def describe(self, worker) -> dict[str, Any]:
        return worker.describe()

    def submit(self, worker, items: list[ImageItem]):
        future: concurrent.futures.Future = concurrent.futures.Future()
        future.set_result(worker.process([(i.image_id, i.path) for i in items]))
        return future

    def wait(self, handles: list, timeout: float) -> list:
        return handles[:1]

    def result(self, handle) -> list:
        return handle.result()

    def replace(self, worker):
        return worker

    def health(self) -> None:
        pass

    def stop(self) -> None:
        pass


class RayExecutor:
    """Ray actors, each loading the model once; a local Ray instance unless given an address.

    The local instance listens on 127.0.0.1 only (Ray's single-machine mode), has no dashboard
    and no usage reporting. `address` (or RAY_ADDRESS) joins an existing cluster instead.
    """

    name = "ray"

    def __init__(self, *, address: str | None = None, num_cpus: int | None = None,
                 cpus_per_worker: float = 1, gpus_per_worker: float | None = None,
                 verbosity: int = 0, global_model: str | None = None):
        self.config: ExtractConfig | None = None
        self.global_model = global_model
        self.address = address or os.environ.get("RAY_ADDRESS") or None
        self.num_cpus = num_cpus
        self.cpus_per_worker = cpus_per_worker
        self.gpus_per_worker = gpus_per_worker
        self.verbosity = verbosity
        self.started_here = False
        self.lost = False
        self._actor_class = None

    def start(self, config: ExtractConfig) -> None:
        self.config = config
        from delfx.ray_runtime import connect
        self.started_here = connect(self.address, num_cpus=self.num_cpus,
                                    verbosity=self.verbosity)
        import ray
        if self.gpus_per_worker is None:
            # GPU when the cluster has one and the model runs a network (TensorFlow or PyTorch).
            gpus = ray.cluster_resources().get("GPU", 0)
            self.gpus_per_worker = 1 if gpus >= 1 and self.config.model != "rootsift" else 0
            log.info("%s", f"{gpus:g} GPU(s) in the cluster: workers use " +
                     ("one GPU each" if self.gpus_per_worker else "the CPU"))
        self._actor_class = ray.remote(ExtractWorker).options(
            num_cpus=self.cpus_per_worker, num_gpus=self.gpus_per_worker, max_restarts=0)

    def capacity(self) -> int:
        """How many workers the cluster can hold at once."""
        import ray
        resources = ray.cluster_resources()
        if self.gpus_per_worker:
            return max(1, int(resources.get("GPU", 0) // self.gpus_per_worker))
        return max(1, int(resources.get("CPU", 1) // self.cpus_per_worker))

    def _new_worker(self):
        threads = max(1, int(self.cpus_per_worker))
        return self._actor_class.remote(self.config, threads, self.gpus_per_worker > 0,
                                        self.global_model)

    def workers(self, count: int) -> list:
        return [self._new_worker() for _ in range(min(count, self.capacity()))]

    def describe(self, worker, timeout: float = START_TIMEOUT_S) -> dict[str, Any]:
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

    def submit(self, worker, items: list[ImageItem]):
        return worker.process.remote([(i.image_id, i.path) for i in items])

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

    def replace(self, worker):
        import ray
        try:
            ray.kill(worker)
        except Exception:  # already dead
            pass
        return self._new_worker()

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
