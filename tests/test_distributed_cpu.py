"""Two CPU processes (gloo) train and evaluate through tools/train_net.py ``--num-gpus 2``."""

import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import MINI_TOY_OPTS, REPO, load_script
from detectron2.engine import default_argument_parser

# no normalisation: no running statistics, which DDP (broadcast_buffers=False, as Detectron2) would leave
# different on each rank, so both ranks hold the very model rank 0 saves
TOY = MINI_TOY_OPTS + ["MODEL.DEVICE", "cpu", "SOLVER.MAX_ITER", "3", "MODEL.TINY.NORM", ""]


def test_two_cpu_ranks_train_and_gather_the_same_miou_as_one(tmp_path):
    """Detectron2's own constructor fails here (DDP device_ids on a CPU module); the evaluators'
    states of the two ranks are gathered into the same mIoU as one process on the same model."""
    cfg_file = str(REPO / "configs" / "cam_toy.yaml")
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, str(REPO / "tools" / "train_net.py"), "--num-gpus", "2",
           "--config-file", cfg_file, *TOY, "OUTPUT_DIR", str(out)]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = (out / "log.txt").read_text()
    assert "World size: 2" in log
    rows = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]
    two = [r for r in rows if "cam/mIoU" in r][-1]

    args = default_argument_parser().parse_args([
        "--config-file", cfg_file, "--eval-only", *TOY, "OUTPUT_DIR", str(tmp_path / "one"),
        "MODEL.WEIGHTS", str(out / "model_final.pth"),
    ])  # fmt: skip
    one = load_script("tools/train_net.py").main(args)
    assert two["cam/mIoU"] == pytest.approx(one["cam"]["mIoU"], abs=1e-9)
    assert two["sem_seg/mIoU"] == pytest.approx(one["sem_seg"]["mIoU"], abs=1e-9)
    assert torch.load(out / "model_final.pth", weights_only=False)["iteration"] == 2


@pytest.mark.parametrize("fails", [False, True])
def test_launched_function_closes_its_process_group(tmp_path, fails):
    """gloo can abort a process that exits with its group open: the launched body destroys it,
    after the function returns and when it raises (the error still reaches the launcher)."""
    import torch.distributed as dist

    from wsss_d2.engine.launch import _run_then_close

    dist.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1
    )
    seen = []

    def body(x):
        seen.append(dist.is_initialized())
        if fails:
            raise RuntimeError("body failed")
        return x + 1

    try:
        if fails:
            with pytest.raises(RuntimeError, match="body failed"):
                _run_then_close(body, 1)
        else:
            assert _run_then_close(body, 1) == 2
        assert seen == [True] and not dist.is_initialized()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def test_spawned_worker_ends_at_once_after_the_close(tmp_path, monkeypatch):
    """A spawned rank ends with ``os._exit(0)`` once its group is destroyed and its logs flushed
    (the teardown with a DDP model's gloo threads alive can abort it); a failing body raises
    before any exit, and one process (no spawn) runs the function without exiting."""
    import logging

    import torch.distributed as dist

    from wsss_d2.engine import launch as launch_mod

    class Exited(Exception):
        pass

    events = []

    def fake_exit(code):
        events.append(("exit", code, dist.is_initialized()))
        raise Exited

    monkeypatch.setattr(launch_mod.os, "_exit", fake_exit)
    monkeypatch.setattr(logging, "shutdown", lambda: events.append(("logs flushed",)))
    dist.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1
    )
    try:
        with pytest.raises(Exited):
            launch_mod._run_close_and_exit(lambda x: events.append(("body", x)), 7)
        assert events == [("body", 7), ("logs flushed",), ("exit", 0, False)]
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    events.clear()
    with pytest.raises(RuntimeError, match="body failed"):
        launch_mod._run_close_and_exit(lambda: (_ for _ in ()).throw(RuntimeError("body failed")))
    assert events == []
    launch_mod.launch(lambda x: events.append(("body", x)), 1, args=(3,))
    assert events == [("body", 3)]  # in this process, no exit


def test_pipeline_stage_on_two_ranks_reports_rank_zeros_results(tmp_path):
    """``run_pipeline --num-gpus 2``: the stage's ranks are spawned processes, so the results
    come back through the stage folder (the stage is chosen by them: ``round_from`` lists)."""
    import yaml

    spec = {"OUTPUT_DIR": str(tmp_path / "out"), "STAGES": [
        {"name": "cam", "kind": "train", "config": "configs/cam_toy.yaml", "opts": TOY}]}  # fmt: skip
    (tmp_path / "pipe.yaml").write_text(yaml.safe_dump(spec))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, str(REPO / "tools" / "run_pipeline.py"), "--config-file",
           str(tmp_path / "pipe.yaml"), "--num-gpus", "2", "--no-report"]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    done = json.loads((tmp_path / "out" / "cam" / "stage_done.json").read_text())
    assert "World size: 2" in (tmp_path / "out" / "cam" / "log.txt").read_text()
    assert 0 < done["results"]["cam/mIoU"] <= 100
