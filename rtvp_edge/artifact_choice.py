"""Which of a bundle's artifacts runs on this machine, and how many parts per second it sustains here.

A bundle may hold several artifacts for one backend (OpenVINO INT8 and FP32, FP16 where the hardware has
it), each with its accuracy measured by ``rtvp-export`` (``Artifact.accuracy``) against the FP32 source
(``accuracy.fp32``) and an accuracy budget (``accuracy.max_drop`` points of ``accuracy.metric``). Which one is
fastest depends on the CPU: INT8 is not faster than FP32 on every CPU (no VNNI/AMX). So at the first start on
a machine the runtime:

1. lists the candidates the backend can run (``candidates``);
2. keeps those within the budget (``within_budget``; FP32 is the reference and always within);
3. times each on this CPU (a few warm inferences of one part: the golden images, batch = views per part);
4. uses the fastest, and caches the choice in a small JSON file (``ChoiceCache``, default
   ``$XDG_CACHE_HOME/rtvp-edge/artifact-choice.json``) keyed by CPU model, CPU flags, backend, backend
   version, device and bundle hash (``choice_key``), so later starts skip step 3.

A line file can pin one (``model.artifact: int8|fp32|fp16|...``; ``auto`` is the above). A bundle with one
artifact per backend (every bundle written before this) runs that one, untimed.

The same timing gives the box's capacity (``Capacity``): parts/s this box sustains with this bundle, shown
next to the line's rate (``line_rate``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from rtvp_edge.bundle import Artifact, BundleError, BundleManifest, read_verified
from rtvp_edge.preprocess import preprocess

log = logging.getLogger(__name__)

CACHE_FILE = "artifact-choice.json"
CACHE_VERSION = 1

# time_part(backend) -> seconds per part (one batch of views_per_part views); tests inject their own
PartTimer = Callable[[Any], float]
# load(artifact) -> a loaded backend running that artifact (the pipeline's ``load_backend``, bound)
ArtifactLoader = Callable[[Artifact | None], Any]


def candidates(manifest: BundleManifest, backend: str) -> list[Artifact]:
    """The artifacts ``backend`` can run, the export's primary one first. OpenVINO runs its IRs, or the
    ONNX when the bundle ships none; ONNX Runtime its ONNX graphs; TensorRT its engine (builds one from the
    ONNX when the bundle has none: then the list is empty and the backend decides)."""
    own = [a for a in manifest.artifacts if a.backend == backend]
    if not own and backend == "openvino":
        own = [a for a in manifest.artifacts if a.backend == "onnxruntime"][:1]
    return own


def within_budget(manifest: BundleManifest, arts: Sequence[Artifact]) -> dict[str, str | None]:
    """For each artifact (by precision), None when it is within the bundle's accuracy budget, else why not.

    FP32 artifacts are the reference and always within. Any other artifact needs a recorded accuracy
    (``Artifact.accuracy[metric]``) no more than ``accuracy.max_drop`` below ``accuracy.fp32[metric]``; a
    bundle without a budget or an artifact without a measured accuracy keeps only FP32 in the running
    (a pin still selects any).
    """
    acc = manifest.accuracy
    out: dict[str, str | None] = {}
    for a in arts:
        if a.precision == "fp32":
            out[a.precision] = None
            continue
        if acc is None or acc.max_drop is None or acc.metric not in acc.fp32:
            out[a.precision] = "the bundle records no accuracy budget (accuracy.max_drop)"
            continue
        if acc.metric not in a.accuracy:
            out[a.precision] = f"no measured {acc.metric} recorded for it"
            continue
        drop = acc.fp32[acc.metric] - a.accuracy[acc.metric]
        out[a.precision] = (
            None
            if drop <= acc.max_drop + 1e-9
            else f"{acc.metric} {drop:.2f} points below FP32, over the budget of {acc.max_drop:g}"
        )
    return out


# ---------------------------------------------------------------------------------------------------
# The machine, the key, the cache


def cpu_identity(cpuinfo: str | None = None) -> tuple[str, str]:
    """(CPU model name, its flags joined by spaces) from ``/proc/cpuinfo`` (``cpuinfo``: its text, for
    tests); other systems: ``platform.processor()`` and no flags."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
        except OSError:
            cpuinfo = ""
    model = flags = ""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "cpu model", "hardware") and not model:
            model = value.strip()
        elif key in ("flags", "features") and not flags:
            flags = " ".join(sorted(value.split()))
    return model or platform.processor() or platform.machine(), flags


