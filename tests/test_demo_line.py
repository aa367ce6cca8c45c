"""The shipped demo model on the simulated glass line, against a real Mosquitto broker: every part yields
exactly one verdict, and the defects it reports match the rig's ground truth for clear defects.

Matching, per physical defect (the rig gives each defect an id shared by the views that see it): a clear
defect is found when some view reports a box of its class with IoU >= 0.3 on it; a reported defect is right
when it lies on a true defect of its view (clear or not, IoU >= 0.3). The bars below are what the committed
demo bundle measurably clears on this seeded run (README "The demo model"), with a margin; they fail for a
model that misses or invents defects.

Runs when the demo bundle is in the checkout (``rtvp_edge/demo/bundle``)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
from test_pipeline_mqtt import ROOT_TOPIC, Collector, rig_line
from torchvision.ops import box_iou

from rtvp_edge.config import load_line_config
from rtvp_edge.pipeline import build_pipeline
from rtvp_edge.rig import render_container

pytestmark = [pytest.mark.mqtt, pytest.mark.timeout(300)]

DEMO = Path(__file__).resolve().parents[1] / "rtvp_edge" / "demo" / "bundle"
# The demo line renders defects twice the rig's default size (line_config/glass.yaml, sim.defect_size_scale),
# as its training data did.
SIZE_SCALE = 2.0
N_PARTS = 24
# Measured with the committed bundle on this run (seed 3, 24 parts): 0.89 (24/27) located, 0.52 (14/27) with
# their class, 0.91 (91/100) of the reported defects on a true defect, 0.88 (21/24) part verdicts right.
MIN_LOCATION_RECALL = 0.75  # clear defects with a reported box on them in at least one view
MIN_DEFECT_RECALL = 0.4  # ... of the right class (the demo model's weak point: README "The demo model")
MIN_PRECISION = 0.75  # reported defects that lie on a true defect
MIN_PART_ACCURACY = 0.75  # NG for parts with a clear defect, OK for parts without any defect
IOU = 0.3


def match_part(index: int, config, defects: list[dict]) -> dict:
    """Ground truth of container ``index`` against the defects its verdict reports."""
    truth = render_container(config, index)
    clear_ids, found_ids, located_ids, any_defect = set(), set(), set(), False
    right = 0
    for view in range(len(truth.views)):
        gts = truth.views[view][1]
        any_defect |= bool(gts)
        clear_ids |= {g.defect_id for g in gts if g.clear}
        dets = [d for d in defects if d["view_index"] == view]
        if not gts or not dets:
            continue
        iou = box_iou(torch.tensor([g.box for g in gts]), torch.tensor([d["box"] for d in dets]))
        same = torch.tensor([[g.class_name == d["class_name"] for d in dets] for g in gts])
        for k, g in enumerate(gts):
            if g.clear and bool(((iou[k] >= IOU) & same[k]).any()):
                found_ids.add(g.defect_id)
            if g.clear and bool((iou[k] >= IOU).any()):
                located_ids.add(g.defect_id)
        right += int((iou >= IOU).any(0).sum())
    return {
        "clear": clear_ids,
        "found": found_ids,
        "located": located_ids,
        "any_defect": any_defect,
        "reported": len(defects),
        "right": right,
    }


@pytest.mark.skipif(not (DEMO / "manifest.json").is_file(), reason="no demo bundle in this checkout")
def test_demo_model_verdicts_match_the_rig_ground_truth(tmp_path, mosquitto):
    line = rig_line(tmp_path, DEMO, mosquitto.port, N_PARTS, timeout_s=5.0)
    line.write_text(
        line.read_text().replace("realtime: false}", f"realtime: false, defect_size_scale: {SIZE_SCALE}}}")
    )
    cfg = load_line_config(line)
    sub = Collector(mosquitto.host, mosquitto.port, ROOT_TOPIC)
    p = build_pipeline(cfg)
    p.publisher.start()
    try:
        p.run()
    finally:
        p.close(flush_timeout=10)
    sub.wait_for("verdict", N_PARTS)
    time.sleep(0.3)
    sub.close()
    verdicts = {}
    for v in sub.of("verdict"):
        assert v["part_id"] not in verdicts, f"two verdicts for {v['part_id']}"
        verdicts[v["part_id"]] = v
    assert sorted(verdicts) == [f"C{i:06d}" for i in range(N_PARTS)]

    clear = found = located = reported = right = judged = correct = 0
    for i in range(N_PARTS):
        v = verdicts[f"C{i:06d}"]
        assert v["verdict"] in ("OK", "NG")
        # glass.yaml's rule: any defect left after the filters makes the part NG
        assert (v["verdict"] == "NG") == bool(v["defects"]), v["part_id"]
        m = match_part(i, p.rig.config, v["defects"])
        clear += len(m["clear"])
        found += len(m["found"])
        located += len(m["located"])
        reported += m["reported"]
        right += m["right"]
        if m["clear"] or not m["any_defect"]:  # parts with only faint defects may go either way
            judged += 1
            correct += (v["verdict"] == "NG") == bool(m["clear"])
    recall = found / max(clear, 1)
    location_recall = located / max(clear, 1)
    precision = right / max(reported, 1)
    part_accuracy = correct / max(judged, 1)
    print(
        f"demo model on {N_PARTS} parts: clear defects found with their class {recall:.2f} ({found}/{clear}), "
        f"at their place whatever the class {location_recall:.2f} ({located}/{clear}), reported defects "
        f"on a true defect {precision:.2f} ({right}/{reported}), part verdicts right {part_accuracy:.2f} "
        f"({correct}/{judged})"
    )
    assert clear >= 10 and judged >= N_PARTS // 2, "the seeded run should show clear defects and good parts"
    assert location_recall >= MIN_LOCATION_RECALL, f"clear defects located {located}/{clear}"
    assert recall >= MIN_DEFECT_RECALL, f"clear defects found with their class {found}/{clear}"
    assert precision >= MIN_PRECISION, f"reported defects on a true defect {right}/{reported}"
    assert part_accuracy >= MIN_PART_ACCURACY, f"part verdicts right {correct}/{judged}"
