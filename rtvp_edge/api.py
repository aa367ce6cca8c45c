"""The Python API for integrators: a ``Detector`` on a bundle, ``predict_folder`` behind ``rtvp-edge
predict``, and ``run_line`` to run a line from Python with your own sinks.

    from rtvp_edge import Detector

    with Detector("rtvp_edge/demo/bundle") as det:
        for dets in det.predict([cv2.imread("a.png"), "b.png"]):      # BGR arrays or image paths
            for d in dets:
                print(d.class_name, d.score, d.box)                      # box: camera pixels x1, y1, x2, y2

A ``Detector`` runs exactly what the line runs for one view (the bundle's preprocessing, the backend,
decode + NMS, the line's detection filters) through the same ``PartInference``, so its detections equal
the line's for the same frames.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import cv2
import numpy as np

from rtvp_edge.assembler import AssembledPart
from rtvp_edge.config import DetectionConfig, load_line_config
from rtvp_edge.detection_filter import DetectionFilter
from rtvp_edge.inference import PartInference
from rtvp_edge.messages import Detection, Frame, PartVerdict
from rtvp_edge.sources.replay import IMAGE_SUFFIXES


class Detector:
    """An open-vocabulary defect detector loaded from a bundle.

    Args:
        bundle: bundle directory (written by ``rtvp-export``); hashes are verified at load.
        backend: "openvino" (default), "onnxruntime" or "tensorrt".
        device: backend device ("CPU", "GPU", "cuda", ...).
        threads: CPU threads (0: backend default).
        detection: the filters the line applies (``detection:`` of a line file); default: the bundle's
            thresholds, no ROI, no minimum size.
        selftest: run the bundle's golden self-test at load (refuse a bundle that disagrees with export).
    Raises:
        BundleError: tampered bundle, backend cannot load it, or the self-test fails.
    """

    def __init__(
        self,
        bundle: str | Path,
        backend: str = "openvino",
        device: str = "CPU",
        threads: int = 0,
        detection: DetectionConfig | None = None,
        selftest: bool = True,
    ) -> None:
        from rtvp_edge.pipeline import load_and_check_bundle  # the line's loader: hashes + self-test

        self.bundle = Path(bundle)
        self.manifest, self.backend = load_and_check_bundle(bundle, backend, device, threads, 1, selftest)
        try:
            self.detection = detection or DetectionConfig()
            self.detection_filter = DetectionFilter(
                self.detection,
                [c.name for c in self.manifest.vocabulary.classes],
                self.manifest.thresholds.score,
                self.manifest.thresholds.class_scores,
            )
            self.inference = PartInference(
                self.backend, self.manifest, bundle, self.detection_filter, self.detection.iou_threshold
            )
        except BaseException:
            self.backend.close()
            raise

    @classmethod
    def from_line(cls, line_file: str | Path) -> Detector:
        """The detector of a line file: its bundle, backend, device and detection filters (ROIs are
        per camera id: ``predict(..., camera_ids=...)`` applies them)."""
        cfg = load_line_config(line_file)
        m = cfg.model
        return cls(m.bundle, m.backend, m.device, m.threads, cfg.detection, m.selftest)

    @property
    def class_names(self) -> list[str]:
        return list(self.detection_filter.class_names)

    def predict(
        self, images: Sequence[np.ndarray | str | Path] | np.ndarray, camera_ids: Sequence[str] | None = None
    ) -> list[list[Detection]]:
        """Detect defects.

        Args:
            images: one (H, W, 3) uint8 BGR image, or a sequence of them and/or image paths; sizes may differ.
            camera_ids: per image, the camera id whose ROIs apply (default: none, no ROI filter).
        Returns:
            per image, its detections (class id and name, score, box (x1, y1, x2, y2) in that image's pixels),
            best score first.
        """
        if isinstance(images, np.ndarray) and images.ndim == 3:
            images = [images]
        imgs = [_read(i) for i in images]
        if not imgs:
            return []
        ids = list(camera_ids) if camera_ids is not None else [f"image{i}" for i in range(len(imgs))]
        if len(ids) != len(imgs):
            raise ValueError(f"{len(ids)} camera_ids for {len(imgs)} images")
        now, mono = time.time(), time.monotonic()
        frames = tuple(
            Frame(c, i, 0, now, img, monotonic=mono) for i, (c, img) in enumerate(zip(ids, imgs, strict=True))
        )
        done = threading.Event()
        out: dict = {}

        def on_done(_part, views, err, _timing) -> None:
            out["views"], out["err"] = views, err
            done.set()

        self.inference.submit(AssembledPart("predict", 0, frames), on_done)
        self.inference.wait_all()
        done.wait()
        if out["err"] is not None:
            raise out["err"]
        return [sorted(v.detections, key=lambda d: -d.score) for v in out["views"]]

    def close(self) -> None:
        self.backend.close()

    def __enter__(self) -> Detector:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _read(image: np.ndarray | str | Path) -> np.ndarray:
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"expected an (H, W, 3) uint8 BGR image, got {image.shape} {image.dtype}")
        return image
    img = cv2.imread(str(image), cv2.IMREAD_COLOR)
    if img is None:
        raise ValueError(f"{image}: not a readable image")
    return img


def annotate(image: np.ndarray, detections: Sequence[Detection]) -> np.ndarray:
    """A copy of ``image`` with each detection's box and "class score" drawn in red."""
    img = image.copy()
    for d in detections:
        x1, y1, x2, y2 = (int(round(c)) for c in d.box)
        cv2.rectangle(img, (x1, y1), (x2, y2), (0, 0, 255), 2)
        cv2.putText(
            img, f"{d.class_name} {d.score:.2f}", (x1, max(12, y1 - 4)), cv2.FONT_HERSHEY_SIMPLEX, 0.5,
            (0, 0, 255), 1,
        )  # fmt: skip
    return img


def _frames_of(source: Path):
    """(name, BGR image) of a folder's images in name order, or of a video's frames."""
    if source.is_dir():
        for p in sorted(q for q in source.iterdir() if q.suffix.lower() in IMAGE_SUFFIXES):
            yield p.name, _read(p)
        return
    cap = cv2.VideoCapture(str(source))
    if not cap.isOpened():
        raise ValueError(f"{source}: neither a folder of images nor a readable video")
    try:
        n = 0
        while True:
            ok, img = cap.read()
            if not ok:
                break
            yield f"{source.stem}_{n:06d}.jpg", img
            n += 1
    finally:
        cap.release()


def predict_folder(detector: Detector, source: str | Path, out_dir: str | Path, batch: int = 4) -> dict:
    """``rtvp-edge predict``: annotated images plus COCO files for a folder of images or a video.

    Writes ``out_dir/<image name>`` (annotated; video frames as ``<stem>_<n>.jpg``),
    ``out_dir/coco_results.json`` (COCO results: ``[{image_id, category_id, bbox [x, y, w, h], score}]``,
    category_id = class index + 1) and ``out_dir/coco_images.json`` (``images`` with ids and file names,
    ``categories`` with the class names) to evaluate against a ground truth.

    Returns:
        {"images": n, "detections": n, "results": path}.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results, images = [], []
    pending: list[tuple[str, np.ndarray]] = []

    def flush() -> None:
        for (name, img), dets in zip(pending, detector.predict([i for _, i in pending]), strict=True):
            image_id = len(images) + 1
            h, w = img.shape[:2]
            images.append({"id": image_id, "file_name": name, "width": w, "height": h})
            for d in dets:
                x1, y1, x2, y2 = d.box
                results.append({
                    "image_id": image_id, "category_id": d.class_id + 1,
                    "bbox": [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)],
                    "score": round(float(d.score), 5),
                })  # fmt: skip
            if not cv2.imwrite(str(out / name), annotate(img, dets)):
                raise OSError(f"{out / name}: cannot write the annotated image")
        pending.clear()

    for item in _frames_of(Path(source)):
        pending.append(item)
        if len(pending) >= batch:
            flush()
    if pending:
        flush()
    if not images:
        raise ValueError(f"{source}: no images found")
    cats = [{"id": i + 1, "name": n} for i, n in enumerate(detector.class_names)]
    (out / "coco_images.json").write_text(json.dumps({"images": images, "categories": cats}, indent=1))
    (out / "coco_results.json").write_text(json.dumps(results))
    return {"images": len(images), "detections": len(results), "results": str(out / "coco_results.json")}


def run_line(
    line_file: str | Path,
    sinks: Sequence[Callable[[PartVerdict], None]] = (),
    parts: int | None = None,
    duration_s: float | None = None,
    use_mqtt: bool = True,
    stop_event: threading.Event | None = None,
):
    """Run a line from Python: each of ``sinks`` gets every ``PartVerdict`` (after the PLC signal; a sink
    that raises is counted, the others still run); returns the ``RunSummary``. Stops after ``parts`` parts, ``duration_s`` seconds, when
    ``stop_event`` is set, or when the sources end. The embedded broker is started when the line asks."""
    import contextlib

    from rtvp_edge.messaging.broker import broker_for
    from rtvp_edge.pipeline import build_pipeline

    config = load_line_config(line_file)
    with contextlib.ExitStack() as stack:
        if use_mqtt:
            stack.enter_context(broker_for(config.mqtt))
        pipeline = build_pipeline(config, sinks=sinks, use_mqtt=use_mqtt)
        stack.callback(pipeline.close)
        if pipeline.publisher is not None:
            pipeline.publisher.start()
        return pipeline.run(parts, duration_s, stop_event)
