"""The images the models see, decoded from their files when read (image_sets.py): the pixels normalize and augment
stored before 2026-12-03 (decode, square, the seeded variant), whatever rows a batch asks for and in any order; a file
changed after ingest is one line, not another picture."""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import pytest

from support.images import make_image
from transfer_learning import augmentation, image_sets, images
from transfer_learning.errors import PipelineError
from transfer_learning.records import Augmentation, ImageFiles, Preparation

PREPARATION = Preparation(max_short_side=64, max_megapixels=1.0, image_size=32, resize="crop")
AUGMENT = Augmentation(
    copies=2, seed=7, horizontal_flip=True, rotation=20.0, width_shift=0.1, height_shift=0.1, shear=5.0, zoom=0.1
)


@pytest.fixture
def source(tmp_path):
    files = [
        make_image(
            tmp_path / "src" / f"c{i % 2}" / f"{i}.jpg", (40 * i, 90, 200 - 30 * i), size=(50 + 7 * i, 40), noise_seed=i
        )
        for i in range(5)
    ]
    rows = pd.DataFrame(
        {
            "path": [f.relative_to(tmp_path / "src").as_posix() for f in files],
            "file_sha256": [hashlib.sha256(f.read_bytes()).hexdigest() for f in files],
        }
    )
    return tmp_path / "src", files, rows


def variants(rows: pd.DataFrame, copies: int) -> pd.DataFrame:
    per = copies + 1
    return pd.DataFrame(
        {
            "path": np.repeat(rows["path"], per).to_numpy(),
            "file_sha256": np.repeat(rows["file_sha256"], per).to_numpy(),
            "image": np.repeat(np.arange(len(rows)), per),
            "copy": np.tile(np.arange(per), len(rows)),
        }
    )


def test_rows_are_the_pixels_the_stored_arrays_held_in_any_order(source):
    root, files, rows = source
    stored = [images.square(images.decode(f, 64, 10**6)[0], 32, "crop") for f in files]  # what normalize stored
    expected = np.stack(
        [
            picture if c == 0 else augmentation.variant(picture, AUGMENT, (AUGMENT.seed, i, c - 1))
            for i, picture in enumerate(stored)
            for c in range(3)
        ]
    )  # what augment stored
    augmented = image_sets.ImageSet(
        variants(rows, 2), ImageFiles(source=str(root), csv="", preparation=PREPARATION), AUGMENT
    )
    assert augmented.shape == (15, 32, 32, 3) and augmented.dtype == np.uint8 and len(augmented) == 15
    np.testing.assert_array_equal(np.asarray(augmented), expected)
    shuffled = np.array([14, 0, 7, 3, 3])
    np.testing.assert_array_equal(augmented[shuffled], expected[shuffled])
    np.testing.assert_array_equal(augmented[2:9], expected[2:9])
    np.testing.assert_array_equal(augmented[4], expected[4])
    plain = image_sets.ImageSet(rows, ImageFiles(source=str(root), csv="", preparation=PREPARATION))
    np.testing.assert_array_equal(np.asarray(plain), np.stack(stored))


def test_closing_a_set_stops_its_decoding_threads_and_reading_again_starts_new_ones(source):
    root, files, rows = source
    with image_sets.ImageSet(rows, ImageFiles(source=str(root), csv="", preparation=PREPARATION)) as listed:
        first = listed[0:3]
        threads = list(listed._pool._threads)
        assert threads and all(thread.is_alive() for thread in threads)
    assert listed._pool is None and not any(thread.is_alive() for thread in threads)
    np.testing.assert_array_equal(listed[0:3], first)
    listed.close()


def test_a_file_changed_after_ingest_is_one_line_naming_it(source):
    root, files, rows = source
    listed = image_sets.ImageSet(rows, ImageFiles(source=str(root), csv="", preparation=PREPARATION))
    make_image(files[3], (0, 0, 0), size=(50, 40))  # another picture under the same name
    with pytest.raises(PipelineError, match=r"3\.jpg changed after ingest read it .*run `dvc repro`"):
        listed[3]
    files[1].unlink()
    with pytest.raises(PipelineError, match=r"1\.jpg: cannot read it .*run `dvc repro`"):
        listed[0:2]


def test_paths_of_a_csv_source_are_relative_to_its_folder(tmp_path):
    file = make_image(tmp_path / "data" / "faces" / "a.png", (120, 80, 60))
    rows = pd.DataFrame({"path": ["a.png"], "file_sha256": [hashlib.sha256(file.read_bytes()).hexdigest()]})
    listed = image_sets.ImageSet(
        rows, ImageFiles(source=str(tmp_path / "data"), csv="faces/labels.csv", preparation=PREPARATION)
    )
    assert listed[0].shape == (32, 32, 3)
