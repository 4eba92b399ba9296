"""Mixed precision: every meta-architecture trains under autocast; the AMP trainer; CAM inference.

CUDA is not available in CI, so the training steps run under CPU autocast (bfloat16): the same
kind of mixed-dtype graph as CUDA's fp16 autocast, which is what breaks code that mixes dtypes
(index writes, in-place ops, hand-made losses). The trainer and CAM-inference checks that need
CUDA are skipped without it.
"""

import numpy as np
import pytest
import torch
from conftest import MINI_TOY_OPTS, make_cfg
from detectron2.data import DatasetCatalog
from detectron2.engine import AMPTrainer, SimpleTrainer
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from wsss_d2.data.mappers import build_mapper
from wsss_d2.engine.trainer import build_step_trainer
from wsss_d2.ops.amp import amp_active, inference_autocast
from wsss_d2.pseudo.cam_inference import CAMInferenceEngine

CONFIGS = {
    "cam": ("configs/cam_toy.yaml", []),
    "plda": ("configs/plda_toy.yaml", []),
    "deeplab": ("configs/deeplabv2_toy.yaml", ["MODEL.SEG_HEAD.CONV_DIMS", "16"]),
    "cian": ("configs/cian_toy.yaml", ["MODEL.SEG_HEAD.CONV_DIMS", "16"]),
    "resnet_cam": ("configs/cam_r50.yaml", ["INPUT.TAGS.NUM_CLASSES", "5"]),
    "effnet_seg": (
        "configs/deeplabv2_effnet_coco_tiny.yaml",
        ["INPUT.TAGS.NUM_CLASSES", "5", "MODEL.SEM_SEG_HEAD.NUM_CLASSES", "6",
         "MODEL.EFFICIENTNET.PRETRAINED", "False"],
    ),
}  # fmt: skip


