"""A stand-in for the parts of the TensorRT 10/11 and cuda-python (CUDA runtime) APIs this project calls, for machines
without an NVIDIA GPU.

It checks our side of the contract, not TensorRT: which builder flags, calibrators and optimisation profiles we
ask for on each major version (TensorRT 11 has no ``BuilderFlag.FP16``/``INT8`` and no calibrators, so the
fake lacks them too), that every input is bound by name with its shape, that outputs are read back at the
shape the context reports, and that device memory is freed. An "engine" here is the ONNX graph it was parsed
from, run by ONNX Runtime; so results can be compared with the ONNX Runtime backend.

Install with ``install(monkeypatch, version)``; the returned ``FakeTensorRT`` records what was asked.
"""

from __future__ import annotations

import ctypes
import sys
import threading
import types

import numpy as np

ENGINE_MAGIC = b"FAKE-TRT-ENGINE\n"


class _Flag:
    def __init__(self, name: str):
        self.name = name

    def __repr__(self) -> str:
        return f"BuilderFlag.{self.name}"


class FakeTensorRT(types.ModuleType):
    """``import tensorrt`` for one version; ``record`` lists (event, details) in call order."""

    def __init__(self, version: str):
        super().__init__("tensorrt")
        self.__version__ = version
        self.record: list[tuple[str, object]] = []
        self.builds = 0
        self.fail_build = False
        major = int(version.split(".")[0])
        fake = self

        class Logger:
            WARNING = "warning"

            def __init__(self, severity):
                self.severity = severity

        class _Tensor:
            def __init__(self, name, shape):
                self.name, self.shape = name, shape

        class Network:
            def __init__(self):
                self.inputs: list[_Tensor] = []
                self.onnx = b""

            @property
            def num_inputs(self):
                return len(self.inputs)

            def get_input(self, i):
                return self.inputs[i]

        class OnnxParser:
            def __init__(self, network, logger):
                self.network, self.errors = network, []

            def parse(self, data: bytes) -> bool:
                import onnx

                try:
                    model = onnx.load_from_string(data)
                except Exception as e:  # noqa: BLE001 - the parser reports, it does not raise
                    self.errors.append(f"In node -1: {type(e).__name__}")
                    return False
                self.network.onnx = data
                for inp in model.graph.input:
                    dims = [d.dim_value if d.dim_value else -1 for d in inp.type.tensor_type.shape.dim]
                    self.network.inputs.append(_Tensor(inp.name, tuple(dims)))
                return True

            @property
            def num_errors(self):
                return len(self.errors)

            def get_error(self, i):
                return self.errors[i]

        class Profile:
            def __init__(self):
                self.shapes = {}

            def set_shape(self, name, lo, opt, hi):
                self.shapes[name] = (list(lo), list(opt), list(hi))

        class Config:
            def __init__(self):
                self.flags: list[str] = []
                self.profiles: list[Profile] = []
                self.calibration_profile = None
                self.workspace = None
                if major < 11:
                    self.int8_calibrator = None

            def set_memory_pool_limit(self, pool, size):
                self.workspace = size

            def set_flag(self, flag):
                self.flags.append(flag.name)

            def add_optimization_profile(self, p):
                self.profiles.append(p)

            if major < 11:

                def set_calibration_profile(self, p):
                    self.calibration_profile = p

        class Builder:
            def __init__(self, logger):
                pass

            def create_network(self, flags):
                return Network()

            def create_builder_config(self):
                return Config()

            def create_optimization_profile(self):
                return Profile()

            def build_serialized_network(self, network, config):
                fake.builds += 1
                fake.record.append(("build", config))
                if fake.fail_build:
                    return None
                return ENGINE_MAGIC + network.onnx

        class Engine:
            def __init__(self, onnx_bytes):
                import onnxruntime as ort

                self.session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])

            def create_execution_context(self):
                return Context(self)

            def get_tensor_dtype(self, name):
                return "float32"

        class Context:
            def __init__(self, engine):
                self.engine, self.shapes, self.addresses, self.outputs = engine, {}, {}, None

            def set_input_shape(self, name, shape):
                self.shapes[name] = tuple(shape)
                self.outputs = None

            def set_tensor_address(self, name, address):
                self.addresses[name] = address

            def _run(self):
                feeds = {}
                for inp in self.engine.session.get_inputs():
                    if inp.name not in self.shapes or inp.name not in self.addresses:
                        raise RuntimeError(f"input {inp.name} has no shape or address")
                    buf = _ALLOCATIONS[self.addresses[inp.name]]
                    feeds[inp.name] = buf.data.view(np.float32).reshape(self.shapes[inp.name])
                names = [o.name for o in self.engine.session.get_outputs()]
                self.outputs = dict(zip(names, self.engine.session.run(names, feeds), strict=True))

            def get_tensor_shape(self, name):
                if self.outputs is None:
                    self._run()  # shapes follow from the input shapes, as in TensorRT
                return self.outputs[name].shape

            def execute_async_v3(self, stream_handle):
                self._run()
                for name, arr in self.outputs.items():
                    if name not in self.addresses:
                        raise RuntimeError(f"output {name} has no address")
                    buf = _ALLOCATIONS[self.addresses[name]]
                    buf.data[: arr.nbytes] = np.ascontiguousarray(arr, np.float32).view(np.uint8).ravel()
                return True

        class Runtime:
            def __init__(self, logger):
                pass

            def deserialize_cuda_engine(self, data: bytes):
                if not data.startswith(ENGINE_MAGIC):
                    return None
                return Engine(data[len(ENGINE_MAGIC) :])

        class IInt8EntropyCalibrator2:
            def __init__(self):
                pass

        self.Logger, self.Builder, self.OnnxParser, self.Runtime = Logger, Builder, OnnxParser, Runtime
        self.MemoryPoolType = types.SimpleNamespace(WORKSPACE="workspace")
        flags = ["FP16", "INT8", "BF16"] if major < 11 else []  # removed in TensorRT 11 (strong typing)
        self.BuilderFlag = types.SimpleNamespace(**{f: _Flag(f) for f in flags})
        if major < 11:
            self.IInt8EntropyCalibrator2 = IInt8EntropyCalibrator2
        self.nptype = lambda dtype: np.dtype(dtype).type


