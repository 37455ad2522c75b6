"""transfer_learning/sources.py: what a data.source folder (class folders, or a CSV) holds, before any decoding:
items with their labels, and every other entry skipped with the reason."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from support.bad_files import FOUND_BY_DECODING, messy_folder, reasons_match, write_csv
from support.images import make_image
from transfer_learning import class_folders, sources
from transfer_learning.errors import PipelineError


def test_class_folders_lists_images_and_reports_everything_else(class_folder):
    (class_folder / "red" / "notes.txt").write_text("hello")
    (class_folder / "red" / ".DS_Store").write_bytes(b"\0\1")
    (class_folder / "README.md").write_text("top-level file")
    make_image(class_folder / "blue" / "nested" / "deep.PNG", (0, 0, 255))
    items, skipped = class_folders.class_folders(class_folder)
    assert len(items) == 37 and {i.label for i in items} == {"red", "green", "blue"}
    assert "blue/nested/deep.PNG" in {i.path for i in items}, (
        "nested folders belong to their class; extensions are case-blind"
    )
    reasons = {s.path: s.reason for s in skipped}
    assert reasons["red/.DS_Store"] == "hidden file"
    assert reasons["red/notes.txt"].startswith("not an image file extension")
    assert reasons["README.md"] == "file outside any class folder"


def test_symlink_leaving_the_root_is_skipped(class_folder, tmp_path):
    outside = make_image(tmp_path / "outside.png", (1, 2, 3))
    (class_folder / "red" / "link.png").symlink_to(outside)
    _, skipped = class_folders.class_folders(class_folder)
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
    items, skipped = class_folders.class_folders(tmp_path / "images")
    assert sorted(i.path for i in items if i.label == "cats") == sorted(
        f"cats/levels/{i}/level_{i}.png" for i in range(levels + 1)
    )
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
        items, skipped = class_folders.class_folders(tmp_path / "images")
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
    items, _ = class_folders.class_folders(tmp_path / "images")
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
    csv.write_text(
        "image,label\nimgs/a.png,cat\n./imgs/a.png,cat\nimgs//b.png,cat\nimgs/../imgs/b.png,dog\nimgs/b_link.png,cat\n"
    )
    items, skipped = sources.list_source(str(csv.parent), csv.name, "classification", "image", "label")
    assert [(i.path, i.label) for i in items] == [("imgs/a.png", "cat")]
    assert [(s.path, s.reason) for s in skipped] == [
        ("imgs/a.png", "row 3: the same file as row 2"),
        ("imgs/b.png", "row 4: the same file has the label 'dog' in row 5; a file with conflicting labels is left out"),
        (
            "imgs/../imgs/b.png",
            "row 5: the same file has the label 'cat' in row 4; a file with conflicting labels is left out",
        ),
        (
            "imgs/b_link.png",
            "row 6: the same file has the label 'dog' in row 5; a file with conflicting labels is left out",
        ),
    ]


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
    assert [s.reason for s in skipped] == [
        "row 6: target is missing",  # the row a spreadsheet shows it on
        "row 7: 3 values but the header names 2 columns; quote a value that holds a comma",
    ]
    repeated = root / "repeated.csv"
    repeated.write_text("image,label,notes,label\na.png,cat,,dog\n")
    with pytest.raises(
        PipelineError,
        match=r"repeated.csv: the header names column 'label' \(data.target_column\) 2 times "
        r"\(columns 2, 4\); rename all but one$",
    ):
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
        "row 4: target '1e200' is beyond ±1e+30; rescale the column (e.g. to other units)",
    ]


def test_csv_manifest_skips_bad_rows_and_rejects_missing_columns(tmp_path):
    make_image(tmp_path / "data" / "a.png", (1, 1, 1))
    make_image(tmp_path / "outside.png", (1, 1, 1))
    csv = tmp_path / "data" / "labels.csv"
    pd.DataFrame(
        {"image": ["a.png", "a.png", "a.png", "../outside.png", "nope.png", ""], "age": ["3", "", "inf", "4", "5", "6"]}
    ).to_csv(csv, index=False)
    items, skipped = sources.list_source(str(csv.parent), csv.name, "regression", "image", "age")
    assert [(i.path, i.label) for i in items] == [("a.png", 3.0)]
    assert [s.reason for s in skipped] == [
        "row 3: target is missing",
        "row 4: target 'inf' is not a finite number written with digits 0-9 (like 12.5 or -3e2)",
        "row 5: path escapes the CSV's folder",
        "row 6: file not found",
        "row 7: image path is missing",
    ]
    with pytest.raises(PipelineError, match="has no column 'years'.*data.target_column.*image, age"):
        sources.list_source(str(csv.parent), csv.name, "regression", "image", "years")


def test_missing_source_is_a_clear_error(tmp_path):
    with pytest.raises(PipelineError, match="does not exist"):
        sources.list_source(str(tmp_path / "nowhere"), "", "classification", "image", "label")
    with pytest.raises(PipelineError, match="needs a CSV"):
        sources.list_source(str(tmp_path), "", "regression", "image", "label")


def test_messy_folder_lists_every_image_and_says_why_for_the_rest(tmp_path):
    expected = messy_folder(tmp_path / "images", tmp_path / "outside")
    items, skipped = class_folders.class_folders(tmp_path / "images")
    reasons_match(
        {s.path: s.reason for s in skipped}, {p: r for p, r in expected.items() if p not in FOUND_BY_DECODING}
    )
    paths = {i.path: i.label for i in items}
    assert FOUND_BY_DECODING < set(paths), "files that only decoding can judge are listed, then skipped by ingest"
    assert paths["with space/UPPER.JPEG"] == "with space" and paths["with space/nested/deeper/x.Png"] == "with space"
    assert paths["with space/inside_link.png"] == "with space" and paths["NA/linked_folder/deeper/x.Png"] == "NA"
    assert paths['with space/new\nline, "quoted".png'] == "with space"
    assert {i.label for i in items} == {"with space", "ünïcode", "dots.in.name", "NA"}
    assert not any("secret" in p or "trash" in p or "cache" in p for p in paths)
    assert [i.path for i in items] == sorted((i.path for i in items), key=lambda p: Path(p).parts), "a stable order"


def test_a_folder_without_class_folders_or_a_missing_source_is_an_error(tmp_path):
    (tmp_path / "flat").mkdir()
    make_image(tmp_path / "flat" / "a.png", (1, 2, 3))
    with pytest.raises(
        PipelineError, match=r"has no class folders; put the images of each class in .*/flat/<class name>/"
    ):
        sources.list_source(str(tmp_path / "flat"), "", "classification", "image", "label")
    (tmp_path / "empty").mkdir()
    with pytest.raises(PipelineError, match="has no class folders"):
        sources.list_source(str(tmp_path / "empty"), "", "classification", "image", "label")
    with pytest.raises(PipelineError, match="data.source .*nowhere does not exist"):
        sources.list_source(str(tmp_path / "nowhere"), "", "classification", "image", "label")
    (tmp_path / "data.txt").write_text("x")
    with pytest.raises(PipelineError, match="data.txt is not a folder$"):
        sources.list_source(str(tmp_path / "data.txt"), "", "classification", "image", "label")
    (tmp_path / "labels.csv").write_text("image,label\n")
    with pytest.raises(
        PipelineError, match=f"labels.csv is not a folder; for a CSV use data.source={tmp_path} and data.csv=labels.csv"
    ):
        sources.list_source(str(tmp_path / "labels.csv"), "", "classification", "image", "label")
    with pytest.raises(PipelineError, match=f"data.csv missing.csv is not a file in data.source {tmp_path}"):
        sources.list_source(str(tmp_path), "missing.csv", "classification", "image", "label")


def test_csv_errors_name_the_column_and_the_fix(tmp_path):
    make_image(tmp_path / "d" / "a.png", (1, 1, 1))
    wrong = write_csv(tmp_path / "d" / "wrong.csv", "file,species\na.png,cat\n")
    with pytest.raises(
        PipelineError, match=r"wrong.csv has no column 'image' \(data.path_column\); its columns are file, species"
    ):
        sources.list_source(str(wrong.parent), wrong.name, "classification", "image", "label")
    text = write_csv(tmp_path / "d" / "text.csv", "image,age\na.png,young\na.png,old\na.png,\n")
    with pytest.raises(
        PipelineError,
        match=r"column 'age' \(data.target_column\) has no numbers \(row 2: 'young'\); "
        r"data.task=regression needs a numeric target, or set data.task=classification",
    ):
        sources.list_source(str(text.parent), text.name, "regression", "image", "age")
    header_only = write_csv(tmp_path / "d" / "header.csv", "image,label\n")
    with pytest.raises(PipelineError, match="header.csv has no rows"):
        sources.list_source(str(header_only.parent), header_only.name, "classification", "image", "label")
    empty = write_csv(tmp_path / "d" / "empty.csv", "")
    with pytest.raises(PipelineError, match="not a readable CSV"):
        sources.list_source(str(empty.parent), empty.name, "classification", "image", "label")
    latin = write_csv(tmp_path / "d" / "latin.csv", "image,label\na.png,caf\u00e9\n", encoding="latin-1")
    with pytest.raises(PipelineError, match="not a readable CSV"):
        sources.list_source(str(latin.parent), latin.name, "classification", "image", "label")


def test_csv_rows_are_skipped_with_their_row_number(tmp_path):
    root = tmp_path / "d"
    make_image(root / "imgs" / "a.png", (1, 1, 1))
    make_image(root / "imgs" / "b.png", (2, 2, 2))
    make_image(tmp_path / "outside.png", (1, 1, 1))
    (root / "imgs" / "link.png").symlink_to(tmp_path / "outside.png")
    csv = write_csv(
        root / "labels.csv",
        "\ufeffimage , age\n"  # Excel's BOM and a space in the header
        "imgs/a.png,3.5\n"
        "imgs\\b.png,1234567.25\n"  # a Windows path
        "imgs/a.png,3.5\n"
        "../outside.png,4\n"
        f"{tmp_path / 'outside.png'},4\n"
        "imgs/../../outside.png,4\n"
        "imgs/link.png,4\n"
        "imgs/missing.png,4\n"
        "imgs/b.png,twelve\n"
        "imgs/b.png,nan\n"
        "imgs,5\n",
    )
    items, skipped = sources.list_source(str(csv.parent), csv.name, "regression", "image", "age")
    assert [(i.path, i.label) for i in items] == [("imgs/a.png", 3.5), ("imgs/b.png", 1234567.25)]
    assert [s.reason for s in skipped] == [
        "row 4: the same file as row 2",
        "row 5: path escapes the CSV's folder",
        "row 6: absolute path; paths must be relative to the CSV's folder",
        "row 7: path escapes the CSV's folder",
        "row 8: path escapes the CSV's folder",
        "row 9: file not found",
        "row 10: target 'twelve' is not a finite number written with digits 0-9 (like 12.5 or -3e2)",
        "row 11: target 'nan' is not a finite number written with digits 0-9 (like 12.5 or -3e2)",
        "row 12: not a regular file",
    ]


def test_folder_and_csv_paths_cannot_leave_their_root(tmp_path):
    secret = make_image(tmp_path / "private" / "secret.png", (1, 2, 3))
    root = tmp_path / "data"
    make_image(root / "cats" / "ok.png", (9, 9, 9))
    (root / "cats" / "file_link.png").symlink_to(secret)
    (root / "cats" / "dir_link").symlink_to(secret.parent, target_is_directory=True)
    (root / "dogs").symlink_to(secret.parent, target_is_directory=True)  # a whole class folder outside the root
    items, skipped = class_folders.class_folders(root)
    assert [i.path for i in items] == ["cats/ok.png"]
    assert {s.path: s.reason for s in skipped} == {
        "cats/file_link.png": "link points outside data.source",
        "cats/dir_link": "link points outside data.source",
        "dogs": "link points outside data.source",
    }
    csv = root / "labels.csv"
    csv.write_text(
        "image,label\n"
        "cats/ok.png,cat\n"
        f"../private/secret.png,x\n"
        f"{secret},x\n"
        "cats/../../private/secret.png,x\n"
        "cats/file_link.png,x\n"
        "cats/dir_link/secret.png,x\n"
        "dogs/secret.png,x\n"
        "~/secret.png,x\n"
    )
    items, skipped = sources.list_source(str(csv.parent), csv.name, "classification", "image", "label")
    assert [i.path for i in items] == ["cats/ok.png"]
    assert [s.reason for s in skipped] == [
        "row 3: path escapes the CSV's folder",
        "row 4: absolute path; paths must be relative to the CSV's folder",
        "row 5: path escapes the CSV's folder",
        "row 6: path escapes the CSV's folder",
        "row 7: path escapes the CSV's folder",
        "row 8: path escapes the CSV's folder",
        "row 9: file not found",
    ]
