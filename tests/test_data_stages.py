"""Unit tests of the TensorFlow-free stage logic: sources, decoding, splitting, targets, augmentation."""
from __future__ import annotations

import io
import json
import shutil
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from conftest import ROOT, make_image, run_stage, stage_project
from lib import augmentation, duplicates, images, splitting, sources, targets
from lib.errors import PipelineError

MAX_PIXELS = 50_000_000


def decode_file(path, max_short_side=256):
    return images.decode(path.read_bytes(), max_short_side, MAX_PIXELS)


def test_class_folders_lists_images_and_reports_everything_else(class_folder):
    (class_folder / "red" / "notes.txt").write_text("hello")
    (class_folder / "red" / ".DS_Store").write_bytes(b"\0\1")
    (class_folder / "README.md").write_text("top-level file")
    make_image(class_folder / "blue" / "nested" / "deep.PNG", (0, 0, 255))
    items, skipped = sources.class_folders(class_folder)
    assert len(items) == 37 and {i.label for i in items} == {"red", "green", "blue"}
    assert "blue/nested/deep.PNG" in {i.path for i in items}, "nested folders belong to their class; extensions are case-blind"
    reasons = {s.path: s.reason for s in skipped}
    assert reasons["red/.DS_Store"] == "hidden file"
    assert reasons["red/notes.txt"].startswith("not an image file extension")
    assert reasons["README.md"] == "file outside any class folder"


def test_symlink_leaving_the_root_is_skipped(class_folder, tmp_path):
    outside = make_image(tmp_path / "outside.png", (1, 2, 3))
    (class_folder / "red" / "link.png").symlink_to(outside)
    _, skipped = sources.class_folders(class_folder)
    assert {s.path: s.reason for s in skipped}["red/link.png"] == "link points outside data.source"


def test_branching_links_list_each_real_folder_once(tmp_path):
    """14 levels, each with two links to the next: every level was walked through both links (2^14 copies, 60 s)."""
    levels = 14
    store = tmp_path / "images" / "cats" / "levels"
    for i in range(levels + 1):
        make_image(store / str(i) / f"level_{i}.png", (10 * i, 0, 0), size=(4, 4))
        if i < levels:
            for name in ("x", "y"):
                (store / str(i) / name).symlink_to(store / str(i + 1), target_is_directory=True)
    (tmp_path / "images" / "cats" / "entry").symlink_to(store / "0", target_is_directory=True)
    make_image(tmp_path / "images" / "dogs" / "d.png", (0, 0, 9))
    items, skipped = sources.class_folders(tmp_path / "images")
    assert sorted(i.path for i in items if i.label == "cats") == sorted(f"cats/levels/{i}/level_{i}.png" for i in range(levels + 1))
    reasons = {s.path: s.reason for s in skipped}
    assert len(reasons) == 2 * levels + 1, "each link to a folder listed already is skipped once"
    assert reasons["cats/entry"] == "link to a folder already listed as cats/levels/0/"
    assert reasons["cats/levels/3/y"] == "link to a folder already listed as cats/levels/4/"


def test_a_class_folder_1000_levels_deep_is_listed(tmp_path):
    """The walk was recursive: at ~1000 levels a RecursionError, caught as a symlink loop, dropped the image."""
    folders = [tmp_path / "images" / "cats" / "d"]
    for _ in range(999):  # one at a time: Path.mkdir(parents=True) and shutil.rmtree are recursive too
        folders.append(folders[-1] / "d")
    try:
        for folder in folders:
            folder.mkdir(parents=True)
        make_image(folders[-1] / "bottom.png", (1, 2, 3), size=(4, 4))
        make_image(tmp_path / "images" / "dogs" / "d.png", (3, 2, 1), size=(4, 4))
        items, skipped = sources.class_folders(tmp_path / "images")
        assert skipped == [] and sorted(i.path for i in items) == [f"cats/{'d/' * 1000}bottom.png", "dogs/d.png"]
    finally:  # pytest's clean-up of old temporary folders would hit the recursion limit
        (folders[-1] / "bottom.png").unlink(missing_ok=True)
        for folder in reversed(folders):
            if folder.exists():
                folder.rmdir()


