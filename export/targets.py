"""The backend stage of the pipeline: one module per target behind one small interface.

A target turns the checked FP32 ONNX into the artifacts one runtime backend runs::

    target = get_target("openvino")     # TARGETS: onnx -> export/onnxruntime_backend.py,
    target.check(options)               #          openvino -> export/openvino_backend.py,
    built = target.build(ctx)           #          tensorrt -> export/tensorrt.py

``build`` writes its files into the staging folder (``ctx.bundle.root``) and returns a ``Built``: the
bundle's artifacts (the primary one, which the line runs, first among the target's own), which of them get
golden outputs, and the quantized one the accuracy guard measures. Whatever a target runs to check its work
it runs through the runtime's own backends on the staged bundle (``ctx.bundle.open``, ``ctx.check_parity``),
so what export checked is what the line runs.

A new target: a module with a ``Target`` subclass, one entry in ``TARGETS``, nothing else in the pipeline.
"""

from __future__ import annotations

import abc
import importlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from export.errors import ExportError
from export.options import ExportOptions, Int8Options
from rtvp_edge.backends import Backend, load_backend
from rtvp_edge.bundle import Artifact, BundleError, BundleManifest, load_manifest, write_manifest
from rtvp_edge.preprocess import PreprocessSpec

if TYPE_CHECKING:  # torch stays out of this module's imports: export/tensorrt.py is torch-free
    from torch import nn

    from export.accuracy import EvalSet
    from export.calibration import CalibrationSet
    from export.verify import TorchReference

# --target -> "module:class", imported when chosen (a target's toolchain is only needed when it is used).
TARGETS: dict[str, str] = {
    "onnx": "export.onnxruntime_backend:OnnxRuntimeTarget",
    "openvino": "export.openvino_backend:OpenVINOTarget",
    "tensorrt": "export.tensorrt:TensorRTTarget",
}


class StagedBundle:
    """The bundle being written, as the runtime will see it.

    ``draft`` writes a manifest that hashes every file in the staging folder and reads it back with the
    runtime's ``load_manifest``; ``open`` loads an artifact with the runtime's ``load_backend`` from that
    draft. The final manifest is written the same way, last.

    Args:
        root: the staging folder.
        manifest: the bundle's manifest so far (``files`` and ``golden`` are filled in later).
    """

    def __init__(self, root: Path, manifest: BundleManifest):
        self.root = Path(root)
        self.manifest = manifest

    def update(self, **fields) -> BundleManifest:
        """Change fields of the manifest so far (artifacts, thresholds, ...)."""
        self.manifest = self.manifest.model_copy(update=fields)
        return self.manifest

    def draft(self, **fields) -> BundleManifest:
        """Write the manifest so far (with ``fields`` changed, for this draft only) over the folder's files
        and return it as the runtime reads it (every hash checked)."""
        try:
            write_manifest(self.root, self.manifest.model_copy(update=fields))
            return load_manifest(self.root)
        except BundleError as e:
            raise ExportError(f"staged bundle: {e}") from None

    @contextmanager
    def run(self, artifact: Artifact) -> Iterator[Backend]:
        """``with bundle.run(artifact) as backend:`` the runtime backend of a staged artifact (``open``),
        closed after the block; a runtime error inside it becomes an ``ExportError`` naming the artifact."""
        backend = self.open(artifact)
        try:
            yield backend
        except BundleError as e:
            raise ExportError(f"{artifact.backend} {artifact.precision} ({artifact.path}): {e}") from None
        finally:
            backend.close()

    def open(self, artifact: Artifact, device: str = "CPU") -> Backend:
        """The runtime backend running ``artifact`` (a file already in the staging folder; it need not be
        among the manifest's artifacts yet). Close it after use."""
        others = [a for a in self.manifest.artifacts if a != artifact]
        manifest = self.draft(artifacts=[artifact, *others])
        try:
            return load_backend(artifact.backend, self.root, manifest, device=device, artifact=artifact)
        except BundleError as e:
            raise ExportError(f"{artifact.backend} cannot load {artifact.path}: {e}") from None


