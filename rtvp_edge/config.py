"""The line configuration: one typed schema, read once at start (``load_line_config``).

A line file (YAML) says which cameras exist and where they sit in the rig, how their frames become parts,
which bundle and backend run the model, how detections become a verdict, where events and evidence go.
Every section refuses unknown keys; every error names the file, the line and the key, e.g.::

    line_config/glass.yaml:14: cameras.2.overflow: Input should be 'drop_oldest', 'drop_newest' or 'block'

Relative paths are resolved against the directory of the line file, so a line file and its bundle can be
moved together.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Literal

from pydantic import (
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from rtvp_edge.messaging.config import MqttConfig  # the ``mqtt:`` section (schema only, no network client)
from rtvp_edge.messaging.plc.config import PlcConfig  # the ``plc:`` section (schema; servers beside it)
from rtvp_edge.station import ID_PATTERN, StationIds
from rtvp_edge.strict import StrictModel
from rtvp_edge.yaml_config import ConfigError, read_yaml, validate_tree  # one reader for every YAML file


def _base_dir(info: ValidationInfo) -> Path:
    ctx = info.context or {}
    return Path(ctx.get("base_dir", "."))


class LineIds(StationIds):
    """The ``line:`` section: who is speaking (default topic root ``rtvp/<site>/<line>/<station>``)."""

    # parts per second the real line delivers (None: not said); checked against what the box sustains at
    # start (a simulated line uses sim.line_rate_hz)
    expected_rate_hz: float | None = Field(None, gt=0)


class Resolution(StrictModel):
    width: int = Field(gt=0)
    height: int = Field(gt=0)


SourceKind = Literal["sim", "usb", "url", "gstreamer", "folder", "video"]
_URL = re.compile(r"^(rtsp|rtsps|rtmp|http|https|udp|tcp)://", re.IGNORECASE)


def classify_source(source: str | int) -> SourceKind:
    """Which kind of camera a ``source:`` value means.

    ``sim`` -> simulated rig; an int (or digits) -> USB/V4L2 index; ``rtsp://``/``http://``... -> network
    stream; a string containing `` ! `` -> GStreamer pipeline; an existing directory -> folder replay;
    anything else -> a video file.
    """
    if isinstance(source, int) or (isinstance(source, str) and source.strip().isdigit()):
        return "usb"
    if source == "sim":
        return "sim"
    if _URL.match(source):
        return "url"
    if " ! " in source:
        return "gstreamer"
    if os.path.isdir(source):
        return "folder"
    return "video"


class CameraConfig(StrictModel):
    """One camera and its place in the rig."""

    id: str = Field(pattern=ID_PATTERN)
    source: str | int
    resolution: Resolution | None = None  # expected frame size; other sizes are counted and skipped
    bank: Literal["left", "right", "single"] = "single"
    view: int = Field(ge=0)  # view index within a part (rig: 0-2 left bank, 3-5 right bank)
    buffer: int = Field(4, ge=1, le=1024)
    overflow: Literal["drop_oldest", "drop_newest", "block"] = "drop_oldest"
    replay_fps: float | None = Field(None, gt=0)  # folder/video sources: frames per second (None: as fast)
    loop: bool = False  # folder/video sources: start again at the end instead of ending
    reconnect_initial_s: float = Field(0.5, gt=0)
    reconnect_max_s: float = Field(30.0, gt=0)
    # assembly.pairing: time only: how long after the gate trigger this camera shoots (rig: the right bank
    # shoots after the 180 degree turn), so its frames line up with the other banks'
    trigger_offset_s: float = Field(0.0, ge=0)
    # [x1, y1, x2, y2] camera pixels: the region the model sees (where the part stands in this camera's
    # view). None: the bundle's own crop (preprocess.crop, the region it was trained on), else the whole image.
    crop: tuple[int, int, int, int] | None = None

    @field_validator("crop")
    @classmethod
    def _crop_box(cls, v: tuple[int, int, int, int] | None) -> tuple[int, int, int, int] | None:
        if v is not None and not (0 <= v[0] < v[2] and 0 <= v[1] < v[3]):
            raise ValueError(f"crop {list(v)} is not 0 <= x1 < x2, 0 <= y1 < y2")
        return v

    @field_validator("source")
    @classmethod
    def _source_exists(cls, v: str | int, info: ValidationInfo) -> str | int:
        if isinstance(v, str) and not v.strip():
            raise ValueError("empty camera source")
        kind = classify_source(v)
        if kind in ("folder", "video"):
            p = Path(v)
            if not p.is_absolute():
                p = _base_dir(info) / p
            if not p.exists():
                raise ValueError(
                    f"{str(v)!r} is not 'sim', a USB index, a URL or a GStreamer pipeline, "
                    f"and no such file or folder exists ({p})"
                )
            return str(p.resolve())
        return v

    @property
    def kind(self) -> SourceKind:
        return classify_source(self.source)


class SimConfig(StrictModel):
    """The simulated rotating rig (cameras with ``source: sim``)."""

    seed: int = Field(0, ge=0)
    line_rate_hz: float = Field(2.0, gt=0)  # containers per second through the gate
    defect_free_share: float | None = Field(None, ge=0, le=1)  # None: the rig's default
    defect_size_scale: float | None = Field(None, ge=0.2, le=5.0)  # None: the rig's default (1.0)
    n_containers: int | None = Field(None, ge=1)  # a finite run (None: endless, like a real line)
    realtime: bool = True  # False: frames as fast as the pipeline takes them (benchmarks)


class AssemblyConfig(StrictModel):
    """How frames become parts."""

    views_per_part: int = Field(6, ge=1)
    part_id: Literal["trigger", "plc"] = "trigger"
    part_id_format: str = "T{trigger_seq:08d}"  # used when the source does not name the part
    plc_topic: str | None = None  # MQTT topic carrying {"trigger_seq": n, "part_id": "..."} (part_id: plc)
    timeout_s: float = Field(3.0, gt=0)  # first view -> INCOMPLETE when views are still missing
    max_open_parts: int = Field(64, ge=1)  # bound on parts waiting for views
    # sequence: views pair by the sources' trigger numbers (the rig, replays, cameras with frame counters);
    # time: by capture time (free-running cameras that may lose frames): a frame joins the part whose
    # first frame, offsets removed, is within pairing_window_s of it (keep it under half the part period)
    pairing: Literal["sequence", "time"] = "sequence"
    pairing_window_s: float = Field(0.1, gt=0)

    @model_validator(mode="after")
    def _plc_needs_topic(self) -> AssemblyConfig:
        if self.part_id == "plc" and not self.plc_topic:
            raise ValueError("part_id: plc needs plc_topic (the MQTT topic the PLC publishes part ids on)")
        try:
            self.part_id_format.format(trigger_seq=0)
        except (KeyError, IndexError, ValueError) as e:
            raise ValueError(f"part_id_format {self.part_id_format!r}: {e}") from None
        return self


class BundleConfig(StrictModel):
    """The line file's ``model:`` section: which bundle runs, on which backend and device (the model's
    architecture is ``training.model.ModelConfig``, fixed in the bundle)."""

    bundle: str
    backend: Literal["openvino", "onnxruntime", "tensorrt"] = "openvino"
    device: str = "CPU"  # OpenVINO device name, "cpu"/"cuda" for ONNX Runtime, GPU index for TensorRT
    threads: int = Field(0, ge=0)  # 0: backend default
    infer_requests: int = Field(2, ge=1, le=16)  # parts in flight (OpenVINO async requests)
    selftest: bool = True  # run the bundle's golden self-test at start (refuse to start on failure)
    # which of the bundle's artifacts runs: auto (the fastest on this machine within the bundle's accuracy
    # budget, timed at the first start and cached), or a precision pinned (rtvp_edge/artifact_choice.py)
    artifact: Literal["auto", "fp32", "fp16", "bf16", "int8", "mixed"] = "auto"
    # Ed25519 public key (PEM): when set, only bundles signed by its private key start (rtvp-export sign)
    public_key: str | None = None

    @field_validator("public_key")
    @classmethod
    def _key_exists(cls, v: str | None, info: ValidationInfo) -> str | None:
        if v is None:
            return None
        p = Path(v)
        if not p.is_absolute():
            p = _base_dir(info) / p
        if not p.is_file():
            raise ValueError(f"public key file not found: {p}")
        return str(p.resolve())

    @field_validator("bundle")
    @classmethod
    def _bundle_exists(cls, v: str, info: ValidationInfo) -> str:
        p = Path(v)
        if not p.is_absolute():
            p = _base_dir(info) / p
        p = p.resolve()
        if not p.is_dir():
            raise ValueError(f"bundle directory not found: {p}")
        if not (p / "manifest.json").is_file():
            raise ValueError(f"{p} has no manifest.json; not an rtvp-edge bundle")
        return str(p.resolve())


Box = tuple[float, float, float, float]


class DetectionConfig(StrictModel):
    """Filters applied to raw detections before the verdict rules."""

    score_threshold: float | None = Field(None, ge=0, le=1)  # None: the bundle's default
    class_thresholds: dict[str, float] = {}  # class name -> minimum score
    iou_threshold: float | None = Field(None, ge=0, le=1)
    min_box_px: float = Field(0.0, ge=0)  # shorter box side in camera pixels
    # camera id -> regions, each a rectangle [x1, y1, x2, y2] or a polygon [[x, y], [x, y], ...] (e.g. the
    # container's silhouette), camera pixels; a detection counts when its box centre is inside one region
    rois: dict[str, list[Box | list[tuple[float, float]]]] = {}

    @field_validator("class_thresholds")
    @classmethod
    def _in_unit(cls, v: dict[str, float]) -> dict[str, float]:
        for k, s in v.items():
            if not 0 <= s <= 1:
                raise ValueError(f"threshold of {k!r} is {s}, must be within [0, 1]")
        return v

    @field_validator("rois")
    @classmethod
    def _regions(cls, v: dict) -> dict:
        for cam, regions in v.items():
            for r in regions:
                if isinstance(r, tuple) and not (r[2] > r[0] and r[3] > r[1]):
                    raise ValueError(f"ROI {list(r)} of camera {cam!r} is not x1 < x2, y1 < y2")
                if isinstance(r, list) and len(r) < 3:
                    raise ValueError(f"ROI polygon of camera {cam!r} needs at least 3 points, got {len(r)}")
        return v


class VerdictRule(StrictModel):
    """NG when at least ``min_count`` defects of ``class_name`` (``"*"``: any class) score >= ``min_score``
    in one part (all views together)."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    class_name: str = Field("*", alias="class")
    min_score: float = Field(0.0, ge=0, le=1)
    min_count: int = Field(1, ge=1)