def test_look_alike_class_names_are_one_class(tmp_path):
    """'café' with a precomposed é (NFC) and with e + combining accent (NFD) look the same: one class, not two."""
    nfc, nfd = "caf\u00e9", "cafe\u0301"
    make_image(tmp_path / "images" / nfc / "a.png", (1, 1, 1))
    make_image(tmp_path / "images" / nfd / "b.png", (2, 2, 2))
    make_image(tmp_path / "images" / "tea" / "c.png", (3, 3, 3))
    items, _ = sources.class_folders(tmp_path / "images")
    assert sorted((i.path.split("/")[1], i.label) for i in items) == [("a.png", nfc), ("b.png", nfc), ("c.png", "tea")]
    csv = tmp_path / "images" / "labels.csv"
    csv.write_text(f"image,label\n{nfc}/a.png,{nfc}\n{nfd}/b.png,{nfd}\ntea/c.png,tea\n", encoding="utf-8")
    items, _ = sources.list_source(str(csv.parent), csv.name, "classification", "image", "label")
    assert [i.label for i in items] == [nfc, nfc, "tea"]


def test_one_file_listed_under_look_alike_paths_is_one_item_and_conflicting_labels_skip_it(tmp_path):
    """`./a.png`, `a.png` and `imgs//a.png` are one file: listed twice it is one item; with two labels, neither is
    trusted and every row of it is skipped (before: the first row's label won quietly)."""
    root = tmp_path / "d"
    make_image(root / "imgs" / "a.png", (1, 1, 1))
    make_image(root / "imgs" / "b.png", (2, 2, 2))
    (root / "imgs" / "b_link.png").symlink_to(root / "imgs" / "b.png")
    csv = root / "labels.csv"
    csv.write_text("image,label\n"
                   "imgs/a.png,cat\n"
                   "./imgs/a.png,cat\n"
                   "imgs//b.png,cat\n"
                   "imgs/../imgs/b.png,dog\n"
                   "imgs/b_link.png,cat\n")
    items, skipped = sources.list_source(str(csv.parent), csv.name, "classification", "image", "label")
    assert [(i.path, i.label) for i in items] == [("imgs/a.png", "cat")]
    assert [(s.path, s.reason) for s in skipped] == [
        ("imgs/a.png", "row 3: the same file as row 2"),
        ("imgs/b.png", "row 4: the same file has the label 'dog' in row 5; a file with conflicting labels is left out"),
        ("imgs/../imgs/b.png", "row 5: the same file has the label 'cat' in row 4; a file with conflicting labels is left out"),
        ("imgs/b_link.png", "row 6: the same file has the label 'dog' in row 5; a file with conflicting labels is left out")]


def test_csv_quirks_pandas_misread(tmp_path):
    """A trailing comma on every row made pandas use the first column as the index (every row then had no target);
    blank lines shifted the row numbers; a repeated header name was resolved silently."""
    root = tmp_path / "d"
    for name in ("a", "b", "c"):
        make_image(root / f"{name}.png", (1, 1, 1), noise_seed=ord(name))
    trailing = root / "trailing.csv"
    trailing.write_text("image,label\na.png,cat,\nb.png,dog,\n")
    items, skipped = sources.list_source(str(root), trailing.name, "classification", "image", "label")
    assert [(i.path, i.label) for i in items] == [("a.png", "cat"), ("b.png", "dog")] and skipped == []
    blank = root / "blank.csv"
    blank.write_text("image,label\n\na.png,cat\n\n\nb.png,\nc.png,dog,extra\n")
    items, skipped = sources.list_source(str(root), blank.name, "classification", "image", "label")
    assert [i.path for i in items] == ["a.png"]
    assert [s.reason for s in skipped] == ["row 6: target is missing",  # the row a spreadsheet shows it on
                                           "row 7: 3 values but the header names 2 columns; quote a value that holds a comma"]
    repeated = root / "repeated.csv"
    repeated.write_text("image,label,notes,label\na.png,cat,,dog\n")
    with pytest.raises(PipelineError, match=r"repeated.csv: the header names column 'label' \(data.target_column\) 2 times "
                                            r"\(columns 2, 4\); rename all but one$"):
        sources.list_source(str(root), repeated.name, "classification", "image", "label")


