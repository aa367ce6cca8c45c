"""Reload of a running line (issue 16): a changed vocabulary or changed thresholds, picked up on SIGHUP and
on ``<root>/command/reload``, checked (hashes, same model, golden self-test) before it is swapped in between
parts; a bad file is refused and the old vocabulary keeps running. And the issue's line test: a type the
line's input-mode bundle does not know is enrolled from five boxes of the hard-sample folder's COCO file,
reloaded, and the following parts carry its name in their defect events; no part lost or duplicated.

Tiny input-mode exports of the detector double (tests/test_enroll.py's fixtures), real OpenVINO, a real
Mosquitto; every wait is for a state (a status message, a file), never a sleep.
"""

# ruff: noqa: F811 - test_enroll's fixtures are imported (reused, not copied) and requested by name

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import paho.mqtt.client as paho
import pytest
from test_enroll import NEW, _coco_examples, folded_bundle, glass_data, input_bundle  # noqa: F401 - fixtures
from test_pipeline_mqtt import Collector

from rtvp_edge.bundle import load_manifest, sha256_file
from rtvp_edge.cli import main as edge_main
from rtvp_edge.config import load_line_config
from rtvp_edge.hard_samples import COCO_FILE
from rtvp_edge.pipeline import build_pipeline

pytestmark = [pytest.mark.timeout(300)]
ROOT = Path(__file__).resolve().parents[1]
TOPIC = "rtvp/plant/glass/reload"


def wait_until(check, what: str, timeout: float = 90.0):
    """Poll ``check()`` until it returns something truthy (the state waited for); fail naming ``what``."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        got = check()
        if got:
            return got
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def replay_folder(data: Path, tmp_path, crack_boxes: int = 5, others: int = 2) -> tuple[Path, list[dict]]:
    """A camera folder of the rig's images with at least ``crack_boxes`` boxes of NEW (the class the bundle
    does not know) and ``others`` images without one; returns it and, per image in replay order, the
    image's {file, cracks: [[x, y, w, h], ...]} (the ground truth the labeller in the test knows)."""
    out = tmp_path / "camera"
    out.mkdir()
    chosen: list[dict] = []
    n_cracks = n_others = 0
    for split in ("val", "train"):
        coco = json.loads((data / "annotations" / f"{split}.json").read_text())
        crack = next(c["id"] for c in coco["categories"] if c["name"] == NEW)
        for img in coco["images"]:
            boxes = [
                a["bbox"]
                for a in coco["annotations"]
                if a["image_id"] == img["id"] and a["category_id"] == crack
            ]
            if boxes and n_cracks < crack_boxes:
                n_cracks += len(boxes)
            elif not boxes and n_others < others:
                n_others += 1
            else:
                continue
            chosen.append({"src": data / "Images" / split / img["file_name"], "cracks": boxes})
    assert n_cracks >= crack_boxes, "the generated data set has too few boxes of the class"
    for i, c in enumerate(chosen):
        c["file"] = out / f"{i:03d}{c['src'].suffix}"
        shutil.copy(c["src"], c["file"])
    return out, chosen


def reload_line(tmp_path, bundle, camera, port: int, detection: str = "", hs: bool = True) -> Path:
    p = tmp_path / "line.yaml"
    p.write_text(
        f"""\
line: {{site: plant, line: glass, station: reload}}
cameras:
  - {{id: C1, source: {camera}, view: 0, replay_fps: 6, loop: true, overflow: block}}
assembly: {{views_per_part: 1, timeout_s: 10.0}}
model: {{bundle: {bundle}, backend: openvino, threads: 1}}
detection: {{{detection}}}
evidence: {{enabled: false}}
hard_samples: {{enabled: {str(hs).lower()}, dir: {tmp_path / "hard_samples"}, ok_share: 1.0, max_files: 500}}
mqtt:
  broker: external
  host: 127.0.0.1
  port: {port}
  metrics_interval_s: 60
  outbox: {{path: {tmp_path / "outbox.sqlite"}}}
runtime: {{queue_size: 4}}
"""
    )
    return p


@pytest.fixture(scope="module")
def line_data(tmp_path_factory):
    """Images of the rig with enough boxes of NEW for five examples (24 containers: 17 of them; the
    bundles' own small data set has 3)."""
    gen = pytest.importorskip("training.data.generate", reason="the rig's data generator is not installed")
    out = tmp_path_factory.mktemp("line_data")
    return gen.generate_dataset(out, containers=24, protocol="closed", seed=5, progress=False)["closed"]


@pytest.fixture
def bundle(input_bundle, tmp_path):
    out = tmp_path / "bundle"
    shutil.copytree(input_bundle, out)
    return out


