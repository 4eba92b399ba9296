"""Every YAML in configs/ loads, and every model config builds its model on CPU."""

import pytest
from conftest import REPO, make_cfg
from detectron2.modeling import build_model

CONFIGS = sorted(
    p.relative_to(REPO).as_posix()
    for p in (REPO / "configs").rglob("*.yaml")
    if "pipelines" not in p.parts
)


def test_there_are_configs():
    assert "configs/cam_toy.yaml" in CONFIGS


@pytest.mark.parametrize("path", CONFIGS)
def test_config_loads_and_builds(path):
    cfg = make_cfg(path, "MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "")
    if not cfg.MODEL.META_ARCHITECTURE or "Base-" in path and "Toy" not in path:
        return  # bases of real-data configs are exercised through their leaves
    model = build_model(cfg)
    assert sum(p.numel() for p in model.parameters()) > 0


PIPELINES = sorted(
    p.relative_to(REPO).as_posix() for p in (REPO / "configs" / "pipelines").glob("*.yaml")
)


@pytest.mark.parametrize("path", PIPELINES)
def test_pipeline_config_is_valid(path):
    from wsss_d2.engine.pipeline import load_pipeline

    pipe = load_pipeline(str(REPO / path), repo_root=str(REPO))
    for stage in pipe.stages:  # every stage's config merges with its overrides
        pipe._hashes[stage.name] = pipe.stage_hash(stage)
