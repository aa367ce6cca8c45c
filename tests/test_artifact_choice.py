"""The artifact that is fastest here, and the box's capacity (issue 13, items 3-4).

The choice logic runs on fake artifacts with known speeds and accuracies (the timer is injected: nothing
here depends on how fast this machine is); the cache key, the cache (and a corrupt one), the pin in the
line file; a real two-artifact bundle loads the artifact chosen; old single-artifact bundles run untimed.
Capacity: a slow fake box makes ``check --line`` warn, a simulated line is paced to it and says so.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
from test_backends import TOY_CLASSES, make_toy_bundle
from test_pipeline import line_file, recorded_line

from rtvp_edge import cli
from rtvp_edge.artifact_choice import (
    CACHE_FILE,
    Capacity,
    ChoiceCache,
    PinError,
    choice_key,
    choose_artifact,
    cpu_identity,
    paced_rate,
    part_timer,
    within_budget,
)
from rtvp_edge.bundle import (
    AccuracyInfo,
    Artifact,
    BundleManifest,
    ModelInfo,
    PreprocessInfo,
    VocabularyClass,
    VocabularyInfo,
    load_manifest,
    write_manifest,
)
from rtvp_edge.config import ConfigError, load_line_config
from rtvp_edge.pipeline import build_pipeline, load_model

pytestmark = pytest.mark.timeout(60)


# ---------------------------------------------------------------------------------------------------
# fakes


def manifest_with(
    arts: list[Artifact], fp32_ap50: float = 61.0, max_drop: float | None = 1.0
) -> BundleManifest:
    return BundleManifest(
        created_utc="2026-11-21T00:00:00.000Z",
        model=ModelInfo(name="toy", version="t"),
        preprocess=PreprocessInfo(input_size=(64, 64)),
        vocabulary=VocabularyInfo(
            mode="folded",
            classes=[VocabularyClass(name=c, prompt=c) for c in TOY_CLASSES],
            text_encoder="random:4",
            embeddings_sha256="0" * 64,
            embedding_dim=4,
        ),
        artifacts=arts,
        accuracy=AccuracyInfo(
            dataset="held-out", images=10, fp32={"AP50": fp32_ap50}, artifact={"AP50": 0.0}, max_drop=max_drop
        ),
    )


def ov(precision: str, ap50: float | None = None, path: str | None = None) -> Artifact:
    return Artifact(
        backend="openvino",
        path=path or f"openvino/model_{precision}.xml",
        precision=precision,
        accuracy={} if ap50 is None else {"AP50": ap50},
    )


class FakeBackend:
    def __init__(self, art: Artifact | None) -> None:
        self.artifact, self.closed = art, False

    def close(self) -> None:
        self.closed = True


class Loader:
    """load(artifact) -> FakeBackend, remembering every backend it made."""

    def __init__(self) -> None:
        self.made: list[FakeBackend] = []

    def __call__(self, art):
        self.made.append(FakeBackend(art))
        return self.made[-1]


def speeds(**part_s: float):
    """A timer giving each precision a known time per part (seconds), counting its calls."""

    def time_part(backend) -> float:
        time_part.calls.append(backend.artifact.precision)
        return part_s[backend.artifact.precision]

    time_part.calls = []
    return time_part


def never(_backend) -> float:
    raise AssertionError("the artifacts must not be timed here")


PAIR = [ov("int8", 60.5), ov("fp32", 61.0)]  # INT8 first: the export's primary artifact


# ---------------------------------------------------------------------------------------------------
# the choice


@pytest.mark.parametrize(("int8_s", "fp32_s", "want"), [(0.10, 0.20, "int8"), (0.137, 0.115, "fp32")])
def test_the_fastest_artifact_within_budget_is_chosen_and_the_others_closed(int8_s, fp32_s, want):
    load, timer = Loader(), speeds(int8=int8_s, fp32=fp32_s)
    choice, backend = choose_artifact(manifest_with(PAIR), "openvino", load, timer)
    assert choice.how == "measured" and choice.precision == want
    assert backend.artifact.precision == want and not backend.closed
    assert sorted(timer.calls) == ["fp32", "int8"]
    assert choice.part_s == {"int8": int8_s, "fp32": fp32_s}
    assert [b.closed for b in load.made if b is not backend] == [True]
    assert want in choice.describe() and "timed now" in choice.describe()


def test_an_artifact_over_the_accuracy_budget_is_never_chosen_even_when_faster():
    pair = [ov("int8", 58.0), ov("fp32", 61.0)]  # 3 points below FP32, budget 1
    choice, backend = choose_artifact(manifest_with(pair), "openvino", Loader(), never)
    assert choice.how == "budget" and backend.artifact.precision == "fp32"
    assert "int8" in choice.excluded and "over the budget of 1" in choice.excluded["int8"]


def test_budget_needs_a_recorded_budget_and_a_measured_accuracy():
    m = manifest_with([ov("int8"), ov("fp16", 60.9), ov("fp32")])
    assert within_budget(m, m.artifacts) == {
        "int8": "no measured AP50 recorded for it",
        "fp16": None,
        "fp32": None,
    }
    nobudget = manifest_with(PAIR, max_drop=None)
    assert within_budget(nobudget, nobudget.artifacts)["int8"].startswith(
        "the bundle records no accuracy budget"
    )
    assert within_budget(nobudget, nobudget.artifacts)["fp32"] is None  # the reference


def test_pin_selects_an_artifact_untimed_and_a_missing_pin_names_the_key():
    choice, backend = choose_artifact(manifest_with(PAIR), "openvino", Loader(), never, pin="int8")
    assert choice.how == "pinned" and backend.artifact.precision == "int8"
    with pytest.raises(PinError, match=r"model.artifact: fp16 is pinned .*it has: int8, fp32"):
        choose_artifact(manifest_with(PAIR), "openvino", Loader(), never, pin="fp16")


def test_single_artifact_bundles_run_their_artifact_untimed():
    m = manifest_with([Artifact(backend="onnxruntime", path="model.onnx", precision="fp32"), ov("int8")])
    choice, backend = choose_artifact(m, "openvino", Loader(), never)
    assert choice.how == "only" and backend.artifact.precision == "int8"
    # OpenVINO without an IR runs the ONNX
    m = manifest_with([Artifact(backend="onnxruntime", path="model.onnx", precision="fp32")])
    choice, backend = choose_artifact(m, "openvino", Loader(), never)
    assert choice.how == "only" and backend.artifact.path == "model.onnx"


# ---------------------------------------------------------------------------------------------------
# key and cache


def test_cache_key_changes_with_every_field_it_holds():
    base = ("Intel Xeon 8480+", "avx2 avx512f amx_tile", "openvino", "2026.4.0", "CPU", "ab" * 32)
    keys = {choice_key(*base)}
    for i, other in enumerate(("AMD EPYC", "avx2", "onnxruntime", "2026.5.0", "GPU", "cd" * 32)):
        changed = list(base)
        changed[i] = other
        keys.add(choice_key(*changed))
    assert len(keys) == 7
    assert choice_key(*base) == choice_key(*base)


def test_cpu_identity_reads_model_and_sorted_flags():
    text = "processor : 0\nmodel name : Intel(R) Xeon(R) CPU\nflags : sse2 avx2 fma\n\nprocessor : 1\n"
    assert cpu_identity(text) == ("Intel(R) Xeon(R) CPU", "avx2 fma sse2")


def test_a_cached_choice_is_reused_and_another_key_times_again(tmp_path):
    cache = ChoiceCache(tmp_path / "rtvp-edge" / CACHE_FILE)
    m = manifest_with(PAIR)
    first, _ = choose_artifact(m, "openvino", Loader(), speeds(int8=0.3, fp32=0.1), cache=cache, key="k1")
    assert first.how == "measured" and first.precision == "fp32"
    entry = json.loads(cache.path.read_text())["choices"]["k1"]
    assert entry["precision"] == "fp32" and entry["part_s"] == {"int8": 0.3, "fp32": 0.1}
    again, backend = choose_artifact(m, "openvino", Loader(), never, cache=cache, key="k1")
    assert again.how == "cached" and backend.artifact.precision == "fp32" and again.part_s["fp32"] == 0.1
    other, _ = choose_artifact(m, "openvino", Loader(), speeds(int8=0.1, fp32=0.3), cache=cache, key="k2")
    assert other.how == "measured" and other.precision == "int8"
    assert set(json.loads(cache.path.read_text())["choices"]) == {"k1", "k2"}


def test_a_cached_precision_the_bundle_no_longer_offers_is_timed_again(tmp_path):
    cache = ChoiceCache(tmp_path / CACHE_FILE)
    cache.put("k", {"precision": "fp16"})
    timer = speeds(int8=0.1, fp32=0.3)
    choice, _ = choose_artifact(manifest_with(PAIR), "openvino", Loader(), timer, cache=cache, key="k")
    assert choice.how == "measured" and choice.precision == "int8" and len(timer.calls) == 2


@pytest.mark.parametrize(
    "garbage", ["{not json", "[]", '{"version": 1, "choices": []}', '{"version": 99, "choices": {}}']
)
def test_a_corrupt_cache_is_ignored_with_a_warning_and_rewritten(tmp_path, caplog, garbage):
    cache = ChoiceCache(tmp_path / CACHE_FILE)
    cache.path.write_text(garbage)
    with caplog.at_level(logging.WARNING, logger="rtvp_edge.artifact_choice"):
        choice, _ = choose_artifact(
            manifest_with(PAIR), "openvino", Loader(), speeds(int8=0.1, fp32=0.2), cache=cache, key="k"
        )
    assert choice.how == "measured" and choice.precision == "int8"
    assert any(
        "corrupt, ignored" in r.getMessage() and str(cache.path) in r.getMessage() for r in caplog.records
    )
    assert json.loads(cache.path.read_text())["choices"]["k"]["precision"] == "int8"


# ---------------------------------------------------------------------------------------------------
# real bundles through load_model


def two_artifact_bundle(root: Path, int8_ap50: float = 60.8) -> Path:
    """The toy bundle with a second OpenVINO IR recorded as INT8 (the same graph: the runtime cannot tell,
    and need not, since the choice reads the manifest and the timer) and per-artifact accuracies."""
    make_toy_bundle(root)
    m = load_manifest(root)
    shutil.copy(root / "openvino" / "model.xml", root / "openvino" / "model_int8.xml")
    shutil.copy(root / "openvino" / "model.bin", root / "openvino" / "model_int8.bin")
    fp32 = m.artifact("openvino").model_copy(update={"accuracy": {"AP50": 61.0}})
    int8 = fp32.model_copy(
        update={"path": "openvino/model_int8.xml", "precision": "int8", "accuracy": {"AP50": int8_ap50}}
    )
    acc = AccuracyInfo(
        dataset="toy", images=1, fp32={"AP50": 61.0}, artifact={"AP50": int8_ap50}, max_drop=1.0
    )
    arts = [m.artifact("onnxruntime"), int8, fp32]
    write_manifest(root, m.model_copy(update={"artifacts": arts, "accuracy": acc, "files": {}}))
    return root


def test_load_model_loads_the_chosen_artifact_and_caches_it(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    bundle = two_artifact_bundle(tmp_path / "bundle")
    cfg = load_line_config(line_file(tmp_path, bundle, recorded_line(tmp_path, 1, set())))

    def by_path(backend) -> float:  # INT8 slower here, as on the AVX2 box of issue 13
        return {"openvino/model_int8.xml": 0.137, "openvino/model.xml": 0.115}[backend.artifact.path]

    loaded = load_model(cfg, time_part=by_path)
    try:
        assert loaded.choice.how == "measured" and loaded.backend.artifact.path == "openvino/model.xml"
        assert loaded.capacity.part_s == 0.115  # the timing of the choice, not a second one
    finally:
        loaded.backend.close()
    cached = json.loads((tmp_path / "cache" / "rtvp-edge" / CACHE_FILE).read_text())["choices"]
    assert [e["precision"] for e in cached.values()] == ["fp32"]
    loaded = load_model(cfg, time_part=lambda backend: 0.2)  # the cached choice; timed once, for capacity
    loaded.backend.close()
    assert (
        loaded.choice.how == "cached" and loaded.choice.precision == "fp32" and loaded.capacity.part_s == 0.2
    )


def test_the_pin_in_the_line_file(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    bundle = two_artifact_bundle(tmp_path / "bundle")
    line = line_file(tmp_path, bundle, recorded_line(tmp_path, 1, set()))
    text = line.read_text()
    pinned = text.replace("threads: 1}", "threads: 1, artifact: int8}")
    assert pinned != text
    line.write_text(pinned)
    loaded = load_model(load_line_config(line), time_part=lambda backend: 0.2)
    loaded.backend.close()
    assert loaded.choice.how == "pinned" and loaded.backend.artifact.path == "openvino/model_int8.xml"
    line.write_text(text.replace("threads: 1}", "threads: 1, artifact: fp16}"))
    with pytest.raises(ConfigError, match=r"line.yaml: model.artifact: fp16 is pinned"):
        load_model(load_line_config(line), time_part=never)
    line.write_text(text.replace("threads: 1}", "threads: 1, artifact: int4}"))
    with pytest.raises(ConfigError, match=r"line.yaml:\d+: model.artifact: Input should be 'auto'"):
        load_line_config(line)
    assert cli.main(["check", "--line", str(line)]) == cli.EXIT_CONFIG


def test_an_old_single_artifact_bundle_runs_its_artifact_untimed(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    bundle = make_toy_bundle(tmp_path / "bundle")
    cfg = load_line_config(line_file(tmp_path, bundle, recorded_line(tmp_path, 1, set())))
    timed = []
    loaded = load_model(cfg, time_part=lambda backend: timed.append(backend) or 0.05)
    loaded.backend.close()
    assert loaded.choice.how == "only" and loaded.choice.precision == "fp32"
    assert len(timed) == 1  # the capacity self-test only
    assert not (tmp_path / "cache").exists()  # nothing to choose, nothing cached


# ---------------------------------------------------------------------------------------------------
# capacity


class ClockedBackend:
    """A backend that takes ``seconds`` of a fake clock per inference."""

    def __init__(self, clock: list[float], seconds: float) -> None:
        self.clock, self.seconds, self.batches = clock, seconds, []

    def infer(self, batch: np.ndarray, embeddings=None):
        self.batches.append(batch.shape)
        self.clock[0] += self.seconds


def test_part_timer_times_one_batch_of_all_views_on_an_injected_clock(tmp_path):
    bundle = make_toy_bundle(tmp_path / "bundle")
    now = [0.0]
    timer = part_timer(
        bundle, load_manifest(bundle), views=6, embeddings=None, warmup=1, runs=3, clock=lambda: now[0]
    )
    slow = ClockedBackend(now, 0.5)
    assert timer(slow) == 0.5
    assert slow.batches == [(6, 3, 64, 64)] * 4  # one warm-up + three timed, batch = views per part


def test_capacity_against_the_line_rate():
    c = Capacity(0.5, 6, 2.5, "line.expected_rate_hz")
    assert c.parts_per_s == 2.0 and c.overloaded
    assert "2.00 parts/s" in c.describe() and "line rate 2.5 parts/s (line.expected_rate_hz)" in c.describe()
    assert paced_rate(c) == pytest.approx(1.8)
    fast = Capacity(0.25, 6, 2.0, "sim.line_rate_hz")
    assert not fast.overloaded and paced_rate(fast) is None
    assert not Capacity(10.0, 6).overloaded and "line rate unknown" in Capacity(10.0, 6).describe()


@pytest.mark.parametrize(("rate", "warns"), [(5.0, True), (1.0, False)])
def test_check_line_prints_capacity_and_warns_when_the_line_is_faster(
    tmp_path, monkeypatch, capsys, rate, warns
):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    bundle = make_toy_bundle(tmp_path / "bundle")
    line = line_file(tmp_path, bundle, recorded_line(tmp_path, 1, set()))
    line.write_text(line.read_text().replace("station: st}", f"station: st, expected_rate_hz: {rate}}}"))
    # a slow box: 0.5 s per part, whatever this machine really does
    monkeypatch.setattr("rtvp_edge.pipeline.part_timer", lambda *a, **k: lambda backend: 0.5)
    assert cli.main(["check", "--line", str(line)]) == cli.EXIT_OK
    out = capsys.readouterr().out
    assert (
        f"capacity: this box sustains 2.00 parts/s (500 ms per part of 3 views), line rate {rate:g} parts/s (line.expected_rate_hz)"
        in out
    )
    assert ("WARNING: the line is faster than this box" in out) is warns
    assert "artifact fp32 (openvino openvino/model.xml): the bundle's only artifact" in out


SIM_LINE = """\
line: {{site: s, line: l, station: st}}
cameras:
{cameras}
sim: {{line_rate_hz: 2.0, n_containers: 2}}
assembly: {{views_per_part: 6, timeout_s: 5.0}}
model: {{bundle: {bundle}, threads: 1}}
evidence: {{enabled: false}}
"""


def sim_line(tmp_path: Path, bundle: Path) -> Path:
    cams = "\n".join(
        f"  - {{id: C{v}, source: sim, view: {v}, bank: {'left' if v < 3 else 'right'}, "
        "resolution: {width: 96, height: 80}}"
        for v in range(6)
    )
    p = tmp_path / "sim.yaml"
    p.write_text(SIM_LINE.format(cameras=cams, bundle=bundle))
    return p


def test_a_simulated_line_is_paced_to_what_a_slow_box_sustains_and_says_so(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    cfg = load_line_config(sim_line(tmp_path, make_toy_bundle(tmp_path / "bundle")))
    said = []
    p = build_pipeline(cfg, use_mqtt=False, status_sinks=[lambda *s: said.append(s)], time_part=lambda b: 1.0)
    try:
        assert p.capacity.parts_per_s == 1.0 and p.capacity.line_rate_hz == 2.0
        assert p.paced_rate_hz == pytest.approx(0.9)
        assert p.rig.line_rate_hz == pytest.approx(0.9)  # the rig itself runs slower
        assert cfg.sim.line_rate_hz == 2.0  # the line file is not changed
        p.start(max_parts=1)
        p.request_stop()
        p.wait(20)
    finally:
        p.close()
    paced = [s for s in said if s[0] == "capacity"]
    assert paced and paced[0][1] == "PACED" and "paced to 0.90 parts/s" in paced[0][2]
    snap = p.snapshot()
    assert snap["capacity"]["paced_rate_hz"] == pytest.approx(0.9) and snap["artifact"]["how"] == "only"


def test_a_fast_box_leaves_the_simulated_line_at_its_rate(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    cfg = load_line_config(sim_line(tmp_path, make_toy_bundle(tmp_path / "bundle")))
    p = build_pipeline(cfg, use_mqtt=False, time_part=lambda b: 0.1)
    try:
        assert p.paced_rate_hz is None and p.rig.line_rate_hz == 2.0
        assert p.capacity_state()[0] == "OK"
    finally:
        p.close()


def test_a_real_line_faster_than_the_box_keeps_its_rate_and_names_the_reason_for_drops(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    bundle = make_toy_bundle(tmp_path / "bundle")
    line = line_file(tmp_path, bundle, recorded_line(tmp_path, 1, set()))
    line.write_text(line.read_text().replace("station: st}", "station: st, expected_rate_hz: 4}"))
    p = build_pipeline(load_line_config(line), use_mqtt=False, time_part=lambda b: 0.5)
    try:
        state, msg = p.capacity_state()
        assert state == "OVERLOADED" and p.paced_rate_hz is None and "frames will be dropped" in msg
        assert (
            "line (4 parts/s, line.expected_rate_hz) is faster than this box sustains (2.00"
            in p.drop_reason()
        )
    finally:
        p.close()


def test_the_online_status_carries_the_choice_and_the_capacity_and_validates(tmp_path, monkeypatch):
    from rtvp_edge.messaging.events import StationIds, status_payload, validate_payload

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    cfg = load_line_config(sim_line(tmp_path, make_toy_bundle(tmp_path / "bundle")))

    class Publisher:  # what build_pipeline hands the status fields to (EventPublisher.status_extra)
        status_extra: dict = {}

        def publish_verdict(self, verdict):
            pass

    pub = Publisher()
    p = build_pipeline(cfg, publisher=pub, time_part=lambda b: 1.0)
    p.close = lambda *a: None  # the fake publisher has nothing to stop
    p.inference.backend.close()
    payload = status_payload(
        "online", StationIds("s", "l", "st"), None, "c", "connected", extra=pub.status_extra
    )
    validate_payload(payload)
    assert payload["artifact"]["how"] == "only" and payload["capacity"]["state"] == "PACED"
    assert payload["capacity"]["paced_rate_hz"] == pytest.approx(0.9)