def _batch(n=4, size=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    tags = [[1, 0, 0, 1, 0], [1, 0, 0, 0, 0], [0, 1, 0, 0, 0], [0, 1, 1, 0, 0]]
    out = []
    for i in range(n):
        ids = torch.tensor([0] + [k + 1 for k, t in enumerate(tags[i]) if t])
        lab = ids[torch.randint(0, len(ids), (size, size), generator=g)]
        lab[: size // 4] = 255
        out.append({
            "image": torch.randint(0, 256, (3, size, size), generator=g, dtype=torch.uint8),
            "sem_seg": lab, "tags": torch.tensor(tags[i], dtype=torch.float32),
            "height": size, "width": size,
        })  # fmt: skip
    return out


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_training_step_under_autocast(name):
    config, opts = CONFIGS[name]
    cfg = make_cfg(config, *MINI_TOY_OPTS, "MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "", *opts)
    torch.manual_seed(0)
    model = build_model(cfg).train()
    batch = _batch(2, 32) if name == "resnet_cam" else _batch()  # ResNet-50: keep it small
    with EventStorage(), torch.autocast("cpu", dtype=torch.bfloat16):
        losses = model(batch)
    total = sum(losses.values())
    assert torch.isfinite(total), losses
    total.float().backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_amp_flag_off_cuda_is_a_clear_error(cfg_factory):
    cfg = cfg_factory("configs/cam_toy.yaml", "SOLVER.AMP.ENABLED", "True", "MODEL.DEVICE", "cpu")
    with pytest.raises(ValueError, match="SOLVER.AMP.ENABLED needs CUDA"):
        build_step_trainer(cfg, torch.nn.Linear(1, 1), [], None)
    cfg.SOLVER.AMP.ENABLED = False
    model = torch.nn.Linear(1, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    assert type(build_step_trainer(cfg, model, [], opt)) is SimpleTrainer


def test_inference_autocast_only_on_cuda():
    assert not amp_active("cpu", True) and not amp_active("cuda", False)
    with inference_autocast(torch.device("cpu"), True):
        y = torch.nn.functional.linear(torch.ones(2, 3), torch.ones(4, 3))
    assert y.dtype == torch.float32


def _mini_cams(cfg):
    """A seeded random toy CAM model, two toyparts_mini_val inputs and their float32 CAMs."""
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    batch = [build_mapper(cfg, False)(d) for d in DatasetCatalog.get("toyparts_mini_val")[:2]]
    return model, batch, CAMInferenceEngine(cfg).cams_for_batch(model, batch)


def test_cam_inference_amp_flag_is_a_no_op_on_cpu(cfg_factory):
    cfg = cfg_factory("configs/cam_toy.yaml", *MINI_TOY_OPTS, "WSSS.PSEUDO.SCALES", "(1.0, 0.5)")
    model, batch, plain = _mini_cams(cfg)
    cfg.WSSS.PSEUDO.AMP = True
    engine = CAMInferenceEngine(cfg)
    assert engine.amp and "amp" not in engine.fingerprint("cpu")
    assert engine.fingerprint("cuda")["amp"] == "fp16"
    for a, b in zip(plain, engine.cams_for_batch(model, batch)):
        assert np.array_equal(a, b)


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@CUDA
def test_amp_flag_builds_the_amp_trainer_and_trains(tmp_path):
    from wsss_d2.engine.trainer import WSSSTrainer

    cfg = make_cfg("configs/cam_toy.yaml", *MINI_TOY_OPTS, "SOLVER.AMP.ENABLED", "True",
                   "MODEL.DEVICE", "cuda", "SOLVER.MAX_ITER", "2", "OUTPUT_DIR", str(tmp_path),
                   "DATASETS.TEST", "()")  # fmt: skip
    trainer = WSSSTrainer(cfg)
    assert isinstance(trainer._trainer, AMPTrainer)
    trainer.train()
    assert (tmp_path / "model_final.pth").is_file()


@CUDA
def test_cam_inference_fp16_close_to_fp32(cfg_factory):
    cfg = cfg_factory("configs/cam_toy.yaml", *MINI_TOY_OPTS, "MODEL.DEVICE", "cuda")
    model, batch, plain = _mini_cams(cfg)
    cfg.WSSS.PSEUDO.AMP = True
    for a, b in zip(plain, CAMInferenceEngine(cfg).cams_for_batch(model, batch)):
        assert b.dtype == np.float32 and np.abs(a - b).max() < 0.02


def test_cpu_bf16_cam_inference_is_its_own_fingerprint_and_close_to_float32(cfg_factory):
    cfg = cfg_factory("configs/cam_toy.yaml", *MINI_TOY_OPTS, "WSSS.PSEUDO.SCALES", "(1.0, 0.5)")
    model, batch, plain = _mini_cams(cfg)
    with inference_autocast("cpu", False, cpu_bf16=True):
        assert (
            torch.nn.functional.linear(torch.ones(2, 3), torch.ones(4, 3)).dtype == torch.bfloat16
        )
    cfg.WSSS.PSEUDO.CPU_BF16 = True
    engine = CAMInferenceEngine(cfg)
    assert engine.fingerprint("cpu")["amp"] == "bf16" and "amp" not in engine.fingerprint("cuda")
    for a, b in zip(plain, engine.cams_for_batch(model, batch)):
        assert b.dtype == np.float32 and a.shape == b.shape
        assert not np.array_equal(a, b) and np.abs(a - b).max() < 0.05  # bfloat16: 8-bit mantissa


def test_engine_keeps_named_modules_float32_under_cpu_bf16_on_a_copy(cfg_factory, tmp_path):
    """WSSS.PSEUDO.CPU_BF16_FLOAT32: the engine's inference copy keeps the named submodules in
    float32 (the whole backbone here: only the classifier rounds, so the CAMs are far closer to
    float32's than in bfloat16 throughout); the names enter the fingerprint; the caller's model
    is not wrapped; an unknown name is an error naming it."""
    from wsss_d2.io.cam_files import cam_file_path, load_cam_file
    from wsss_d2.ops.amp import Float32

    cfg = cfg_factory("configs/cam_toy.yaml", *MINI_TOY_OPTS, "WSSS.PSEUDO.SCALES", "(1.0, 0.5)")
    model, batch, plain = _mini_cams(cfg)
    dicts = DatasetCatalog.get("toyparts_mini_val")[:2]
    cfg.WSSS.PSEUDO.CPU_BF16 = True
    low = CAMInferenceEngine(cfg)
    cfg.WSSS.PSEUDO.CPU_BF16_FLOAT32 = ("backbone",)
    mixed = CAMInferenceEngine(cfg)
    assert mixed.fingerprint("cpu")["float32_modules"] == ["backbone"]
    assert "float32_modules" not in low.fingerprint("cpu")
    assert "float32_modules" not in mixed.fingerprint("cuda")  # no bfloat16 there
    errs = {}
    for name, engine in (("low", low), ("mixed", mixed)):
        engine.run(model, dicts, str(tmp_path / name), progress=False)
        cams = [load_cam_file(cam_file_path(str(tmp_path / name), d))[0] for d in dicts]
        errs[name] = max(float(np.abs(a - c).max()) for a, c in zip(plain, cams))
    assert not any(isinstance(m, Float32) for m in model.modules())
    assert 0 < errs["mixed"] < errs["low"], errs
    cfg.WSSS.PSEUDO.CPU_BF16_FLOAT32 = ("backbone.nothing_here",)
    with pytest.raises(KeyError, match="backbone.nothing_here"):
        CAMInferenceEngine(cfg).run(model, dicts, str(tmp_path / "bad"), progress=False)


def test_retaining_freed_buffers_is_glibc_only_and_idempotent():
    import platform

    from wsss_d2.ops.allocator import retain_freed_buffers

    first = retain_freed_buffers()
    assert first == (platform.system() == "Linux" and platform.libc_ver()[0] == "glibc")
    assert retain_freed_buffers() == first
    x = torch.randn(64, 1 << 16)  # 16 MiB: allocated and freed as before
    assert float((x - x).abs().max()) == 0.0
