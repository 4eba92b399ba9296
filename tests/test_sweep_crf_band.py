"""benchmarks/sweep_crf_band.py: every (CONF_FG, CONF_BG) pair it scores is the labeler's label."""

import numpy as np
from conftest import load_script
from PIL import Image

from wsss_d2.evaluation.pseudo_eval import _confusion_with_unsure
from wsss_d2.io.cam_files import save_cam_file
from wsss_d2.io.files import save_label_png
from wsss_d2.ops.crf import CRFParams
from wsss_d2.pseudo.refine import CRFRefiner, threshold_labels


def test_band_job_scores_the_labels_the_labeler_writes(tmp_path):
    sweep = load_script("benchmarks/sweep_crf_band.py")
    rng = np.random.default_rng(0)
    h, w = 24, 32
    image = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
    image[:, : w // 2] = (200, 30, 30)  # a left half of one colour: the CRF has edges to use
    Image.fromarray(image).save(tmp_path / "a.jpg", quality=100)
    image = np.asarray(Image.open(tmp_path / "a.jpg").convert("RGB"))
    yy, xx = np.mgrid[0:h, 0:w]
    cams = np.stack([np.clip(1 - xx / (w / 2), 0, 1), np.clip(yy / h, 0, 1)]).astype(np.float16)
    keys = [2, 5]
    save_cam_file(str(tmp_path / "a.npz"), cams, keys, (h, w))
    gt = np.zeros((h, w), np.uint8)
    gt[:, : w // 2] = 2
    gt[h - 6 :, w // 2 :] = 5
    gt[0, 0] = 255
    save_label_png(str(tmp_path / "gt.png"), gt)
    d = {"file_name": str(tmp_path / "a.jpg"), "height": h, "width": w, "tags": keys,
         "sem_seg_file_name": str(tmp_path / "gt.png")}  # fmt: skip
    thresholds = [0.1, 0.3, 0.6]
    pairs = [(f, b) for f in range(3) for b in range(f + 1)]
    crf = CRFParams()
    pair_conf, raw_conf = sweep._band_job(
        (d, str(tmp_path / "a.npz"), thresholds, pairs, crf, 6, 255)
    )
    cams32 = cams.astype(np.float32)
    for (f, b), conf in zip(pairs, pair_conf):
        refiner = CRFRefiner(conf_fg=thresholds[f], conf_bg=thresholds[b], crf=crf)
        label = refiner(image, cams32, keys)
        assert np.array_equal(conf, _confusion_with_unsure(label, gt, 6, 255)), (f, b)
    for t, conf in zip(thresholds, raw_conf):
        label = threshold_labels(cams32, keys, t)
        assert np.array_equal(conf, _confusion_with_unsure(label, gt, 6, 255))
    # the pairs differ (the test would not notice a sweep that ignores the thresholds otherwise)
    assert len({c.tobytes() for c in pair_conf}) > 1
    row = sweep._row(pair_conf[0], None)
    assert 0 <= row["bg_precision"] <= 100 and row["gt_bg_share_pct"] > 0
    # CAMs only (no CRF): the same thresholded-CAM confusions
    _, raw_only = sweep._band_job((d, str(tmp_path / "a.npz"), thresholds, [], None, 6, 255))
    assert np.array_equal(raw_only, raw_conf)
