"""The optional runtimes an export needs: onnx to write ONNX, onnxruntime to run it.

Each is imported only when asked for, so that `cnncli export` without them says in one line
what to install (`INSTALL_HINT`), and nothing here imports torch.
"""

from __future__ import annotations

import os

from cnncli.errors import InputError

INSTALL_HINT = "pip install 'cnncli[export]'"


def require_onnx():
    try:
        import onnx
    except ImportError:
        raise InputError(f"ONNX export needs the onnx package: {INSTALL_HINT}") from None
    return onnx


def require_onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise InputError(f"running an ONNX file needs onnxruntime: {INSTALL_HINT}") from None
    return onnxruntime


def onnxruntime_available() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def onnx_session(model: str | os.PathLike | bytes, threads: int | None = None, cpu_only: bool = False):
    """An onnxruntime session on the CPU (or CUDA where the GPU build is installed)."""
    ort = require_onnxruntime()
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: its warnings would clutter stderr
    if threads:
        options.intra_op_num_threads = threads
    available = ort.get_available_providers()
    wanted = ("CPUExecutionProvider",) if cpu_only else ("CUDAExecutionProvider", "CPUExecutionProvider")
    providers = [p for p in wanted if p in available]
    source = model if isinstance(model, bytes) else str(model)
    try:
        return ort.InferenceSession(source, sess_options=options, providers=providers)
    except Exception as e:  # onnxruntime raises its own exception types for bad files
        name = "the exported model" if isinstance(model, bytes) else str(model)
        raise InputError(f"{name}: onnxruntime cannot load it ({str(e).splitlines()[0][:200]})") from None
