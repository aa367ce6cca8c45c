"""A stand-in for the parts of the TensorRT 10/11 and pycuda Python APIs this project calls, for machines
without an NVIDIA GPU.

It checks our side of the contract, not TensorRT: which builder flags, calibrators and optimisation profiles we
ask for on each major version (TensorRT 11 has no ``BuilderFlag.FP16``/``INT8`` and no calibrators, so the
fake lacks them too), that every input is bound by name with its shape, that outputs are read back at the
shape the context reports, and that device memory is freed. An "engine" here is the ONNX graph it was parsed
from, run by ONNX Runtime; so results can be compared with the ONNX Runtime backend.

Install with ``install(monkeypatch, version)``; the returned ``FakeTensorRT`` records what was asked.
"""

from __future__ import annotations

import sys
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
    _next = 0x1000

    def __init__(self, nbytes: int):
        self.data = np.zeros(nbytes, np.uint8)
        self.address = _DeviceAllocation._next
        _DeviceAllocation._next += max(nbytes, 1) + 256
        _ALLOCATIONS[self.address] = self
        self.freed = False

    def __int__(self) -> int:
        return self.address

    def free(self) -> None:
        if self.freed:
            raise RuntimeError("double free")
        self.freed = True
        del _ALLOCATIONS[self.address]


class FakeCuda(types.ModuleType):
    """``pycuda.driver``: allocations are host arrays; ``live()`` counts what is not freed."""

    def __init__(self, gpu_name: str = "Fake GPU 80GB"):
        super().__init__("pycuda.driver")
        self.contexts: list[str] = []
        cuda = self

        class Stream:
            handle = 1

            def synchronize(self):
                pass

        class Context:
            def push(self):
                cuda.contexts.append("push")

            def pop(self):
                cuda.contexts.append("pop")

            def detach(self):
                cuda.contexts.append("detach")

        class Device:
            def __init__(self, i):
                self.i = i

            def name(self):
                return gpu_name

            def make_context(self):  # pycuda: creates the context and makes it current (pushed)
                cuda.contexts.append("push")
                return Context()

            @staticmethod
            def count():
                return 1

        self.Stream, self.Device = Stream, Device
        self.init = lambda: None
        self.mem_alloc = _DeviceAllocation
        self.pagelocked_empty = lambda shape, dtype: np.empty(shape, dtype)

    @staticmethod
    def memcpy_htod_async(dest, src, stream):
        src = np.ascontiguousarray(src)
        dest.data[: src.nbytes] = src.view(np.uint8).ravel()

    @staticmethod
    def memcpy_dtoh_async(dest, src, stream):
        dest.view(np.uint8).ravel()[:] = src.data[: dest.nbytes]

    @staticmethod
    def live() -> int:
        return len(_ALLOCATIONS)


def install(monkeypatch, version: str) -> tuple[FakeTensorRT, FakeCuda]:
    """Put the fakes in ``sys.modules`` as ``tensorrt``, ``pycuda``, ``pycuda.driver``, ``pycuda.autoinit``."""
    trt, cuda = FakeTensorRT(version), FakeCuda()
    pycuda = types.ModuleType("pycuda")
    pycuda.driver = cuda
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setitem(sys.modules, "pycuda", pycuda)
    monkeypatch.setitem(sys.modules, "pycuda.driver", cuda)
    monkeypatch.setitem(sys.modules, "pycuda.autoinit", types.ModuleType("pycuda.autoinit"))
    return trt, cuda
