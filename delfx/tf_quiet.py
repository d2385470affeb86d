"""Import TensorFlow without its start-up noise reaching the user.

TensorFlow's C++ runtime writes oneDNN, CUDA-stub and CPU-feature lines straight to file
descriptor 2 while it is imported, some of them before `TF_CPP_MIN_LOG_LEVEL` is read (absl's
"All log messages before absl::InitializeLog()" preamble), so the environment variable alone does
not silence them. At default verbosity we therefore point fd 2 at a temporary file for the
duration of the import and hand what it caught to our logger at DEBUG level; with -vv nothing is
hidden.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
import threading

log = logging.getLogger(__name__)

_verbosity = 0
_lock = threading.RLock()


def set_verbosity(verbosity: int) -> None:
    """Set by the CLI: at >= 2 TensorFlow's own output is shown untouched."""
    global _verbosity
    _verbosity = verbosity


def quiet_environment() -> dict[str, str]:
    """Environment variables that quiet TensorFlow (also handed to Ray workers)."""
    if _verbosity >= 2:
        return {}
    return {"TF_CPP_MIN_LOG_LEVEL": "2", "GRPC_VERBOSITY": "ERROR", "ABSL_MIN_LOG_LEVEL": "2"}


def import_tensorflow():
    """`import tensorflow as tf`, with start-up noise captured (see the module docstring)."""
    if "tensorflow" in sys.modules:
        return sys.modules["tensorflow"]
    with _lock:
        for key, value in quiet_environment().items():
            os.environ.setdefault(key, value)
        if _verbosity >= 2:
            import tensorflow as tf
            return tf
        caught = _import_with_stderr_captured()
        tf = sys.modules["tensorflow"]
        tf.get_logger().setLevel(logging.ERROR)
        for line in caught.splitlines():
            if line.strip():
                log.debug("tensorflow: %s", line)
        return tf


def _import_with_stderr_captured() -> str:
    caught: list[str] = []
    with _fd2_captured(caught):
        import tensorflow
        # Device discovery (CUDA probing: "failed call to cuInit" on machines without a
        # GPU) happens on first use, not at import: trigger it while fd 2 is captured.
        tensorflow.config.list_physical_devices()
    return caught[0]


@contextlib.contextmanager
def _fd2_captured(caught: list[str]):
    """Point fd 2 at a temporary file for the block; its text is appended to `caught`."""
    with _lock:
        sys.stderr.flush()
        saved = os.dup(2)
        with tempfile.TemporaryFile(mode="w+b") as sink:
            os.dup2(sink.fileno(), 2)
            try:
                yield
            finally:
                sys.stderr.flush()
                os.dup2(saved, 2)
                os.close(saved)
                sink.seek(0)
                caught.append(sink.read().decode("utf-8", "replace"))


@contextlib.contextmanager
def native_output_quiet(what: str):
    """A block whose C++ output on fd 2 (e.g. the LiteRT converter's and XNNPACK's lines) goes
    to our logger at DEBUG instead of the user's terminal; with -vv nothing is hidden."""
    if _verbosity >= 2:
        yield
        return
    caught: list[str] = []
    try:
        with _fd2_captured(caught):
            yield
    finally:
        for line in "".join(caught).splitlines():
            if line.strip():
                log.debug("%s: %s", what, line)


def import_keras():
    """`import keras`, TensorFlow first through `import_tensorflow` (Keras would import it
    noisily otherwise)."""
    import_tensorflow()
    import keras
    return keras