def unique(messages: list[dict]) -> list[dict]:
    """QoS 1 is at-least-once: one message per event id."""
    return list({m["event_id"]: m for m in messages}.values())


def reloads(sub: Collector) -> list[dict]:
    return unique([s for s in sub.of("status") if "reload" in s])


def check_every_part_once(verdicts: list[dict]) -> list[dict]:
    """Each trigger exactly once, none missing: sorted by trigger."""
    verdicts = sorted(unique(verdicts), key=lambda v: v["trigger_seq"])
    seqs = [v["trigger_seq"] for v in verdicts]
    assert seqs == list(range(len(seqs))), f"parts lost or duplicated: {seqs}"
    return verdicts


# ------------------------------------------------------------------------------------------ in process


def test_threshold_reload_applies_between_parts_and_bad_line_files_are_refused(bundle, glass_data, tmp_path):
    camera, _ = replay_folder(glass_data, tmp_path, crack_boxes=1, others=2)
    line = reload_line(tmp_path, bundle, camera, 1883, hs=False)  # no MQTT in this one
    text = line.read_text()
    got, statuses = [], []
    p = build_pipeline(
        load_line_config(line),
        sinks=[got.append],
        status_sinks=[lambda *s: statuses.append(s)],
        use_mqtt=False,
    )
    stop = threading.Event()
    run = threading.Thread(target=p.run, kwargs={"stop_event": stop})
    run.start()
    try:
        wait_until(lambda: len(got) >= 3, "three verdicts")
        # a section a reload cannot apply: refused, naming it
        line.write_text(text.replace("queue_size: 4", "queue_size: 5"))
        out = p.reload_now("test")
        assert out["result"] == "refused" and "runtime changed" in out["reason"], out
        # a class threshold naming a class the bundle lacks: refused, naming the file and the class
        line.write_text(text.replace("detection: {}", "detection: {class_thresholds: {amber: 0.3}}"))
        out = p.reload_now("test")
        assert out["result"] == "refused" and "'amber'" in out["reason"] and str(line) in out["reason"], out
        # nothing changed
        line.write_text(text)
        assert p.reload_now("test")["result"] == "unchanged"
        # thresholds no detection can reach: applied, the next parts are judged with them
        assert any(v.verdict == "NG" for v in got), (
            "the double flags some parts before (else the test proves nothing)"
        )
        line.write_text(text.replace("detection: {}", "detection: {score_threshold: 1.0}"))
        out = p.reload_now("test")
        assert out["result"] == "applied" and out["vocabulary"]["generation"] == 1, out
        n = len(got)
        wait_until(lambda: len(got) >= n + 16, "sixteen more verdicts")
    finally:
        stop.set()
        run.join(60)
        p.close()
    assert [s[1] for s in statuses if s[0] == "reload"] == ["REFUSED", "REFUSED", "UNCHANGED", "APPLIED"]
    seqs = sorted(v.trigger_seq for v in got)
    assert seqs == list(range(len(seqs)))  # nothing lost, nothing twice
    # parts in flight at the swap finish with the old thresholds: at most the backend's requests (2) and
    # the result queue (queue_size + requests) of them
    after = sorted(got, key=lambda v: v.trigger_seq)[n + 8 :]
    assert after and all(v.verdict == "OK" and not any(x.detections for x in v.views) for v in after)


# ------------------------------------------------------------------------------------------ the line test


def label_hard_samples(hs: Path, images: list[dict], name: str, n: int = 5) -> Path:
    """What a person does in a labelling tool: open the hard-sample COCO, draw ``n`` boxes of the new class
    ``name`` on its images, export COCO (a new category, the predictions kept). Returns the exported file,
    saved next to the hard-sample COCO (its file names are relative to that folder)."""
    coco = json.loads((hs / COCO_FILE).read_text())
    cat = max(c["id"] for c in coco["categories"]) + 1
    coco["categories"].append({"id": cat, "name": name, "supercategory": "defect"})
    next_ann = max((a["id"] for a in coco["annotations"]), default=0) + 1
    done = 0
    for img in coco["images"]:
        src = images[img["trigger_seq"] % len(images)]
        raw = cv2.imread(str(hs / img["file_name"]), cv2.IMREAD_UNCHANGED)
        np.testing.assert_array_equal(raw, cv2.imread(str(src["file"])))  # raw: the frame as captured
        for box in src["cracks"]:
            if done < n and not any(a.get("box_of") == box for a in coco["annotations"]):
                coco["annotations"].append(
                    {"id": next_ann, "image_id": img["id"], "category_id": cat, "bbox": box, "area": box[2] * box[3],
                     "iscrowd": 0, "box_of": box}
                )  # fmt: skip
                next_ann += 1
                done += 1
    assert done == n, f"the hard-sample folder holds {done} boxes of {name}, the test needs {n}"
    out = hs / "labelled.json"
    out.write_text(json.dumps(coco))
    return out