def backend_version(backend: str) -> str:
    """The installed version of the runtime behind ``backend`` ("unknown" when it cannot be told)."""
    module = {"openvino": "openvino", "onnxruntime": "onnxruntime", "tensorrt": "tensorrt"}.get(backend)
    if module is None:
        return "unknown"
    try:
        from importlib.metadata import version

        return version(module)
    except Exception:  # noqa: BLE001 - a missing distribution only weakens the key
        return "unknown"


def choice_key(
    cpu_model: str, cpu_flags: str, backend: str, version: str, device: str, bundle_sha256: str
) -> str:
    """The cache key of one machine + runtime + bundle: sha256 of the fields, so a new CPU, a new backend
    version or a re-exported bundle times the artifacts again."""
    fields = {
        "cpu_model": cpu_model,
        "cpu_flags": cpu_flags,
        "backend": backend,
        "backend_version": version,
        "device": device,
        "bundle_sha256": bundle_sha256,
    }
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/rtvp-edge`` (``~/.cache/rtvp-edge`` when unset)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "rtvp-edge"


class ChoiceCache:
    """The artifact choices made on this machine: ``{"version": 1, "choices": {key: entry}}`` in one small
    JSON file. A file that cannot be read or parsed is ignored with a warning (and replaced on the next
    save); a failing save only warns: the choice is then timed again at the next start."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    def _read(self) -> dict[str, dict]:
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return {}
        except (OSError, UnicodeDecodeError) as e:
            log.warning("artifact choice cache %s unreadable, ignored: %s", self.path, e)
            return {}
        try:
            data = json.loads(text)
            if not isinstance(data, dict) or data.get("version") != CACHE_VERSION:
                raise ValueError(f"not a version {CACHE_VERSION} cache")
            choices = data["choices"]
            if not isinstance(choices, dict) or not all(isinstance(v, dict) for v in choices.values()):
                raise ValueError("'choices' is not a mapping of entries")
        except (ValueError, KeyError) as e:
            log.warning(
                "artifact choice cache %s is corrupt, ignored (it will be rewritten): %s", self.path, e
            )
            return {}
        return choices

    def get(self, key: str) -> dict | None:
        return self._read().get(key)

    def put(self, key: str, entry: dict) -> None:
        choices = self._read()
        choices[key] = entry
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps({"version": CACHE_VERSION, "choices": choices}, indent=2) + "\n")
            os.replace(tmp, self.path)
        except OSError as e:
            log.warning("artifact choice not cached in %s: %s", self.path, e)


# ---------------------------------------------------------------------------------------------------
# Timing one part


def part_batch(bundle_dir: str | Path, manifest: BundleManifest, views: int) -> list[np.ndarray]:
    """``views`` camera images standing for one part: the bundle's golden images, repeated (a grey image
    of the model's input size when the bundle has none)."""
    images = []
    for g in dict.fromkeys(g.image for g in manifest.golden):
        data = read_verified(bundle_dir, manifest, g, "golden image")
        img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        if img is not None:
            images.append(img)
    if not images:
        h, w = manifest.preprocess.input_size
        images = [np.full((h, w, 3), 128, np.uint8)]
    return [images[i % len(images)] for i in range(views)]


def part_timer(
    bundle_dir: str | Path,
    manifest: BundleManifest,
    views: int,
    embeddings: np.ndarray | None,
    warmup: int = 1,
    runs: int = 3,
    clock: Callable[[], float] = time.perf_counter,
) -> PartTimer:
    """A ``PartTimer``: seconds per part (preprocess + inference of ``views`` images as one batch), the
    median of ``runs`` after ``warmup`` untimed runs."""
    images = part_batch(bundle_dir, manifest, views)
    spec = manifest.preprocess.spec()

    def time_part(backend) -> float:
        times = []
        for i in range(warmup + runs):
            t0 = clock()
            batch, _ = preprocess(images, spec)  # (V, 3, H, W)
            backend.infer(batch, embeddings)
            if i >= warmup:
                times.append(clock() - t0)
        return statistics.median(times)

    return time_part


