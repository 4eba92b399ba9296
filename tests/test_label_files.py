"""Label PNGs that Detectron2's own readers take: ids, not palette colours."""

import numpy as np
from detectron2.data import DatasetMapper
from detectron2.data import detection_utils as d2_utils
from PIL import Image

from wsss_d2.io.files import read_label_png, save_label_png, voc_palette
from wsss_d2.io.rounds import RoundWriter


def _label():
    lab = np.zeros((12, 16), np.uint8)
    lab[2:6, 3:9] = 4
    lab[7:, 10:] = 5
    lab[0, :] = 255
    return lab


def test_detectron2_read_image_reads_our_label_ids(tmp_path):
    lab = _label()
    save_label_png(str(tmp_path / "a.png"), lab)
    got = d2_utils.read_image(str(tmp_path / "a.png"), "L")[..., 0]
    assert np.array_equal(got, lab)  # a palette PNG would read as [0 15 53 220]
    assert np.array_equal(read_label_png(str(tmp_path / "a.png"), (12, 16)), lab)


def test_voc_palette_ground_truth_still_read_as_ids(tmp_path):
    """VOC's SegmentationClass PNGs are palette images: we read their indices, not colours."""
    lab = _label()
    img = Image.fromarray(lab, mode="P")
    img.putpalette([v for rgb in voc_palette(256) for v in rgb])
    img.save(tmp_path / "voc.png")
    assert np.array_equal(read_label_png(str(tmp_path / "voc.png")), lab)
    from wsss_d2.io.files import save_palette_png

    save_palette_png(str(tmp_path / "preview.png"), lab)  # previews for people: same ids
    assert np.array_equal(read_label_png(str(tmp_path / "preview.png")), lab)


def test_detectron2_dataset_mapper_trains_on_a_round(tmp_path):
    """A round written by RoundWriter feeds Detectron2's own DatasetMapper with our ids."""
    lab = _label()
    image = tmp_path / "img.png"
    Image.fromarray(np.full((12, 16, 3), 90, np.uint8)).save(image)
    d = {"file_name": str(image), "image_id": 0, "height": 12, "width": 16}
    writer = RoundWriter(str(tmp_path / "rounds"), 1, num_classes=6)
    writer.write(d, lab)
    folder = writer.finalize([d])
    mapper = DatasetMapper(is_train=True, augmentations=[], image_format="RGB")
    out = mapper({**d, "sem_seg_file_name": f"{folder}/img.png"})
    assert out["sem_seg"].dtype.is_floating_point is False
    assert np.array_equal(out["sem_seg"].numpy(), lab)
