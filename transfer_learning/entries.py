"""The files and folders under a source folder, one entry at a time: which can be images, and why others are skipped.

Shared by every reader of images (class folders and CSVs for ingest, folders and CSVs for predict):
hidden files and folders (`.name`) are skipped, links are followed only while they stay inside the
root, names that are not UTF-8 are refused, and each real folder is listed once however many links
lead to it (iteratively: no recursion limit, however deep the folders).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


# slots, and the file as a str: an Item costs ~350 bytes where a dict and a Path made it ~670, and ingest holds one per
# file of the source until the manifest is built (docs/data.md#memory-of-ingest)
@dataclass(frozen=True, slots=True)
class Item:
    path: str  # as shown in reports: relative to the source root
    label: str | float
    file: str  # the image file's path
    subject: str | None = None  # split.group_column's value (or split.filename_groups'): its images share a split


@dataclass(frozen=True, slots=True)
class Skipped:
    path: str
    reason: str


def walk(class_dir: Path, root: Path, real_root: Path, skipped: list) -> list[Path]:
    """Image files under `class_dir`; everything else goes to `skipped`.

    Each real folder is listed once: first every folder reached without a link, then those reached through links,
    where a link to a folder already listed (a loop, or a second link to one folder) is skipped. So n levels of two
    links each cost n folders, not 2^n, and a real folder is never skipped in favour of a link to it. Iterative:
    no recursion limit, however deep the folders.
    """
    files = []
    listed = {class_dir.resolve(): class_dir}  # real folder -> the path it is listed under
    direct, linked = [(class_dir, class_dir.resolve())], []  # linked: reached through a link, in the order found
    while direct or linked:
        through_link = not direct
        folder, real = direct.pop() if direct else (linked.pop(0), None)
        if through_link:
            real = folder.resolve()
            if real in listed:
                loop = folder.parent.resolve().is_relative_to(real)
                skipped.append(
                    Skipped(
                        rel_shown(folder, root),
                        "link to a folder that contains it (a loop)"
                        if loop
                        else f"link to a folder already listed as {rel_shown(listed[real], root)}/",
                    )
                )
                continue
            listed[real] = folder
        for entry in listing(folder, root, skipped):
            reason = unusable_entry(entry, real_root)
            if reason:
                skipped.append(Skipped(rel_shown(entry, root), reason))
            elif entry.is_dir():
                if through_link or entry.is_symlink():
                    linked.append(entry)
                else:
                    listed[real / entry.name] = entry
                    direct.append((entry, real / entry.name))
            else:
                reason = unusable_file(entry)
                if reason:
                    skipped.append(Skipped(rel_shown(entry, root), reason))
                else:
                    files.append(entry)
    return files


def rel_shown(path: Path, root: Path) -> str:
    return shown(path.relative_to(root).as_posix())


def listing(folder: Path, root: Path, skipped: list) -> list[Path]:
    try:
        return sorted(folder.iterdir())
    except OSError as exc:
        skipped.append(Skipped(f"{folder.relative_to(root).as_posix()}/", f"cannot read folder ({exc.strerror})"))
        return []


def unusable_entry(entry: Path, real_root: Path) -> str | None:
    """Why a folder entry is not even looked at: hidden, a name reports cannot hold, or a link leaving the root.

    Only links can leave the root: an entry that is not one lies in its folder, which is inside the root."""
    if not utf8(entry.name):
        return "the name is not valid UTF-8; rename it"
    if entry.name.startswith("."):
        return "hidden folder" if entry.is_dir() else "hidden file"
    if not entry.is_symlink():
        return None
    try:
        target = entry.resolve()
    except (OSError, RuntimeError):  # RuntimeError: a symlink loop
        return "broken link (a loop)"
    if not target.is_relative_to(real_root):
        return "link points outside data.source"
    if not entry.exists():
        return "broken link"
    return None


def utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:  # bytes that are not UTF-8 come in as surrogates
        return False
    return True


def shown(path: str) -> str:
    """A path as the report can write it (invalid bytes become U+FFFD)."""
    return path if utf8(path) else path.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def unusable_file(file: Path) -> str | None:
    if not file.is_file():
        return "not a regular file"
    if file.suffix.lower() not in IMAGE_EXTENSIONS:
        return f"not an image file extension ({', '.join(sorted(IMAGE_EXTENSIONS))})"
    return None