def command(port: int, topic: str, payload: dict) -> None:
    c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="test-commander", protocol=paho.MQTTv311)
    c.connect("127.0.0.1", port)
    c.loop_start()
    c.publish(topic, json.dumps(payload), qos=1).wait_for_publish(10)
    c.loop_stop()
    c.disconnect()


def test_a_new_type_enrolled_from_hard_samples_is_reported_by_name_after_an_mqtt_reload(
    bundle, line_data, tmp_path, mosquitto
):
    camera, images = replay_folder(line_data, tmp_path)
    line = reload_line(tmp_path, bundle, camera, mosquitto.port)
    hs = tmp_path / "hard_samples"
    sub = Collector(mosquitto.host, mosquitto.port, TOPIC)
    p = build_pipeline(load_line_config(line))
    p.publisher.start()
    old_sha = p.model.info["bundle_sha256"]
    stop = threading.Event()
    run = threading.Thread(target=p.run, kwargs={"stop_event": stop})
    run.start()
    try:
        online = wait_until(lambda: unique(sub.of("status")), "the online status")[0]
        assert online["vocabulary"]["classes"] == [c.name for c in load_manifest(bundle).vocabulary.classes]
        assert NEW not in online["vocabulary"]["classes"] and online["vocabulary"]["generation"] == 0

        def every_image_kept():
            try:
                kept = json.loads((hs / COCO_FILE).read_text())["images"]
            except (OSError, ValueError):
                return False
            return len({i["trigger_seq"] % len(images) for i in kept}) == len(images)

        wait_until(every_image_kept, "the hard-sample folder to hold every image once")
        labelled = label_hard_samples(hs, images, NEW)
        assert edge_main(["enroll", "--bundle", str(bundle), "--name", NEW, "--examples", str(labelled)]) == 0
        new_sha = sha256_file(bundle / "manifest.json")
        command(mosquitto.port, f"{TOPIC}/command/reload", {"request_id": "enrol-1"})
        (st,) = wait_until(
            lambda: [s for s in reloads(sub) if s["reload"].get("request_id") == "enrol-1"],
            "the reload status",
        )
        assert st["reload"] == {"source": "mqtt", "request_id": "enrol-1", "result": "applied"}, st
        assert st["vocabulary"]["classes"][-1] == NEW and st["vocabulary"]["generation"] == 1
        assert st["vocabulary"]["bundle_sha256"] == new_sha == st["model"]["bundle_sha256"] != old_sha
        assert st["vocabulary"]["enrolled"] == [NEW]
        # the following parts carry the new class by name
        wait_until(lambda: [d for d in sub.of("defect") if d["class_name"] == NEW], f"a {NEW} defect event")
    finally:
        stop.set()
        run.join(60)
        p.close()
    assert sub.wait_for_clean_stop(), "the station's clean-stop status never arrived"
    verdicts = check_every_part_once(sub.of("verdict"))
    sub.close()
    shas = [v["model"]["bundle_sha256"] for v in verdicts]
    switch = shas.index(new_sha)  # one switch, between parts: old before, new after
    assert set(shas[:switch]) == {old_sha} and set(shas[switch:]) == {new_sha}
    for v in verdicts:
        names = {d["class_name"] for d in v["defects"]}
        assert NEW not in names or v["model"]["bundle_sha256"] == new_sha, v
    assert any(NEW in {d["class_name"] for d in v["defects"]} for v in verdicts[switch:])
    # the hard-sample folder follows the vocabulary: the new class is a category of the next images
    cats = {c["name"] for c in json.loads((hs / COCO_FILE).read_text())["categories"]}
    assert NEW in cats


# ------------------------------------------------------------------------------------------ SIGHUP