# ---------------------------------------------------------------------------------------------------
# The choice


class PinError(BundleError):
    """``model.artifact`` pins a precision the bundle has no artifact of for this backend."""


@dataclass
class ArtifactChoice:
    """The artifact a line runs and why.

    Attributes:
        artifact: the artifact (None: the backend builds its own, e.g. TensorRT from the ONNX).
        how: ``only`` (one candidate), ``pinned`` (model.artifact), ``budget`` (one candidate within the
            accuracy budget), ``cached`` (timed at an earlier start on this machine), ``measured`` (timed now).
        part_s: seconds per part of each timed candidate, by precision (measured now or cached).
        excluded: candidates left out by the accuracy budget, by precision, with the reason.
        key: the cache key (``choice_key``), when the choice was cached or timed.
    """

    artifact: Artifact | None
    how: str
    part_s: dict[str, float] = field(default_factory=dict)
    excluded: dict[str, str] = field(default_factory=dict)
    key: str | None = None

    @property
    def precision(self) -> str | None:
        return None if self.artifact is None else self.artifact.precision

    def describe(self) -> str:
        """One line for the log, ``rtvp-edge check`` and the status event."""
        if self.artifact is None:
            return "artifact: built by the backend"
        what = f"{self.artifact.precision} ({self.artifact.backend} {self.artifact.path})"
        why = {
            "only": "the bundle's only artifact for this backend",
            "pinned": "pinned by model.artifact",
            "budget": "the only one within the accuracy budget",
            "cached": "fastest on this machine (cached choice)",
            "measured": "fastest on this machine (timed now)",
        }[self.how]
        parts = [f"artifact {what}: {why}"]
        if self.part_s:
            parts.append(
                "timed "
                + ", ".join(
                    f"{p} {s * 1e3:.0f} ms/part" for p, s in sorted(self.part_s.items(), key=lambda x: x[1])
                )
            )
        if self.excluded:
            parts.append("excluded " + "; ".join(f"{p}: {r}" for p, r in self.excluded.items()))
        return "; ".join(parts)

    def as_dict(self) -> dict[str, Any]:
        """For the status and metrics events."""
        return {
            "precision": self.precision,
            "path": None if self.artifact is None else self.artifact.path,
            "how": self.how,
            "part_ms": {p: round(s * 1e3, 1) for p, s in self.part_s.items()},
            "excluded": dict(self.excluded),
        }