def test_regression_targets_are_plain_numbers_the_statistics_can_hold(tmp_path):
    """float() reads '1_000' and Arabic-Indic digits as numbers; 1e200 is finite, but its square (the std) overflows."""
    root = tmp_path / "d"
    make_image(root / "a.png", (1, 1, 1))
    csv = root / "ages.csv"
    csv.write_text("image,age\na.png,1_000\na.png,\u0661\u0662\na.png,1e200\na.png,-2.5e1\n", encoding="utf-8")
    items, skipped = sources.list_source(str(root), csv.name, "regression", "image", "age")
    assert [(i.path, i.label) for i in items] == [("a.png", -25.0)]
    assert [s.reason for s in skipped] == [
        "row 2: target '1_000' is not a finite number written with digits 0-9 (like 12.5 or -3e2)",
        "row 3: target '\u0661\u0662' is not a finite number written with digits 0-9 (like 12.5 or -3e2)",
        "row 4: target '1e200' is beyond ±1e+30; rescale the column (e.g. to other units)"]


def test_decode_makes_rgb_upright_and_bounded(tmp_path):
    gray = make_image(tmp_path / "gray.png", (90, 90, 90), size=(50, 20), mode="L")
    pixels, size = decode_file(gray)
    assert pixels.shape == (20, 50, 3) and pixels.dtype == np.uint8 and size == (50, 20)

    rgba = Image.new("RGBA", (10, 10), (255, 0, 0, 0))  # fully transparent red -> white
    rgba.save(tmp_path / "alpha.png")
    assert (decode_file(tmp_path / "alpha.png")[0] == 255).all()

    big = make_image(tmp_path / "big.jpg", (10, 200, 10), size=(900, 600))
    pixels, size = decode_file(big, max_short_side=100)
    assert size == (900, 600) and min(pixels.shape[:2]) == 100 and pixels.shape[1] == 150

    rotated = Image.new("RGB", (60, 30), (0, 0, 255))
    exif = rotated.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to view"
    rotated.save(tmp_path / "rotated.jpg", exif=exif)
    assert decode_file(tmp_path / "rotated.jpg")[0].shape == (60, 30, 3)


@pytest.mark.parametrize("content, reason", [
    (b"", "empty file"),
    (b"<html>not an image</html>", "not a readable image"),
])
def test_unusable_files_say_why(tmp_path, content, reason):
    path = tmp_path / "x.jpg"
    path.write_bytes(content)
    with pytest.raises(images.Unusable, match=reason):
        decode_file(path)


def test_truncated_jpeg_is_unusable(tmp_path):
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buffer, "JPEG")
    with pytest.raises(images.Unusable, match="corrupt or truncated"):
        images.decode(buffer.getvalue()[:400], 256, MAX_PIXELS)


def test_fit_crop_and_pad_keep_the_aspect():
    wide = np.zeros((20, 40, 3), np.uint8)
    wide[:, :10] = 255  # white stripe on the left quarter
    cropped = images.square(wide, 16, "crop")
    padded = images.square(wide, 16, "pad")
    assert cropped.shape == padded.shape == (16, 16, 3)
    assert cropped[:, 0].mean() < 10, "center crop cuts the left stripe off"
    assert padded[0].max() == 0 and padded[8, 0].min() > 200, "pad keeps the stripe and adds black bars"


def test_csv_manifest_skips_bad_rows_and_rejects_missing_columns(tmp_path):
    make_image(tmp_path / "data" / "a.png", (1, 1, 1))
    make_image(tmp_path / "outside.png", (1, 1, 1))
    csv = tmp_path / "data" / "labels.csv"
    pd.DataFrame({"image": ["a.png", "a.png", "a.png", "../outside.png", "nope.png", ""],
                  "age": ["3", "", "inf", "4", "5", "6"]}).to_csv(csv, index=False)
    items, skipped = sources.list_source(str(csv.parent), csv.name, "regression", "image", "age")
    assert [(i.path, i.label) for i in items] == [("a.png", 3.0)]
    assert [s.reason for s in skipped] == ["row 3: target is missing",
                                           "row 4: target 'inf' is not a finite number written with digits 0-9 (like 12.5 or -3e2)",
                                           "row 5: path escapes the CSV's folder", "row 6: file not found",
                                           "row 7: image path is missing"]
    with pytest.raises(PipelineError, match="has no column 'years'.*data.target_column.*image, age"):
        sources.list_source(str(csv.parent), csv.name, "regression", "image", "years")