_ALLOCATIONS: dict[int, _DeviceAllocation] = {}


class _DeviceAllocation:
    """A "device" buffer: host bytes whose address the fake hands out as the device pointer, so copies are
    plain ``ctypes.memmove`` between real addresses (a wrong size or address corrupts or faults, as on a GPU)."""

    def __init__(self, nbytes: int):
        self.data = np.zeros(max(nbytes, 1), np.uint8)
        self.address = self.data.ctypes.data
        _ALLOCATIONS[self.address] = self


class _Enum:
    """An enum value of the bindings (compares by value, has a name)."""

    def __init__(self, name: str, value: int):
        self.name, self.value = name, value

    def __eq__(self, other) -> bool:
        return isinstance(other, _Enum) and other.value == self.value

    def __hash__(self) -> int:
        return self.value

    def __repr__(self) -> str:
        return f"<{self.name}: {self.value}>"


class _Stream:
    def __init__(self, handle: int):
        self.handle = handle

    def __int__(self) -> int:
        return self.handle


class FakeCudaRuntime(types.ModuleType):
    """``cuda.bindings.runtime`` of cuda-python: every call returns ``(cudaError_t, *results)``.

    Stricter than CUDA where it helps a test: memory and stream calls from a thread that has not made the
    device current (``cudaSetDevice``) fail with ``cudaErrorInvalidDevice``, device pointers must come from
    ``cudaMalloc`` and hold the bytes copied, and a double free fails. ``live()`` counts unfreed buffers and
    ``streams`` the streams not destroyed.
    """

    def __init__(self, gpu_name: str = "Fake GPU 80GB", gpus: int = 1):
        super().__init__("cuda.bindings.runtime")
        codes = {"cudaSuccess": 0, "cudaErrorInvalidValue": 1, "cudaErrorNoDevice": 100,
                 "cudaErrorInvalidDevice": 101, "cudaErrorInvalidResourceHandle": 400}  # fmt: skip
        self.cudaError_t = types.SimpleNamespace(**{k: _Enum(k, v) for k, v in codes.items()})
        kinds = {"cudaMemcpyHostToDevice": 1, "cudaMemcpyDeviceToHost": 2}
        self.cudaMemcpyKind = types.SimpleNamespace(**{k: _Enum(k, v) for k, v in kinds.items()})
        self.gpu_name, self.gpus = gpu_name, gpus
        self.current: dict[int, int] = {}  # thread id -> device made current there
        self.streams: set[int] = set()
        self.calls: list[tuple[str, int]] = []  # (call, thread id)
        self._next_stream = 7

    def _ok(self, *results):
        return (self.cudaError_t.cudaSuccess, *results)

    def _err(self, name: str, n_results: int = 0):
        return (getattr(self.cudaError_t, name),) + (None,) * n_results

    def _on_device(self, call: str) -> bool:
        me = threading.get_ident()
        self.calls.append((call, me))
        return me in self.current

    def cudaGetErrorName(self, error):
        return self._ok(error.name.encode())

    def cudaGetDeviceCount(self):
        return self._ok(self.gpus)

    def cudaSetDevice(self, device: int):
        if not 0 <= device < self.gpus:
            return self._err("cudaErrorInvalidDevice")
        self.current[threading.get_ident()] = device
        return self._ok()

    def cudaGetDeviceProperties(self, device: int):
        if not 0 <= device < self.gpus:
            return self._err("cudaErrorInvalidDevice", 1)
        return self._ok(types.SimpleNamespace(name=self.gpu_name.encode() + b"\0" * 8))

    def cudaStreamCreate(self):
        if not self._on_device("cudaStreamCreate"):
            return self._err("cudaErrorInvalidDevice", 1)
        self._next_stream += 1
        self.streams.add(self._next_stream)
        return self._ok(_Stream(self._next_stream))

    def cudaStreamDestroy(self, stream):
        if int(stream) not in self.streams:
            return self._err("cudaErrorInvalidResourceHandle")
        self.streams.discard(int(stream))
        return self._ok()

    def cudaStreamSynchronize(self, stream):
        if not self._on_device("cudaStreamSynchronize") or int(stream) not in self.streams:
            return self._err("cudaErrorInvalidResourceHandle")
        return self._ok()

    def cudaMalloc(self, nbytes: int):
        if not self._on_device("cudaMalloc"):
            return self._err("cudaErrorInvalidDevice", 1)
        return self._ok(_DeviceAllocation(nbytes).address)

    def cudaFree(self, pointer: int):
        if _ALLOCATIONS.pop(int(pointer), None) is None:
            return self._err("cudaErrorInvalidValue")  # double free or not from cudaMalloc
        return self._ok()

    def _copy(self, call: str, dst: int, src: int, count: int, kind) -> tuple:
        if not self._on_device(call):
            return self._err("cudaErrorInvalidDevice")
        device = dst if kind == self.cudaMemcpyKind.cudaMemcpyHostToDevice else src
        alloc = _ALLOCATIONS.get(int(device))
        if alloc is None or count > alloc.data.nbytes:
            return self._err("cudaErrorInvalidValue")
        ctypes.memmove(int(dst), int(src), count)
        return self._ok()

    def cudaMemcpy(self, dst, src, count, kind):
        return self._copy("cudaMemcpy", dst, src, count, kind)

    def cudaMemcpyAsync(self, dst, src, count, kind, stream):
        if int(stream) not in self.streams:
            return self._err("cudaErrorInvalidResourceHandle")
        return self._copy("cudaMemcpyAsync", dst, src, count, kind)

    @staticmethod
    def live() -> int:
        return len(_ALLOCATIONS)


def install(monkeypatch, version: str) -> tuple[FakeTensorRT, FakeCudaRuntime]:
    """Put the fakes in ``sys.modules`` as ``tensorrt`` and cuda-python's ``cuda.bindings.runtime``."""
    trt, runtime = FakeTensorRT(version), FakeCudaRuntime()
    cuda_pkg, bindings = types.ModuleType("cuda"), types.ModuleType("cuda.bindings")
    bindings.runtime, cuda_pkg.bindings = runtime, bindings
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setitem(sys.modules, "cuda", cuda_pkg)
    monkeypatch.setitem(sys.modules, "cuda.bindings", bindings)
    monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", runtime)
    return trt, runtime