class VerdictConfig(StrictModel):
    # Default: any defect that survives the detection filters makes the part NG.
    rules: list[VerdictRule] = [VerdictRule()]


class EvidenceConfig(StrictModel):
    enabled: bool = True
    dir: str = "evidence"
    retention_days: float = Field(30.0, gt=0)
    max_files: int = Field(10_000, ge=1)
    jpeg_quality: int = Field(90, ge=10, le=100)

    @field_validator("dir")
    @classmethod
    def _resolve(cls, v: str, info: ValidationInfo) -> str:
        p = Path(v)
        return str(p if p.is_absolute() else (_base_dir(info) / p).resolve())


class HardSamplesConfig(StrictModel):
    """``hard_samples:``: raw frames of the parts worth labelling (NG, a detection near its threshold, a
    random share of OK) with the predictions as a COCO file, for ``rtvp-edge enroll`` and retraining
    (``rtvp_edge.hard_samples``, docs/runtime.md). Off by default: raw frames are large (about 1 MB a view)."""

    enabled: bool = False
    dir: str = "hard_samples"
    # a part is kept when a detection scores within this of its class threshold, on either side
    near_threshold_band: float = Field(0.05, ge=0, le=0.5)
    ok_share: float = Field(0.01, ge=0, le=1)  # share of OK parts kept, drawn by a generator seeded with seed
    seed: int = Field(0, ge=0)
    max_files: int = Field(2000, ge=1)  # images kept (oldest dropped first)
    max_mb: float = Field(2000.0, gt=0)  # and their total size
    retention_days: float = Field(30.0, gt=0)
    queue_parts: int = Field(
        8, ge=1
    )  # parts waiting for the disk; more are skipped and counted, never waited for

    @field_validator("dir")
    @classmethod
    def _resolve(cls, v: str, info: ValidationInfo) -> str:
        p = Path(v)
        return str(p if p.is_absolute() else (_base_dir(info) / p).resolve())