def test_missing_source_is_a_clear_error(tmp_path):
    with pytest.raises(PipelineError, match="does not exist"):
        sources.list_source(str(tmp_path / "nowhere"), "", "classification", "image", "label")
    with pytest.raises(PipelineError, match="needs a CSV"):
        sources.list_source(str(tmp_path), "", "regression", "image", "label")


def manifest(labels, hashes=None):
    """Rows as ingest writes them: each its own picture (pixels_sha256), alone in its group unless `hashes` repeat."""
    hashes = hashes or [f"h{i}" for i in range(len(labels))]
    return pd.DataFrame({"path": [f"{i}.png" for i in range(len(labels))], "label": labels, "pixels_sha256": hashes, "group": hashes})


def test_split_is_stratified_seeded_and_keeps_duplicates_together():
    labels = ["a"] * 50 + ["b"] * 30
    hashes = [f"h{i}" for i in range(80)]
    hashes[1] = hashes[2] = hashes[3] = "dup"  # three copies of one image
    m = manifest(labels, hashes)
    split = splitting.assign(m, splitting.strata(m, "classification", 10), 0.2, 0.2, seed=0)
    assert split.iloc[1] == split.iloc[2] == split.iloc[3]
    counts = pd.crosstab(m["label"], split)
    assert counts.loc["b"].to_dict() == {"test": 6, "train": 18, "val": 6}
    assert split.equals(splitting.assign(m, splitting.strata(m, "classification", 10), 0.2, 0.2, seed=0))
    assert not split.equals(splitting.assign(m, splitting.strata(m, "classification", 10), 0.2, 0.2, seed=1))


def test_split_rejects_a_class_too_small():
    m = manifest(["a"] * 20 + ["tiny"] * 2)
    with pytest.raises(PipelineError, match=r"'tiny' has 2 distinct images.*need at least 3"):
        splitting.assign(m, splitting.strata(m, "classification", 10), 0.2, 0.2, seed=0)
    m["group"] = [f"h{i}" for i in range(20)] + ["h0", "h1"]  # tiny's images are near-duplicates of a's: they go with a's
    with pytest.raises(PipelineError, match=r"^'tiny' has 0 distinct images \(2 of its images are near-duplicates of others' and go "
                                            r"with them; see metrics/data.json\); .* need at least 3"):
        splitting.assign(m, splitting.strata(m, "classification", 10), 0.2, 0.2, seed=0)


def test_split_ignores_row_order_and_moves_few_images_when_one_is_added():
    """The split shuffled the rows of each class in manifest order: reordering a CSV, or adding one image, reassigned
    every image. Now a picture's split depends on its own pixels and the seed: adding one moves at most 2 others."""
    rng = np.random.default_rng(0)
    m = manifest(["a"] * 60 + ["b"] * 37, [f"{rng.integers(2**62):016x}" for _ in range(97)])
    split = splitting.assign(m, splitting.strata(m, "classification", 10), 0.2, 0.2, seed=0)
    shuffled = m.sample(frac=1, random_state=1)
    again = splitting.assign(shuffled, splitting.strata(shuffled, "classification", 10), 0.2, 0.2, seed=0)
    assert again.sort_index().equals(split), "the same rows in another order: the same assignment"
    moved = []
    for k in range(40):  # one more image of class a, 40 times over
        grown = pd.concat([m, manifest(["a"], [f"new{k}"])], ignore_index=True)
        after = splitting.assign(grown, splitting.strata(grown, "classification", 10), 0.2, 0.2, seed=0)
        moved.append(int((after.iloc[:len(m)] != split).sum()))
        assert after.iloc[:len(m)][m["label"] == "b"].equals(split[m["label"] == "b"]), "other classes never move"
    assert max(moved) <= 2, moved
    assert not split.equals(splitting.assign(m, splitting.strata(m, "classification", 10), 0.2, 0.2, seed=1)), "the seed matters"


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
    prints = [duplicates.fingerprint(images.decode(path, 256, 10**8)[0]) for path in sorted((ROOT / "data/raw/digits").rglob("*.png"))]
    assert len(prints) == 1797 and len(set(duplicates.groups(prints))) == 1797
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


