"""transfer_learning/duplicates.py: the same picture found by its pixels (exact copies in any format, near-duplicates), and
what happens to a picture under two labels."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
from PIL import Image

from conftest import ROOT, make_image, run_stage, stage_project
from transfer_learning import duplicates, images


def photo(seed: int, size=(120, 90)) -> Image.Image:
    """A smooth picture (gradients and soft blobs), as photos are: what JPEG and resizing are made for."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size[1], 0:size[0]] / max(size)
    pixels = np.stack([rng.uniform(40, 200) + 50 * np.sin(rng.uniform(2, 9) * x + rng.uniform(0, 6) * y + rng.uniform(0, 6))
                       for _ in range(3)], axis=-1)
    for _ in range(4):
        cx, cy, r = rng.uniform(0, 1), rng.uniform(0, 0.75), rng.uniform(0.05, 0.2)
        pixels += rng.uniform(-80, 80, 3) * np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / r ** 2)[..., None]
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


def test_one_picture_in_several_formats_is_found_by_its_pixels_and_kept_in_one_split(tmp_path):
    """Duplicates were found by file bytes: the same picture as PNG, BMP and TIFF (or re-saved as JPEG, or resized) had
    other hashes and could land in training and test at once."""
    source = tmp_path / "images"
    for c, name in enumerate(("a", "b")):
        for i in range(10):
            (source / name).mkdir(parents=True, exist_ok=True)
            photo(100 * c + i).save(source / name / f"{i}.png")
    picture = photo(999)
    picture.save(source / "a" / "photo.png")
    picture.save(source / "a" / "photo.bmp")
    picture.save(source / "a" / "photo.tif")
    picture.save(source / "a" / "photo_q85.jpg", quality=85)
    picture.resize((60, 45), Image.Resampling.LANCZOS).save(source / "a" / "photo_half.png")
    project = stage_project(tmp_path, {"data.source": str(source)})
    assert run_stage(project, "ingest").returncode == 0 and run_stage(project, "split").returncode == 0
    manifest_ = pd.read_csv(project / "data/ingested/manifest.csv").set_index("path")
    copies = ["a/photo.bmp", "a/photo.png", "a/photo.tif"]
    family = sorted(copies + ["a/photo_half.png", "a/photo_q85.jpg"])
    assert manifest_.loc[copies, "pixels_sha256"].nunique() == 1, "lossless copies have the same pixels"
    assert manifest_.loc[family, "group"].nunique() == 1 and manifest_["group"].nunique() == 20 + 1
    report = json.loads((project / "metrics/data.json").read_text())
    assert report["duplicates"] == 2 and report["near_duplicates"] == [{"paths": family, "labels": ["a"]}]
    split = pd.read_csv(project / "data/split/split.csv").set_index("path")["split"]
    assert split[family].nunique() == 1


def test_look_alike_digits_are_not_near_duplicates():
    """A perceptual hash alone would pair look-alike handwritten digits (107 pairs share their dHash); the thumbnail
    check keeps the 1797 committed digits apart, as they are distinct pictures."""
    files = sorted((ROOT / "data/raw/digits").rglob("*.png"))
    prints = [duplicates.fingerprint(images.decode(path, 256, 10**8)[0]) for path in files]
    assert len(prints) == 1797 and len(set(duplicates.groups(prints, [str(path) for path in files]))) == 1797
    assert sum(a.dhash == b.dhash for i, a in enumerate(prints) for b in prints[i + 1:i + 200]) > 0, "the hashes alone collide"


def test_a_picture_under_two_labels_is_left_out_every_copy(tmp_path):
    """split kept one copy per hash (the first by path): a class made of copies of another's images counted as empty,
    skipped the size check and could end up in train only or in val/test only. Now every copy of a picture that carries
    two labels is skipped and reported; a class left with nothing is left out."""
    source = tmp_path / "images"
    for i in range(8):
        make_image(source / "cats" / f"c{i}.png", (200, 90, 40), noise_seed=i)
    for i in range(5):
        make_image(source / "dogs" / f"d{i}.png", (40, 90, 200), noise_seed=50 + i)
    shutil.copy(source / "cats" / "c0.png", source / "dogs" / "cat_copy.png")
    Image.open(source / "cats" / "c1.png").save(source / "dogs" / "cat_resaved.bmp")  # other bytes, same pixels
    (source / "kittens").mkdir()
    shutil.copy(source / "cats" / "c2.png", source / "kittens" / "k0.png")
    Image.open(source / "cats" / "c3.png").save(source / "kittens" / "k1.bmp")
    (source / "kittens" / "k2.png").symlink_to(source / "cats" / "c4.png")
    project = stage_project(tmp_path, {"data.source": str(source)})
    assert run_stage(project, "ingest").returncode == 0
    report = json.loads((project / "metrics/data.json").read_text())
    skipped = {s["path"]: s["reason"] for s in report["skipped_files"]}
    conflict = "an image with conflicting labels is left out, every copy of it"
    assert skipped == {"cats/c0.png": f"the same picture as dogs/cat_copy.png (labeled 'dogs'): {conflict}",
                       "dogs/cat_copy.png": f"the same picture as cats/c0.png (labeled 'cats'): {conflict}",
                       "cats/c1.png": f"the same picture as dogs/cat_resaved.bmp (labeled 'dogs'): {conflict}",
                       "dogs/cat_resaved.bmp": f"the same picture as cats/c1.png (labeled 'cats'): {conflict}",
                       "cats/c2.png": f"the same picture as kittens/k0.png (labeled 'kittens'): {conflict}",
                       "kittens/k0.png": f"the same picture as cats/c2.png (labeled 'cats'): {conflict}",
                       "cats/c3.png": f"the same picture as kittens/k1.bmp (labeled 'kittens'): {conflict}",
                       "kittens/k1.bmp": f"the same picture as cats/c3.png (labeled 'cats'): {conflict}",
                       "cats/c4.png": f"the same picture as kittens/k2.png (labeled 'kittens'): {conflict}",
                       "kittens/k2.png": f"the same picture as cats/c4.png (labeled 'cats'): {conflict}",
                       "kittens/": "no usable image of this class; the class is left out"}
    assert report["classes"] == {"cats": 3, "dogs": 5}
    for stage in ("split", "normalize"):
        assert run_stage(project, stage).returncode == 0
    assert json.loads((project / "data/normalized/encoding.json").read_text())["classes"] == ["cats", "dogs"]