@dataclass
class BuildContext:
    """What the backend stage gets: the staged bundle, the checked ONNX, the shared calibration set.

    Args:
        bundle: the staged bundle (``open`` runs an artifact through the runtime).
        onnx: the FP32 ONNX artifact (``model.onnx``, dynamic batch), parity-checked against PyTorch.
        options: the export's options.
        model: the PyTorch source (its top-level block names feed the INT8 keep-float policy).
        embeddings: (C, D) float32 class embeddings fed as a graph input (vocabulary mode ``input``), else None.
        calibration: the calibration set (INT8 only).
        eval_set: held-out annotated images (INT8 accuracy guard / accuracy control), or None.
        reference: the PyTorch source as the parity reference.
        check_images: camera images (H, W, 3) uint8 BGR for parity checks.
        spec: the bundle's preprocessing.
        class_names: the vocabulary's C class names.
        checks: parity results by name, recorded in the manifest (``source_checkpoint.parity``).
    """

    bundle: StagedBundle
    onnx: Artifact
    options: ExportOptions
    model: nn.Module
    embeddings: np.ndarray | None
    calibration: CalibrationSet | None
    eval_set: EvalSet | None
    reference: TorchReference
    check_images: Sequence[np.ndarray]
    spec: PreprocessSpec
    class_names: list[str]
    checks: dict = field(default_factory=dict)

    @property
    def root(self) -> Path:
        return self.bundle.root

    @property
    def onnx_path(self) -> Path:
        return self.root / self.onnx.path

    @property
    def int8(self) -> Int8Options | None:
        return self.options.int8

    def check_parity(self, artifact: Artifact, key: str, label: str, **tolerances) -> dict:
        """Parity of ``artifact`` (run by its runtime backend) with PyTorch on ``check_images``; recorded as
        ``checks[key]``. ``tolerances``: ``export.verify.parity``'s keyword arguments."""
        from export.verify import parity

        with self.bundle.run(artifact) as backend:
            self.checks[key] = parity(
                self.reference,
                backend,
                self.check_images,
                self.spec,
                self.class_names,
                self.bundle.manifest.thresholds,
                label,
                embeddings=self.embeddings,
                **tolerances,
            )
        return self.checks[key]


@dataclass
class Built:
    """What a target built.

    Args:
        artifacts: every artifact the bundle lists, the target's primary one first among its backend's.
        golden: the artifacts whose golden outputs the bundle records (default: the primary one).
        measured: the quantized artifact the INT8 accuracy guard measures (None: float export).
        calibration: quantization details added to the manifest's calibration provenance.
        batch: the static batch of the primary artifact (-1: dynamic), the manifest's ``io.batch``.
    """

    artifacts: list[Artifact]
    golden: list[Artifact]
    measured: Artifact | None = None
    calibration: dict = field(default_factory=dict)
    batch: int = -1


class Target(abc.ABC):
    """One export target (``--target``): builds the artifacts of one runtime backend.

    Class attributes say which options it accepts; ``check`` refuses the others with the CLI flag's name
    before any work is done.
    """

    name: str = ""  # the --target value
    backend: str = ""  # the rtvp_edge.backends name that runs its primary artifact
    half: bool = False  # accepts --half
    static_batch: bool = False  # accepts --batch N
    no_onnx: bool = False  # accepts --no-onnx (its artifacts do not need model.onnx)
    keep_fp32: bool = False  # accepts --keep-fp32 with --int8
    accuracy_control: bool = False  # accepts --accuracy-control with --int8

    def available(self) -> tuple[bool, str]:
        """(True, "") when this machine can build the target, else (False, why)."""
        return True, ""

    def check(self, options: ExportOptions) -> None:
        """Refuse options this target cannot honour (``ExportError`` naming the flag)."""
        ok, why = self.available()
        if not ok:
            raise ExportError(f"--target {self.name} is not supported on this machine: {why}")
        if options.half and not self.half:
            raise ExportError(f"--half with --target {self.name}: {self.no_half_reason()}")
        q = options.int8
        if q is not None and q.keep_fp32 and not self.keep_fp32:
            raise ExportError(
                "--keep-fp32 needs --int8 --target openvino (it keeps the FP32 IR beside the INT8 one)"
            )
        if not options.ship_onnx and not self.no_onnx:
            raise ExportError(
                f"--no-onnx needs --target openvino (the {self.name} target runs or builds from model.onnx)"
            )
        if q is not None and q.accuracy_control and not self.accuracy_control:
            raise ExportError(
                "--accuracy-control needs --int8 --target openvino (NNCF accuracy-controlled PTQ)"
            )
        if options.batch is not None and options.batch > 0 and not self.static_batch:
            raise ExportError("--batch (static batch) applies to --target openvino only")

    def no_half_reason(self) -> str:
        return "this target has no FP16 artifact"

    @abc.abstractmethod
    def build(self, ctx: BuildContext) -> Built:
        """Write the target's artifacts into ``ctx.root`` and check them (``ctx.check_parity``).

        Raises:
            ExportError: a build step or a check failed (the message names the artifact).
        """


def get_target(name: str) -> Target:
    """The target registered as ``name`` (``TARGETS``)."""
    if name not in TARGETS:
        raise ExportError(f"--target {name!r}: choose one of {', '.join(TARGETS)}")
    module, cls = TARGETS[name].split(":")
    return getattr(importlib.import_module(module), cls)()