class RuntimeConfig(StrictModel):
    # (the metrics period is mqtt.metrics_interval_s: metrics are an MQTT event)
    queue_size: int = Field(8, ge=1)  # bounded queues between stages (parts)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"


class MetricsConfig(StrictModel):
    """``metrics:``: a Prometheus scrape endpoint (``pip install 'rtvp-edge[metrics]'``; docs/runtime.md).
    None: no HTTP endpoint (the periodic MQTT metrics event is always published)."""

    prometheus_port: int | None = Field(None, ge=1, le=65535)
    host: str = Field("127.0.0.1", min_length=1)  # listen address; 0.0.0.0 for a scraper on another machine


class LineConfig(StrictModel):
    """The whole line file."""

    line: LineIds
    cameras: list[CameraConfig] = Field(min_length=1)
    sim: SimConfig = SimConfig()
    assembly: AssemblyConfig = AssemblyConfig()
    model: BundleConfig
    detection: DetectionConfig = DetectionConfig()
    verdict: VerdictConfig = VerdictConfig()
    mqtt: MqttConfig = MqttConfig()
    evidence: EvidenceConfig = EvidenceConfig()
    hard_samples: HardSamplesConfig = HardSamplesConfig()  # raw frames + COCO predictions (docs/runtime.md)
    runtime: RuntimeConfig = RuntimeConfig()
    plc: PlcConfig | None = None  # OPC UA / Modbus servers and the reject deadline (docs/plc.md)
    metrics: MetricsConfig = MetricsConfig()  # Prometheus endpoint (docs/runtime.md)

    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())
    _source: str | None = PrivateAttr(None)  # the line file, for errors found after loading

    @property
    def source(self) -> str:
        """The line file this configuration was read from (for error messages)."""
        return self._source or "line configuration"

    @model_validator(mode="after")
    def _consistent(self) -> LineConfig:
        ids = [c.id for c in self.cameras]
        dup = sorted({i for i in ids if ids.count(i) > 1})
        if dup:
            raise ValueError(f"camera ids must be unique, repeated: {dup}")
        views = [c.view for c in self.cameras]
        dupv = sorted({v for v in views if views.count(v) > 1})
        if dupv:
            raise ValueError(f"each view index belongs to one camera, repeated: {dupv}")
        bad = [v for v in views if v >= self.assembly.views_per_part]
        if bad:
            raise ValueError(
                f"view indices {bad} >= assembly.views_per_part ({self.assembly.views_per_part})"
            )
        if len(self.cameras) != self.assembly.views_per_part:
            raise ValueError(
                f"{len(self.cameras)} cameras but assembly.views_per_part is "
                f"{self.assembly.views_per_part}: every view needs a camera"
            )
        sim_sizes = {
            (c.resolution.width, c.resolution.height)
            for c in self.cameras
            if c.kind == "sim" and c.resolution
        }
        if len(sim_sizes) > 1:
            raise ValueError(
                f"the simulated rig renders one image size; sim cameras ask for {sorted(sim_sizes)}"
            )
        if any(w < 64 or h < 64 for w, h in sim_sizes):
            raise ValueError("the simulated rig renders images of at least 64x64 pixels")
        unknown = sorted(set(self.detection.rois) - set(ids))
        if unknown:
            raise ValueError(f"detection.rois names unknown cameras {unknown} (cameras: {ids})")
        return self


def load_line_config(path: str | os.PathLike) -> LineConfig:
    """Read and validate a line file.

    Args:
        path: the YAML line configuration.
    Returns:
        the validated ``LineConfig`` (paths resolved against the file's directory).
    Raises:
        ConfigError: the file is missing, not YAML, or does not match the schema; the message names the
            file, the line and the key of every problem.
    """
    path = Path(path)
    data, root = read_yaml(path, "line configuration file")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}:1: expected a mapping with keys line, cameras, model, ...")
    config = validate_tree(
        LineConfig,
        data,
        root,
        str(path),
        context={"base_dir": path.parent.resolve()},
        schema_doc="docs/runtime.md",
    )
    config._source = str(path)
    return config
