"""benchmarks/gpu_check.py (the MODEL_ZOO.md speed table): its CPU-safe parts."""

import torch
from conftest import MINI_TOY_OPTS, load_script


def test_gpu_check_runs_on_cpu_with_tiny_settings(tmp_path):
    bench = load_script("benchmarks/gpu_check.py")
    rows = bench.main([
        "--device", "cpu", "--configs", "configs/cam_toy.yaml", "configs/cian_toy.yaml",
        "--batch", "2", "--crop", "32", "--iters", "1", "--warmup", "1", "--cam-images", "2",
        "--infer-size", "48", "32",
        "--out", str(tmp_path / "t.md"), *MINI_TOY_OPTS, "MODEL.SEG_HEAD.CONV_DIMS", "16",
    ])  # fmt: skip
    assert [r[0] for r in rows] == ["cam_toy.yaml", "cian_toy.yaml"]
    for r in rows:
        assert r[1] == "2 x 32" and float(r[2]) > 0 and float(r[6]) > 0
        if not torch.cuda.is_available():
            assert r[3] == r[5] == r[7] == "n/a" and r[4] == "n/a"  # no AMP, no CUDA memory
    assert "| cam_toy.yaml" in (tmp_path / "t.md").read_text()


def test_synthetic_batches_are_valid_training_inputs():
    bench = load_script("benchmarks/gpu_check.py")
    cfg = bench.load_cfg("configs/deeplabv2_r101_voc.yaml", "cpu")
    batch = bench.synthetic_batch(cfg, 3, 16, with_labels=True)
    for x in batch:
        assert x["image"].shape == (3, 16, 16) and x["tags"][0] == 1  # every image shares class 1
        tags = {0, 255} | {int(i) + 1 for i in torch.nonzero(x["tags"]).flatten()}
        assert set(x["sem_seg"].unique().tolist()) <= tags
