"""Camera sources and the per-camera worker threads.

``build_sources(config)`` turns the line file's ``cameras:`` into ``CameraSource`` objects: OpenCV captures
(USB index, RTSP/HTTP URL, GStreamer string), folder/video replay, or the simulated rig.
"""

from __future__ import annotations

from rtvp_edge.config import CameraConfig, LineConfig, SimConfig
from rtvp_edge.messages import CameraSource
from rtvp_edge.sources.camera import CameraState, CameraWorker, CorruptFrame, FrameBuffer
from rtvp_edge.sources.opencv import OpenCVCamera
from rtvp_edge.sources.replay import FolderReplay, VideoReplay


def build_sim_rig(sim: SimConfig, cameras: list[CameraConfig]):
    """The simulated rotating rig for the ``source: sim`` cameras, ordered by view index."""
    from rtvp_edge.rig import RigConfig, SimulatedRig

    kwargs: dict = {"seed": sim.seed}
    if sim.defect_free_share is not None:
        kwargs["defect_free_share"] = sim.defect_free_share
    if sim.defect_size_scale is not None:
        kwargs["defect_size_scale"] = sim.defect_size_scale
    sizes = {(c.resolution.height, c.resolution.width) for c in cameras if c.resolution}
    if len(sizes) > 1:
        raise ValueError(f"sim cameras must share one resolution, got {sorted(sizes)}")
    if sizes:
        kwargs["image_size"] = sizes.pop()
    cams = sorted(cameras, key=lambda c: c.view)
    return SimulatedRig(
        RigConfig(**kwargs),
        line_rate_hz=sim.line_rate_hz,
        camera_ids=tuple(c.id for c in cams),
        views=tuple(c.view for c in cams),
        n_containers=sim.n_containers,
        realtime=sim.realtime,
    )


def build_sources(config: LineConfig) -> tuple[dict[str, CameraSource], object | None]:
    """Build one source per configured camera.

    Returns:
        {camera id: source}, and the ``SimulatedRig`` when any camera is ``sim`` (else None), so tests
        and the benchmark can reach it (e.g. ``rig.fail_camera``).
    """
    sources: dict[str, CameraSource] = {}
    sims = [c for c in config.cameras if c.kind == "sim"]
    rig = None
    if sims:
        rig = build_sim_rig(config.sim, sims)
        for src in rig.cameras():
            sources[src.camera_id] = src
    for c in config.cameras:
        kind = c.kind
        res = (c.resolution.height, c.resolution.width) if c.resolution else None
        if kind == "sim":
            continue
        if kind in ("usb", "url", "gstreamer"):
            sources[c.id] = OpenCVCamera(c.id, c.view, c.source, kind, res)
        elif kind == "folder":
            sources[c.id] = FolderReplay(c.id, c.view, c.source, c.replay_fps, c.loop)
        else:
            sources[c.id] = VideoReplay(c.id, c.view, c.source, c.replay_fps, c.loop)
    return sources, rig


__all__ = [
    "CameraState",
    "CameraWorker",
    "CorruptFrame",
    "FolderReplay",
    "FrameBuffer",
    "OpenCVCamera",
    "VideoReplay",
    "build_sources",
]
