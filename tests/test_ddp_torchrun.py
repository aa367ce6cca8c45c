"""The documented multi-node launch (examples/multinode/torchrun_c10d.sh: torchrun + c10d rendezvous) runs the
real ``rtvp-train`` command as 2 gloo processes on this CPU: rank 0 alone writes the run, the checkpoint
records the world size, and the sharded evaluation reports metrics."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from rtvp_edge.rig import RigConfig
from training.checkpoint import load_checkpoint
from training.data.generate import generate_dataset

REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_torchrun_c10d_two_processes(tmp_path):
    roots = generate_dataset(tmp_path / "data", containers=3, protocol="closed",
                             config=RigConfig(seed=1, defect_free_share=0.0, defect_size_scale=3.0), progress=False)  # fmt: skip
    cfg = tmp_path / "ddp.yaml"
    cfg.write_text(yaml.safe_dump({
        "name": "ddp", "device": "cpu", "threads": 1,
        # rvp off: its auxiliary CIoU loss has NaN gradients on padded boxes (model issue, see docs/training.md)
        "model": {"variant": "rtvpnet_tiny", "img_size": 128, "sam_img_size": 64, "rvp": False},
        "data": {"root": str(roots["closed"]), "batch_size": 4, "workers": 0, "max_images": 8},
        "schedule": {"epochs": 1, "warmup_epochs": 0.5},
        "text": {"encoder": "random:512", "cache_dir": str(tmp_path / "cache")},
        "output": {"dir": str(tmp_path / "runs"), "progress": False, "plots": False},
    }))  # fmt: skip
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}", OMP_NUM_THREADS="1",
               RTVP_RUN_ID="test-ddp", PYTHONPATH=str(REPO))  # fmt: skip
    script = REPO / "examples" / "multinode" / "torchrun_c10d.sh"
    proc = subprocess.run(["bash", str(script), f"127.0.0.1:{_free_port()}", "1", "2", str(cfg)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run = tmp_path / "runs" / "ddp"
    ckpt = load_checkpoint(run / "last.pt")
    assert ckpt["trainer"]["world_size"] == 2 and ckpt["provenance"]["world_size"] == 2
    assert ckpt["trainer"]["step"] == 2  # 8 images / global batch 4
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and "val/AP50" in rows[0]  # one writer, sharded evaluation gathered
    assert proc.stdout.count("done:") == 1  # rank 0 alone reports
