"""The few CUDA runtime calls TensorRT needs from Python, through NVIDIA's ``cuda-python`` bindings.

``cuda-python`` installs from wheels (no compiler, no CUDA toolkit: the GPU's driver is all it needs at run
time), so an edge box gets TensorRT and its CUDA binding with ``pip install 'rtvp-edge[tensorrt]'`` alone.
Every binding call returns a tuple ``(cudaError_t, *results)``; ``Cuda.call`` turns a failure into a
``CudaError`` naming the call and the error.

The runtime API works in the device's primary context and its current device is per host thread, so every
thread that touches device memory or a stream calls ``Cuda.use()`` first (the TensorRT backend does so in each
inference).

NOT RUN on a GPU in this repository (no GPU on the development machines); tested against an emulation of the
same calls (``tests/fake_tensorrt.py``) and, for the names of the calls and enums, against the real
``cuda-python`` module where it is installed.
"""

from __future__ import annotations

import numpy as np

INSTALL_HINT = "pip install 'rtvp-edge[tensorrt]' (TensorRT and cuda-python wheels)"


class CudaError(RuntimeError):
    """A CUDA runtime call failed; the message names the call and CUDA's error name."""


def import_cudart():
    """The CUDA runtime module of ``cuda-python``: ``cuda.bindings.runtime`` (12.6 and newer), else the older
    ``cuda.cudart``. Raises ImportError when neither is installed."""
    try:
        from cuda.bindings import runtime
    except ImportError:
        from cuda import cudart as runtime  # cuda-python < 12.6
    return runtime


class Cuda:
    """One GPU through the CUDA runtime API: the calls ``EngineRunner`` and the INT8 calibrator make.

    Pointers and stream handles are plain ints (what TensorRT's ``set_tensor_address`` and
    ``execute_async_v3`` take); host arrays are passed by address and must stay alive and C-contiguous until
    the stream is synchronized.
    """

    def __init__(self, device: int = 0, runtime=None):
        self.rt = runtime if runtime is not None else import_cudart()
        self.device = int(device)
        count = self.call(self.rt.cudaGetDeviceCount(), "cudaGetDeviceCount")
        if count < 1:
            raise CudaError("no CUDA GPU found")
        if not 0 <= self.device < count:
            raise CudaError(f"GPU {self.device} asked for, this machine has {count} (0..{count - 1})")
        self.use()
        props = self.call(self.rt.cudaGetDeviceProperties(self.device), "cudaGetDeviceProperties")
        name = props.name
        self.name = (name.split(b"\0", 1)[0].decode() if isinstance(name, bytes) else str(name)).strip()

    def call(self, result, what: str):
        """The results of one binding call, or ``CudaError`` when its status is not ``cudaSuccess``."""
        status, *rest = result if isinstance(result, tuple) else (result,)
        if status != self.rt.cudaError_t.cudaSuccess:
            _, name = self.rt.cudaGetErrorName(status)
            raise CudaError(f"{what} failed: {name.decode() if isinstance(name, bytes) else name}")
        if not rest:
            return None
        return rest[0] if len(rest) == 1 else tuple(rest)

    def use(self) -> None:
        """Make this GPU current for the calling thread."""
        self.call(self.rt.cudaSetDevice(self.device), "cudaSetDevice")

    def create_stream(self) -> int:
        return int(self.call(self.rt.cudaStreamCreate(), "cudaStreamCreate"))

    def destroy_stream(self, stream: int) -> None:
        self.call(self.rt.cudaStreamDestroy(stream), "cudaStreamDestroy")

    def synchronize(self, stream: int) -> None:
        self.call(self.rt.cudaStreamSynchronize(stream), "cudaStreamSynchronize")

    def malloc(self, nbytes: int) -> int:
        return int(self.call(self.rt.cudaMalloc(max(int(nbytes), 1)), "cudaMalloc"))

    def free(self, pointer: int) -> None:
        self.call(self.rt.cudaFree(pointer), "cudaFree")

    def to_device(self, pointer: int, host: np.ndarray, stream: int | None = None) -> None:
        """Copy a C-contiguous host array to device memory (on ``stream``, or synchronously)."""
        if not host.flags.c_contiguous:
            raise ValueError("host array must be C-contiguous")
        kind = self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        if stream is None:
            self.call(self.rt.cudaMemcpy(pointer, host.ctypes.data, host.nbytes, kind), "cudaMemcpy")
        else:
            self.call(
                self.rt.cudaMemcpyAsync(pointer, host.ctypes.data, host.nbytes, kind, stream),
                "cudaMemcpyAsync",
            )

    def to_host(self, host: np.ndarray, pointer: int, stream: int) -> None:
        """Copy device memory into a C-contiguous host array on ``stream`` (valid after ``synchronize``)."""
        if not host.flags.c_contiguous:
            raise ValueError("host array must be C-contiguous")
        kind = self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self.call(
            self.rt.cudaMemcpyAsync(host.ctypes.data, pointer, host.nbytes, kind, stream), "cudaMemcpyAsync"
        )


def cuda_usable(device: int = 0) -> tuple[bool, str]:
    """(True, GPU name) when cuda-python is installed and GPU ``device`` answers, else (False, why)."""
    try:
        cuda = Cuda(device)
    except ImportError:
        return False, f"cuda-python is not installed ({INSTALL_HINT})"
    except Exception as e:  # CudaError, or the binding failing to load the driver library
        return False, f"CUDA not usable ({type(e).__name__}: {e})"
    return True, cuda.name
