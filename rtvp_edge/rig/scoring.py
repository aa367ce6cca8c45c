"""Score a line's verdicts against the simulated rig's ground truth (the demo-line test and benchmark).

Matching is per physical defect: the rig gives each defect an id shared by the views that see it. A clear
defect (``GroundTruthBox.clear``) is *located* when some view reports a box on it with IoU >= ``iou``, and
*found* when that box also has its class; a reported defect is *right* when it lies on a true defect of
its view (clear or not). A part verdict is judged when the part has a clear defect (NG is right) or no
defect at all (OK is right); parts with only faint defects may go either way.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from .render import RigConfig, render_container


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix (N, M) of xyxy boxes ``a`` (N, 4) and ``b`` (M, 4)."""
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / np.clip(area_a[:, None] + area_b[None, :] - inter, 1e-9, None)


@dataclass
class LineScore:
    """Counts over the scored parts; the ratios are properties."""

    parts: int = 0
    clear: int = 0
    found: int = 0
    located: int = 0
    reported: int = 0
    right: int = 0
    judged: int = 0
    correct: int = 0
    per_class: dict[str, list[int]] = field(default_factory=dict)  # class -> [found, clear]

    @property
    def class_recall(self) -> float:
        return self.found / max(self.clear, 1)

    @property
    def location_recall(self) -> float:
        return self.located / max(self.clear, 1)

    @property
    def precision(self) -> float:
        return self.right / max(self.reported, 1)

    @property
    def part_accuracy(self) -> float:
        return self.correct / max(self.judged, 1)

    def summary(self) -> str:
        return (
            f"{self.parts} parts: clear defects located {self.location_recall:.2f} ({self.located}/{self.clear}), "
            f"found with their class {self.class_recall:.2f} ({self.found}/{self.clear}), reported defects on a "
            f"true defect {self.precision:.2f} ({self.right}/{self.reported}), part verdicts right "
            f"{self.part_accuracy:.2f} ({self.correct}/{self.judged})"
        )

    def as_dict(self) -> dict:
        return {
            "parts": self.parts,
            "location_recall": self.location_recall,
            "class_recall": self.class_recall,
            "precision": self.precision,
            "part_accuracy": self.part_accuracy,
            "counts": {
                k: getattr(self, k)
                for k in ("clear", "found", "located", "reported", "right", "judged", "correct")
            },
            "per_class_found_of_clear": {k: list(v) for k, v in sorted(self.per_class.items())},
        }


def score_part(
    score: LineScore,
    config: RigConfig,
    index: int,
    verdict: str,
    defects: Iterable[tuple[int, str, Sequence[float]]],
    iou: float = 0.3,
) -> None:
    """Add container ``index`` to ``score``.

    Args:
        verdict: the part's verdict, ``"OK"`` or ``"NG"``.
        defects: reported defects as (view index, class name, (x1, y1, x2, y2) camera pixels).
    """
    defects = list(defects)
    truth = render_container(config, index)
    clear_ids, found_ids, located_ids, any_defect = {}, set(), set(), False
    right = 0
    for view in range(len(truth.views)):
        gts = truth.views[view][1]
        any_defect |= bool(gts)
        clear_ids.update({g.defect_id: g.class_name for g in gts if g.clear})
        dets = [d for d in defects if d[0] == view]
        if not gts or not dets:
            continue
        m = box_iou(np.array([g.box for g in gts]), np.array([d[2] for d in dets])) >= iou  # (G, D)
        same = np.array([[g.class_name == d[1] for d in dets] for g in gts])
        for k, g in enumerate(gts):
            if g.clear and (m[k] & same[k]).any():
                found_ids.add(g.defect_id)
            if g.clear and m[k].any():
                located_ids.add(g.defect_id)
        right += int(m.any(0).sum())
    score.parts += 1
    score.clear += len(clear_ids)
    score.found += len(found_ids)
    score.located += len(located_ids)
    score.reported += len(defects)
    score.right += right
    for did, cls in clear_ids.items():
        f, c = score.per_class.get(cls, [0, 0])
        score.per_class[cls] = [f + int(did in found_ids), c + 1]
    if clear_ids or not any_defect:
        score.judged += 1
        score.correct += int((verdict == "NG") == bool(clear_ids))
