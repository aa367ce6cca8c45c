"""Two-process DDP (gloo, CPU) gives the same training as one process with the same global batch."""

from __future__ import annotations

import json
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from tests.test_train_helpers import (
    DoubleConfig,
    HashTextEncoder,
    build_double,
    double_overrides,
    load_shapes_split,
    make_shapes_dataset,
)
from training.checkpoint import load_checkpoint
from training.config import load_config
from training.train import run_training


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, overrides: list[str]) -> None:
    # What torchrun would set for each process.
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
    )
    torch.set_num_threads(1)
    cfg = load_config(None, overrides, model_config_cls=DoubleConfig)
    run_training(
        cfg, build_model=build_double, load_split=load_shapes_split, build_text_encoder=HashTextEncoder
    )


def test_two_process_ddp_matches_one_process(tmp_path):
    root = make_shapes_dataset(tmp_path / "shapes", n_train=32, n_val=8)
    extra = {"schedule.epochs": 2, "data.hsv": "[0.015,0.5,0.3]", "data.scale_jitter": 0.1}
    one = run_training(
        load_config(
            None, double_overrides(root, tmp_path, name="one", **extra), model_config_cls=DoubleConfig
        ),
        build_model=build_double,
        load_split=load_shapes_split,
        build_text_encoder=HashTextEncoder,
    )
    two_overrides = double_overrides(root, tmp_path, name="two", **extra)
    ctx = mp.get_context("spawn")
    port = _free_port()
    procs = [ctx.Process(target=_worker, args=(r, 2, port, two_overrides)) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
    assert [p.exitcode for p in procs] == [0, 0]
    two = tmp_path / "two"
    a, b = load_checkpoint(one / "last.pt"), load_checkpoint(two / "last.pt")
    assert b["trainer"]["world_size"] == 2 and a["trainer"]["step"] == b["trainer"]["step"] == 8
    # each process's random state is kept for an exact DDP resume; the processes draw differently
    assert len(b["rng_per_rank"]) == 2 and "rng_per_rank" not in a
    assert not torch.equal(b["rng_per_rank"][0]["torch"], b["rng_per_rank"][1]["torch"])
    for key, va in a["model"].items():
        torch.testing.assert_close(b["model"][key], va, rtol=1e-4, atol=1e-5, msg=key)
    rows_a = [json.loads(x) for x in (one / "metrics.jsonl").read_text().splitlines()]
    rows_b = [json.loads(x) for x in (two / "metrics.jsonl").read_text().splitlines()]
    for ra, rb in zip(rows_a, rows_b, strict=True):
        assert rb["train/loss"] == pytest.approx(ra["train/loss"], rel=1e-4)
        assert rb["val/AP50"] == pytest.approx(ra["val/AP50"], abs=1e-3)  # sharded eval, gathered detections
    # The weights did move: equality is not the trivial "nothing trained".
    torch.manual_seed(0)  # the run's seed: the same initial weights as both runs started from
    init = build_double(DoubleConfig()).state_dict()
    assert any(not torch.allclose(init[k], a["model"][k]) for k in init)
