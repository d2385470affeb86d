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
from delfx.ray_runtime import (START_TIMEOUT_S, ClusterLost, RayActors,  # noqa: F401 (re-exported)
                               WorkerDied)

log = logging.getLogger(__name__)


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


class RayExecutor(RayActors):
    """Ray actors, each loading the model once; a local Ray instance unless given an address.

    The local instance listens on 127.0.0.1 only (Ray's single-machine mode), has no dashboard
    and no usage reporting. `address` (or RAY_ADDRESS) joins an existing cluster instead.
    """

    name = "ray"

    def __init__(self, *, address: str | None = None, num_cpus: int | None = None,
                 cpus_per_worker: float = 1, gpus_per_worker: float | None = None,
                 verbosity: int = 0, global_model: str | None = None):
        super().__init__(address=address, num_cpus=num_cpus, verbosity=verbosity,
                         cpus_per_worker=cpus_per_worker, gpus_per_worker=gpus_per_worker)
        self.config: ExtractConfig | None = None
        self.global_model = global_model
        self._actor_class = None

    def start(self, config: ExtractConfig) -> None:
        self.config = config
        self.connect()
        import ray
        if self.gpus_per_worker is None:
            # GPU when the cluster has one and the model runs a network (TensorFlow or PyTorch).
            gpus = ray.cluster_resources().get("GPU", 0)
            self.gpus_per_worker = 1 if gpus >= 1 and self.config.model != "rootsift" else 0
            log.info("%s", f"{gpus:g} GPU(s) in the cluster: workers use " +
                     ("one GPU each" if self.gpus_per_worker else "the CPU"))
        self._actor_class = ray.remote(ExtractWorker).options(
            num_cpus=self.cpus_per_worker, num_gpus=self.gpus_per_worker, max_restarts=0)

    def _new_worker(self):
        threads = max(1, int(self.cpus_per_worker))
        return self._actor_class.remote(self.config, threads, self.gpus_per_worker > 0,
                                        self.global_model)

    def workers(self, count: int) -> list:
        return [self._new_worker() for _ in range(min(count, self.capacity()))]

    def submit(self, worker, items: list[ImageItem]):
        return worker.process.remote([(i.image_id, i.path) for i in items])

    def replace(self, worker):
        self.kill(worker)
        return self._new_worker()