def test_sighup_refuses_a_corrupt_or_other_model_bundle_and_swaps_a_good_one(
    bundle,
    folded_bundle,
    glass_data,
    tmp_path,
    mosquitto,
):
    camera, _ = replay_folder(glass_data, tmp_path, crack_boxes=1, others=2)
    line = reload_line(tmp_path, bundle, camera, mosquitto.port, hs=False)
    good = tmp_path / "good-bundle"
    shutil.copytree(bundle, good)
    sub = Collector(mosquitto.host, mosquitto.port, TOPIC)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    log = open(tmp_path / "run.log", "w")  # noqa: SIM115 - the child's output, closed after it exits
    proc = subprocess.Popen(
        [sys.executable, "-m", "rtvp_edge", "run", "--line", str(line), "--no-live"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip

    def verdicts() -> list[dict]:
        return unique(sub.of("verdict"))

    def hup_and_wait(k: int) -> dict:
        n = len(verdicts())
        proc.send_signal(signal.SIGHUP)
        st = wait_until(lambda: len(reloads(sub)) >= k and reloads(sub), f"reload status {k}")
        # the line keeps going after every reload, good or bad
        wait_until(lambda: len(verdicts()) >= n + 3, "three more verdicts")
        return sorted(st, key=lambda s: s["ts"])[k - 1]

    try:
        wait_until(lambda: [s for s in unique(sub.of("status")) if s["state"] == "online"], "the line online")
        old_sha = wait_until(verdicts, "a verdict")[0]["model"]["bundle_sha256"]
        # 1. a corrupt vocabulary file: the hashes say so
        emb = bundle / "text_embeddings.npy"
        data = bytearray(emb.read_bytes())
        data[-1] ^= 0xFF
        emb.write_bytes(bytes(data))
        st = hup_and_wait(1)
        assert st["reload"]["result"] == "refused" and st["reload"]["source"] == "SIGHUP", st
        assert "sha256" in st["reload"]["reason"] and "text_embeddings.npy" in st["reload"]["reason"], st
        assert st["vocabulary"]["generation"] == 0 and st["vocabulary"]["bundle_sha256"] == old_sha
        # 2. a bundle of another model (folded vocabulary: no embeddings input, other graph files)
        shutil.rmtree(bundle)
        shutil.copytree(folded_bundle, bundle)
        st = hup_and_wait(2)
        assert st["reload"]["result"] == "refused" and "another model" in st["reload"]["reason"], st
        # 3. a good one: the bundle with a class enrolled
        shutil.rmtree(bundle)
        shutil.copytree(good, bundle)
        examples = _coco_examples(glass_data, tmp_path, n=2)
        assert edge_main(
            ["enroll", "--bundle", str(bundle), "--name", NEW, "--examples", str(examples),
             "--images", str(glass_data / "Images" / "val")]
        ) == 0  # fmt: skip
        new_sha = sha256_file(bundle / "manifest.json")
        st = hup_and_wait(3)
        assert st["reload"] == {"source": "SIGHUP", "result": "applied"}, st
        assert st["vocabulary"]["classes"][-1] == NEW and st["vocabulary"]["bundle_sha256"] == new_sha
        wait_until(
            lambda: [v for v in verdicts() if v["model"]["bundle_sha256"] == new_sha],
            "a verdict of the new bundle",
        )
    finally:
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(60)
        log.close()
    out = (tmp_path / "run.log").read_text()
    assert rc == 0, out
    assert "reload (SIGHUP) refused" in out and "reload applied" in out
    assert sub.wait_for_clean_stop(), "the station's clean-stop status never arrived"
    shas = [v["model"]["bundle_sha256"] for v in check_every_part_once(sub.of("verdict"))]
    sub.close()
    switch = shas.index(new_sha)
    assert set(shas[:switch]) == {old_sha} and set(shas[switch:]) == {new_sha}


def test_a_class_change_is_refused_while_plc_servers_run_and_thresholds_still_reload(
    bundle, glass_data, tmp_path
):
    """prepare_reload alone (no running line): with PLC servers (fixed_classes) a new class is refused, naming
    why; the same bundle is accepted without them."""
    from rtvp_edge.reload import ReloadError, prepare_reload

    camera, _ = replay_folder(glass_data, tmp_path, crack_boxes=1, others=1)
    line = reload_line(tmp_path, bundle, camera, 1883, hs=False)
    p = build_pipeline(load_line_config(line), use_mqtt=False)
    try:
        examples = _coco_examples(glass_data, tmp_path, n=1)
        images = str(glass_data / "Images" / "val")
        assert (
            edge_main(
                [
                    "enroll",
                    "--bundle",
                    str(bundle),
                    "--name",
                    NEW,
                    "--examples",
                    str(examples),
                    "--images",
                    images,
                ]
            )
            == 0
        )
        with pytest.raises(ReloadError, match="PLC servers"):
            prepare_reload(p.model, line, p.inference.backend, fixed_classes=True)
        new = prepare_reload(p.model, line, p.inference.backend)
        assert new.vocabulary.class_names[-1] == NEW and new.generation == 1
        assert (
            new.info["bundle_sha256"]
            == sha256_file(bundle / "manifest.json")
            != p.model.info["bundle_sha256"]
        )
        assert p.model.generation == 0  # preparing swaps nothing
    finally:
        p.close()