def test_every_val_and_test_class_must_be_a_training_class(tmp_path, class_folder):
    """A class with images in val or test but none in train encoded to -2147483648 (a RuntimeWarning only), and
    train-head or evaluate failed later with a TensorFlow traceback or an IndexError."""
    project = stage_project(tmp_path, {"data.source": str(class_folder)})
    assert run_stage(project, "ingest").returncode == 0 and run_stage(project, "split").returncode == 0
    split = pd.read_csv(project / "data/split/split.csv")
    blue = split["path"].str.startswith("blue/")
    split.loc[blue, "split"] = np.where(np.arange(blue.sum()) % 2, "val", "test")  # no blue image left in train
    split.to_csv(project / "data/split/split.csv", index=False)
    result = run_stage(project, "normalize")
    assert result.returncode == 1 and "Traceback" not in result.stderr and "RuntimeWarning" not in result.stderr, result.stderr
    assert result.stderr.strip() == ("error: class 'blue' has images in the val split but none in train, so the model cannot learn it: "
                                     "add training images of it, or remove it from data.source")
    assert not (project / "data/normalized").exists() or not list((project / "data/normalized").iterdir())


def test_regression_split_covers_the_target_range():
    m = manifest(list(np.linspace(1, 100, 200)))
    split = splitting.assign(m, splitting.strata(m, "regression", 10), 0.2, 0.2, seed=0)
    for name in ("val", "test"):
        values = m.loc[split == name, "label"]
        assert values.min() < 11 and values.max() > 90


def test_targets_encoding_round_trips_with_training_statistics():
    enc = targets.encoding_of(pd.Series([10.0, 20.0, 30.0]), "regression")
    assert enc["mean"] == 20.0 and np.isclose(enc["std"], np.std([10, 20, 30]))
    encoded = targets.encode(pd.Series([20.0, 40.0]), enc)
    assert np.allclose(targets.decode(encoded, enc), [20.0, 40.0])
    classes = targets.encoding_of(pd.Series(["cat", "ant", "cat"]), "classification")
    assert classes["classes"] == ["ant", "cat"]
    assert list(targets.from_head(np.array([[0.9, 0.1], [0.2, 0.8]]), classes)) == ["ant", "cat"]


def augment_cfg(**overrides):
    cfg = dict(horizontal_flip=True, rotation=20, width_shift=0.1, height_shift=0.1, shear=10, zoom=0.1)
    return SimpleNamespace(**cfg | overrides)


def test_augmentation_is_seeded_and_identity_without_knobs():
    image = np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    first = augmentation.variant(image, augment_cfg(), (0, 1, 0))
    assert first.shape == image.shape and first.dtype == np.uint8
    assert np.array_equal(first, augmentation.variant(image, augment_cfg(), (0, 1, 0)))
    assert not np.array_equal(first, augmentation.variant(image, augment_cfg(), (0, 1, 1)))
    still = augment_cfg(horizontal_flip=False, rotation=0, width_shift=0, height_shift=0, shear=0, zoom=0)
    assert np.array_equal(augmentation.variant(image, still, (0, 0, 0)), image)


def test_horizontal_flip_mirrors():
    image = np.zeros((8, 8, 3), np.uint8)
    image[:, :2] = 255
    flip_only = augment_cfg(rotation=0, width_shift=0, height_shift=0, shear=0, zoom=0)
    variants = [augmentation.variant(image, flip_only, (0, 0, c)) for c in range(8)]
    assert any(v[:, -2:].min() == 255 and v[:, :2].max() == 0 for v in variants)