def choose_artifact(
    manifest: BundleManifest,
    backend: str,
    load: ArtifactLoader,
    time_part: PartTimer,
    pin: str = "auto",
    cache: ChoiceCache | None = None,
    key: str | None = None,
) -> tuple[ArtifactChoice, Any]:
    """Choose the artifact to run and load it.

    Args:
        manifest: the verified bundle's manifest.
        backend: the backend name from the line file.
        load: loads a backend running the given artifact (None: the backend's default).
        time_part: seconds per part of a loaded backend (``part_timer``; tests inject known speeds).
        pin: ``auto`` or a precision the line file pins (``model.artifact``).
        cache: where choices of earlier starts are kept (None: no cache, time every start).
        key: this machine's cache key (``choice_key``); needed with ``cache``.
    Returns:
        (the choice, the loaded backend running it). Backends loaded only to be timed are closed.
    Raises:
        PinError: the pinned precision is not in the bundle for this backend (the message names
            ``model.artifact`` and what the bundle has).
        BundleError: a backend cannot load an artifact.
    """
    arts = candidates(manifest, backend)
    if pin != "auto":
        match = [a for a in arts if a.precision == pin]
        if not match:
            have = ", ".join(a.precision for a in arts) or "none"
            raise PinError(
                f"model.artifact: {pin} is pinned but the bundle has no {pin} artifact for {backend} "
                f"(it has: {have}); pin one of those or use auto"
            )
        return ArtifactChoice(match[0], "pinned"), load(match[0])
    if len(arts) <= 1:
        art = arts[0] if arts else None
        return ArtifactChoice(art, "only"), load(art)
    verdicts = within_budget(manifest, arts)
    excluded = {p: why for p, why in verdicts.items() if why is not None}
    kept = [a for a in arts if verdicts[a.precision] is None]
    for p, why in excluded.items():
        log.info("artifact %s not a candidate: %s", p, why)
    if not kept:  # nothing provably within budget: the export's primary artifact, as before
        return ArtifactChoice(arts[0], "only", excluded=excluded), load(arts[0])
    if len(kept) == 1:
        return ArtifactChoice(kept[0], "budget", excluded=excluded), load(kept[0])
    if cache is not None and key is not None:
        entry = cache.get(key)
        precision = entry.get("precision") if entry else None
        hit = [a for a in kept if a.precision == precision]
        if hit:
            part_s = entry.get("part_s") if isinstance(entry.get("part_s"), dict) else {}
            return ArtifactChoice(hit[0], "cached", dict(part_s), excluded, key), load(hit[0])
        if entry is not None:
            log.warning(
                "cached artifact choice %r is not a candidate of this bundle: timing again", precision
            )
    timed: dict[str, float] = {}
    best = best_backend = None
    for art in kept:
        be = load(art)
        try:
            timed[art.precision] = float(time_part(be))
        except BaseException:
            be.close()
            if best_backend is not None:
                best_backend.close()
            raise
        if best is None or timed[art.precision] < timed[best.precision]:
            if best_backend is not None:
                best_backend.close()
            best, best_backend = art, be
        else:
            be.close()
    choice = ArtifactChoice(best, "measured", timed, excluded, key)
    if cache is not None and key is not None:
        cache.put(
            key,
            {
                "precision": best.precision,
                "path": best.path,
                "part_s": timed,
                "chosen_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            },
        )
    return choice, best_backend


# ---------------------------------------------------------------------------------------------------
# Capacity


@dataclass(frozen=True)
class Capacity:
    """What this box sustains with this bundle next to what the line asks.

    Attributes:
        part_s: seconds per part (one batch of ``views`` views) measured on this box.
        views: views per part (the batch).
        line_rate_hz: parts per second the line is configured for (None: not known).
        rate_source: the line-file key ``line_rate_hz`` came from (``sim.line_rate_hz``,
            ``line.expected_rate_hz``).
    """

    part_s: float
    views: int
    line_rate_hz: float | None = None
    rate_source: str | None = None

    @property
    def parts_per_s(self) -> float:
        return 1.0 / self.part_s if self.part_s > 0 else float("inf")

    @property
    def overloaded(self) -> bool:
        """The line is faster than this box."""
        return self.line_rate_hz is not None and self.line_rate_hz > self.parts_per_s

    def describe(self) -> str:
        have = (
            f"this box sustains {self.parts_per_s:.2f} parts/s "
            f"({self.part_s * 1e3:.0f} ms per part of {self.views} views)"
        )
        if self.line_rate_hz is None:
            if self.rate_source is not None:
                return have + f"; no line rate to check ({self.rate_source})"
            return have + "; line rate unknown (set line.expected_rate_hz to have it checked)"
        return have + f", line rate {self.line_rate_hz:g} parts/s ({self.rate_source})"

    def as_dict(self) -> dict[str, Any]:
        return {
            "parts_per_s": round(self.parts_per_s, 3),
            "part_ms": round(self.part_s * 1e3, 1),
            "views": self.views,
            "line_rate_hz": self.line_rate_hz,
            "rate_source": self.rate_source,
            "overloaded": self.overloaded,
        }


def paced_rate(capacity: Capacity, headroom: float = 0.9) -> float | None:
    """The rate to pace a simulated line to when it is faster than the box (``headroom`` of what the box
    sustains, so queues drain); None when the line is not faster."""
    if not capacity.overloaded:
        return None
    return capacity.parts_per_s * headroom
