"""A user's own folder of images with image-level tags.

The tags file is either

- CSV with the header ``file_name,tags`` and one row per image; ``tags`` holds class names
  separated by ``;`` (an empty field means no tag)::

      file_name,tags
      cats/001.jpg,cat;dog
      street.png,car

- or JSON ``{"<file_name>": ["cat", "dog"], ...}``.

``file_name`` is relative to ``image_root`` (sub-folders allowed: ``a/000.png`` and ``b/000.png``
are two images with two label files, as each dict's ``label_stem`` keeps the relative path; a
``..`` or absolute ``file_name`` is read where it points, but its label files still go inside the
round's folder). Class ids are 1..K in ``class_names`` order (0 is background). A UTF-8 byte-order
mark (Excel's "CSV UTF-8") is accepted; image sizes are read as the pixels will be (EXIF
orientation applied). Optional ground-truth masks (for evaluation only) are ``<sem_seg_root>/<file_name
without extension>.png`` holding class ids; an image without a mask simply has no
``sem_seg_file_name``. Images with no tag are excluded, with a logged count.

Errors name the file: an unknown class or a tag that is not a class name (with the tags file
and its line number), a listed image that is missing, a mask whose size differs from its image's.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from typing import Sequence

from detectron2.data import DatasetCatalog
from detectron2.utils.file_io import PathManager
from PIL import Image

from ...io.files import image_size, safe_stem
from .common import keep_images_with_tags, require_dir, set_tag_metadata

logger = logging.getLogger(__name__)

__all__ = ["register_folder_tags", "load_folder_tags", "read_tags_file"]


def _json_line(text: str, key: str) -> int:
    """1-based line of ``key`` in a JSON text (json gives no positions; best effort)."""
    pos = text.find(json.dumps(key))
    return text.count("\n", 0, pos) + 1 if pos >= 0 else 0


def read_tags_file(tags_file: str, class_names: Sequence[str]) -> list[tuple[str, list[int], int]]:
    """Parse a CSV or JSON tags file into ``(file_name, sorted class ids 1..K, line)`` rows.

    Raises ``ValueError`` naming the class, the file and the line for an unknown class name.
    """
    to_id = {n: i + 1 for i, n in enumerate(class_names)}

    def ids(names: Sequence[str], line: int, file_name: str) -> list[int]:
        out = set()
        for n in names:
            if not isinstance(n, str):
                raise ValueError(
                    f"tag {n!r} of image '{file_name}' in {tags_file} line {line} is a "
                    f"{type(n).__name__}, not a class name; known classes: {', '.join(class_names)}"
                )
            n = n.strip()
            if not n:
                continue
            if n not in to_id:
                raise ValueError(
                    f"unknown class '{n}' for image '{file_name}' in {tags_file} line {line}; "
                    f"known classes: {', '.join(class_names)}"
                )
            out.add(to_id[n])
        return sorted(out)

    try:
        with PathManager.open(tags_file, "r", encoding="utf-8") as f:
            text = f.read().lstrip("\ufeff")  # Excel's "CSV UTF-8" starts with a byte-order mark
    except UnicodeDecodeError as e:
        raise ValueError(
            f"tags file {tags_file} is not UTF-8 text ({e.reason} at byte {e.start}); save it as "
            "UTF-8 (Excel: 'CSV UTF-8')"
        ) from None
    rows: list[tuple[str, list[int], int]] = []
    if tags_file.lower().endswith(".json"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"cannot parse tags file {tags_file}: {e}") from e
        if not isinstance(data, dict):
            raise ValueError(f"tags file {tags_file} must hold an object {{file_name: [names]}}")
        for file_name, names in data.items():
            line = _json_line(text, file_name)
            if not file_name.strip():
                raise ValueError(f"{tags_file} line {line}: an empty file name")
            if isinstance(names, str):
                names = names.split(";")
            if not isinstance(names, list):
                raise ValueError(
                    f"tags of '{file_name}' in {tags_file} line {line} must be a list of names"
                )
            rows.append((file_name, ids(names, line, file_name), line))
        return rows

    reader = csv.reader(text.splitlines())
    header = next(reader, None)
    if header is None or [h.strip() for h in header[:2]] != ["file_name", "tags"]:
        raise ValueError(f"tags file {tags_file} line 1 must be the header 'file_name,tags'")
    seen: dict[str, int] = {}
    for line, row in enumerate(reader, start=2):
        if not row or not any(c.strip() for c in row):
            continue
        if len(row) > 2:
            raise ValueError(
                f"{tags_file} line {line}: expected 2 fields (file_name,tags), got {len(row)}; "
                f"separate tags with ';'"
            )
        file_name = row[0].strip()
        if file_name in seen:
            raise ValueError(
                f"{tags_file} line {line}: '{file_name}' is listed again (first at line "
                f"{seen[file_name]})"
            )
        seen[file_name] = line
        names = row[1].split(";") if len(row) > 1 else []
        rows.append((file_name, ids(names, line, file_name), line))
    return rows


def _size(path: str) -> tuple[int, int]:
    """(height, width) from the file header (PIL decodes no pixels here)."""
    with PathManager.open(path, "rb") as f:
        w, h = Image.open(f).size
    return h, w


def load_folder_tags(
    image_root: str,
    tags_file: str,
    class_names: Sequence[str],
    sem_seg_root: str | None = None,
    name: str = "folder",
) -> list[dict]:
    """Dataset dicts of a tagged image folder (see the module docstring)."""
    require_dir(image_root, f"{name}: image folder")
    if not PathManager.isfile(tags_file):
        raise FileNotFoundError(f"{name}: tags file not found: {tags_file}")
    if sem_seg_root is not None:
        require_dir(sem_seg_root, f"{name}: mask folder")
    dicts = []
    for file_name, tags, line in read_tags_file(tags_file, class_names):
        path = os.path.join(image_root, file_name)
        if not PathManager.isfile(path):
            raise FileNotFoundError(
                f"{name}: image {path} (listed in {tags_file} line {line}) does not exist"
            )
        try:
            h, w = image_size(path)  # EXIF orientation applied, as the pixels will be read
        except Exception as e:  # PIL raises several types for non-images
            raise OSError(f"{name}: cannot read image {path}: {e}") from e
        stem = safe_stem(file_name)
        rec = {
            "file_name": path,
            "image_id": os.path.splitext(file_name)[0],
            "height": h,
            "width": w,
            "tags": tags,
            "label_stem": stem,
        }
        if sem_seg_root is not None:
            mask = os.path.join(sem_seg_root, stem + ".png")
            if PathManager.isfile(mask):
                mh, mw = _size(mask)
                if (mh, mw) != (h, w):
                    raise ValueError(
                        f"{name}: mask {mask} is {mw}x{mh} (WxH) but its image {path} is {w}x{h}"
                    )
                rec["sem_seg_file_name"] = mask
        dicts.append(rec)
    if sem_seg_root is not None:
        missing = sum("sem_seg_file_name" not in d for d in dicts)
        if missing:
            logger.warning(
                "%s: %d of %d images have no mask in %s", name, missing, len(dicts), sem_seg_root
            )
    return keep_images_with_tags(dicts, name)


def register_folder_tags(
    name: str,
    image_root: str,
    tags_file: str,
    class_names: Sequence[str],
    sem_seg_root: str | None = None,
) -> None:
    """Register a user's tagged image folder lazily as ``name`` (nothing is read until loaded)."""
    class_names = list(class_names)
    if len(set(class_names)) != len(class_names) or "background" in class_names:
        raise ValueError(f"{name}: class_names must be unique and exclude 'background'")
    DatasetCatalog.register(
        name, lambda: load_folder_tags(image_root, tags_file, class_names, sem_seg_root, name)
    )
    set_tag_metadata(name, class_names, image_root=image_root, tags_file=tags_file)
