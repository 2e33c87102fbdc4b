"""TensorFlow start-up for this process: thread counts, quiet logs, one lazy import.

TensorFlow is imported lazily (:func:`tensorflow`) so that command lines validate their input
before paying for TensorFlow's start-up, and its C++ start-up chatter (CUDA probing on a CPU
machine) stays out of the terminal unless ``PIPELINE_TF_LOGS=1``.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import threading


def tf_logs_wanted() -> bool:
    """``PIPELINE_TF_LOGS=1`` (or ``-v`` on a command line) brings TensorFlow's logs back."""
    from tasks.settings import current

    return current().tf_logs


def configure_tensorflow(
    intra_op_threads: int | None = None,
    inter_op_threads: int | None = None,
    quiet: bool | None = None,
) -> None:
    """Thread counts and log level for this process. Call before TensorFlow is first used."""
    if quiet is None:
        quiet = not tf_logs_wanted()
    if quiet:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
    if intra_op_threads:
        os.environ["TF_NUM_INTRAOP_THREADS"] = str(intra_op_threads)
        os.environ["OMP_NUM_THREADS"] = str(intra_op_threads)
    if inter_op_threads:
        os.environ["TF_NUM_INTEROP_THREADS"] = str(inter_op_threads)
    if "tensorflow" in sys.modules:  # already imported: try the runtime setters
        import tensorflow as tf

        try:
            if intra_op_threads:
                tf.config.threading.set_intra_op_parallelism_threads(intra_op_threads)
            if inter_op_threads:
                tf.config.threading.set_inter_op_parallelism_threads(inter_op_threads)
        except RuntimeError:
            pass  # the runtime is initialised; the environment applies to new processes
    if quiet:
        logging.getLogger("tensorflow").setLevel(logging.ERROR)
        try:
            import absl.logging

            absl.logging.set_verbosity(absl.logging.ERROR)
        except ImportError:  # pragma: no cover
            pass


_IMPORT_LOCK = threading.Lock()
_IMPORTED = False  # True once the import has finished ("keras" enters sys.modules at its start)


def tensorflow():
    """TensorFlow, imported once per process (other threads wait for the first import)."""
    global _IMPORTED
    if not _IMPORTED:
        with _IMPORT_LOCK:
            if not _IMPORTED:
                configure_tensorflow()
                quiet = not tf_logs_wanted()
                saved = os.dup(2) if quiet else None
                try:
                    if saved is not None:
                        devnull = os.open(os.devnull, os.O_WRONLY)
                        os.dup2(devnull, 2)
                        os.close(devnull)
                    importlib.import_module("keras")  # imports tensorflow, quietly
                    importlib.import_module("tensorflow")
                finally:
                    if saved is not None:
                        os.dup2(saved, 2)
                        os.close(saved)
                _IMPORTED = True
                if quiet:
                    import tensorflow as tf

                    tf.get_logger().setLevel("ERROR")  # e.g. retracing warnings
    import tensorflow as tf

    return tf
