"""Segment Anything models: the official ones by type, a tiny random one for tests, and loading
a checkpoint with errors that say what the file is."""

from __future__ import annotations

import logging
import os
from functools import partial
from typing import Callable

import torch
from detectron2.utils.file_io import PathManager
from segment_anything import sam_model_registry
from segment_anything.modeling import (
    ImageEncoderViT,
    MaskDecoder,
    PromptEncoder,
    Sam,
    TwoWayTransformer,
)

logger = logging.getLogger(__name__)

__all__ = ["SAM_BUILDERS", "build_sam_tiny", "load_sam"]


def build_sam_tiny(
    checkpoint: str | None = None,
    img_size: int = 256,
    embed_dim: int = 32,
    depth: int = 2,
    prompt_dim: int = 32,
) -> Sam:
    """A tiny randomly initialised SAM for tests and benchmarks (its masks mean nothing).

    Same architecture as SAM (ViT image encoder with windowed + global attention and relative
    positions, prompt encoder, two-way-transformer mask decoder with 3 multimask outputs), only
    narrower, shallower and at ``img_size`` input (embedding ``img_size/16`` squared). Weights
    are seeded, so every process builds the same model. ``checkpoint`` is ignored here
    (:func:`load_sam` loads it).
    """
    grid = img_size // 16
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        sam = Sam(
            image_encoder=ImageEncoderViT(
                img_size=img_size,
                patch_size=16,
                in_chans=3,
                embed_dim=embed_dim,
                depth=depth,
                num_heads=2,
                mlp_ratio=2.0,
                out_chans=prompt_dim,
                qkv_bias=True,
                norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
                use_rel_pos=True,
                window_size=max(grid // 4, 1),
                global_attn_indexes=(depth - 1,),
            ),
            prompt_encoder=PromptEncoder(
                embed_dim=prompt_dim,
                image_embedding_size=(grid, grid),
                input_image_size=(img_size, img_size),
                mask_in_chans=4,
            ),
            mask_decoder=MaskDecoder(
                num_multimask_outputs=3,
                transformer=TwoWayTransformer(
                    depth=2, embedding_dim=prompt_dim, mlp_dim=2 * prompt_dim, num_heads=2
                ),
                transformer_dim=prompt_dim,
                iou_head_depth=2,
                iou_head_hidden_dim=prompt_dim,
            ),
            pixel_mean=[123.675, 116.28, 103.53],
            pixel_std=[58.395, 57.12, 57.375],
        )
    return sam.eval()


# every builder takes checkpoint=None and returns an un-loaded model; load_sam loads weights
SAM_BUILDERS: dict[str, Callable[..., Sam]] = {
    "vit_h": sam_model_registry["vit_h"],
    "vit_l": sam_model_registry["vit_l"],
    "vit_b": sam_model_registry["vit_b"],
    "tiny": build_sam_tiny,
}
_KNOWN_ENCODERS = {(1280, 32): "vit_h", (1024, 24): "vit_l", (768, 12): "vit_b", (32, 2): "tiny"}


def _guess_model_type(sd: dict) -> str:
    w = sd.get("image_encoder.patch_embed.proj.weight")
    if w is None:
        return "not a SAM checkpoint (no image_encoder.patch_embed.proj.weight)"
    depth = len({k.split(".")[2] for k in sd if k.startswith("image_encoder.blocks.")})
    name = _KNOWN_ENCODERS.get((int(w.shape[0]), depth))
    return f"{name or 'unknown'} (encoder width {int(w.shape[0])}, depth {depth})"


def load_sam(model_type: str, checkpoint: str, device: str | torch.device = "cpu") -> Sam:
    """Build a SAM of ``model_type`` and load ``checkpoint`` onto ``device``.

    ``model_type`` is one of ``vit_h``, ``vit_l``, ``vit_b`` (the official models, built through
    ``segment_anything.sam_model_registry``) or ``tiny`` (random test model, for which an empty
    checkpoint means the seeded random weights). Raises ``FileNotFoundError`` for a missing
    checkpoint and ``ValueError`` naming the path, the expected type and what the file looks
    like when its weights do not fit.
    """
    if model_type not in SAM_BUILDERS:
        raise ValueError(
            f"WSSS.SAM.MODEL_TYPE '{model_type}' is unknown; expected one of {sorted(SAM_BUILDERS)}"
        )
    if not checkpoint:
        if model_type != "tiny":
            raise FileNotFoundError(
                f"WSSS.SAM.CHECKPOINT is empty; SAM model type '{model_type}' needs its official "
                "weights (e.g. sam_vit_h_4b8939.pth from the segment-anything release)"
            )
        logger.warning("SAM 'tiny' with random weights: a test/benchmark model, masks are noise")
        return build_sam_tiny().to(device).eval()
    local = PathManager.get_local_path(checkpoint)
    if not os.path.isfile(local):
        raise FileNotFoundError(
            f"SAM checkpoint not found: {checkpoint} (WSSS.SAM.CHECKPOINT, expected model type "
            f"'{model_type}')"
        )
    try:
        sd = torch.load(local, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated download, a pickle of something else
        raise ValueError(f"cannot read SAM checkpoint {checkpoint}: {e}") from e
    if isinstance(sd, dict) and isinstance(sd.get("model"), dict):  # Detectron2 Checkpointer
        sd = sd["model"]
    if not isinstance(sd, dict):
        raise ValueError(f"SAM checkpoint {checkpoint} holds a {type(sd).__name__}, not weights")
    guess = _guess_model_type(sd)
    if guess.split(" ")[0] in SAM_BUILDERS and not guess.startswith(model_type + " "):
        # a known other type: say so before building a model of the wrong size
        raise ValueError(
            f"SAM checkpoint {checkpoint} does not match WSSS.SAM.MODEL_TYPE '{model_type}': it "
            f"looks like {guess}"
        )
    model = SAM_BUILDERS[model_type](checkpoint=None)
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()[1].strip() if len(str(e).splitlines()) > 1 else str(e)
        raise ValueError(
            f"SAM checkpoint {checkpoint} does not match WSSS.SAM.MODEL_TYPE '{model_type}': it "
            f"looks like {_guess_model_type(sd)}. First problem: {first[:300]}"
        ) from None
    return model.to(device).eval()
