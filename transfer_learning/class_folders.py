"""A source folder of class folders (`data.csv` empty): `<source>/<class>/**/<image>`.

Images in nested folders belong to their class folder. Class names are compared in Unicode NFC form:
`café` typed with a combining accent and with a precomposed `é` look alike and are one class.
"""

from __future__ import annotations

import unicodedata
from pathlib import Path

from transfer_learning.entries import Item, Skipped, listing, shown, unusable_entry, walk
from transfer_learning.errors import PipelineError


def class_folders(root: Path) -> tuple[list[Item], list[Skipped]]:
    """Every file under <root>/<class>/ (nested folders included) as an item of that class, or skipped with the reason.

    Hidden files and folders are skipped; links are followed only while they stay inside the root.
    """
    real_root = root.resolve()
    items, skipped, classes = [], [], []
    for entry in listing(root, root, skipped):
        reason = unusable_entry(entry, real_root)
        if reason:
            skipped.append(Skipped(shown(entry.name), reason))
        elif entry.is_dir():
            classes.append(entry)
        else:
            skipped.append(Skipped(entry.name, "file outside any class folder"))
    if not classes:
        raise PipelineError(
            f"data.source {root} has no class folders; put the images of each class in {root}/<class name>/"
        )
    found = {class_dir: walk(class_dir, root, real_root, skipped) for class_dir in classes}
    # look-alike names: one class
    labels = {class_dir: unicodedata.normalize("NFC", class_dir.name) for class_dir in classes}
    for class_dir, files in found.items():
        items += [
            Item(path=file.relative_to(root).as_posix(), label=labels[class_dir], file=str(file)) for file in files
        ]
        if not any(found[other] for other in classes if labels[other] == labels[class_dir]):
            skipped.append(Skipped(f"{class_dir.name}/", "no image file in this class folder; the class is left out"))
    return sorted(items, key=lambda item: Path(item.path).parts), skipped
