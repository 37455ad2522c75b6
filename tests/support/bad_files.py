"""Real files that break things, made for the tests: broken and hostile images, a messy folder of them, a full disk.
(Not a test module: test_images, test_sources, test_files and test_robustness use these.)"""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from support.images import make_image


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png(
    path: Path, width: int, height: int, row: bytes, bit_depth: int = 8, color_type: int = 0, chunks: bytes = b""
) -> Path:
    """A PNG written row by row (a 12000x9000 one costs a row of memory, not the image); every row is `row`.
    `chunks` go before the pixels (a palette: PLTE, its transparency: tRNS)."""
    z = zlib.compressobj(9)
    data = b"".join(z.compress(b"\0" + row) for _ in range(height)) + z.flush()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0))
        + chunks
        + png_chunk(b"IDAT", data)
        + png_chunk(b"IEND", b"")
    )
    return path


def gray16_png(path: Path, width: int, height: int) -> Path:
    """16-bit grey: decoded as float64 at full size it took 26 bytes a pixel."""
    return png(path, width, height, (bytes(range(256)) * (2 * width // 256 + 1))[: 2 * width], bit_depth=16)


def transparent_palette_png(path: Path, width: int, height: int) -> Path:
    """A palette with a transparent colour: converted to RGBA and composited at full size it took 17 bytes a pixel."""
    palette = png_chunk(b"PLTE", bytes(range(256)) * 3) + png_chunk(b"tRNS", bytes([0]) + bytes([255]) * 255)
    return png(path, width, height, (bytes(range(256)) * (width // 256 + 1))[:width], color_type=3, chunks=palette)


def jpeg_bytes(size=(64, 64), seed=0) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(
        buffer, "JPEG"
    )
    return buffer.getvalue()


def ppm_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (1, 2, 3)).save(buffer, "PPM")
    return buffer.getvalue()


EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nnewpath 0 0 moveto 10 10 lineto stroke\n%%EOF\n"


# name -> (bytes of a file that has an image extension but is not a usable image, reason in the report)
BROKEN = {
    "empty.jpg": (b"", "empty file"),
    "truncated.jpg": (jpeg_bytes()[:600], "corrupt or truncated image"),
    "page.png": (b"<!DOCTYPE html><html><body>404 Not Found</body></html>", "not a readable image"),
    "notes.JPG": (b"just some text\n", "not a readable image"),
    "netpbm.png": (ppm_bytes(), "not a readable image: the content is not JPEG, PNG"),  # only the whitelisted formats
    "vector.jpg": (EPS, "not a readable image"),  # the EPS plugin would run Ghostscript
}


def messy_folder(root: Path, outside: Path) -> dict:
    """Three odd class names with usable images of every kind, plus every kind of junk. -> expected skips."""
    for c, name in enumerate(["with space", "ünïcode", "dots.in.name", "NA"]):
        for i in range(4):
            make_image(root / name / f"img_{i}.png", (60 * c, 200 - 40 * c, 90), noise_seed=10 * c + i)
    make_image(root / "with space" / "UPPER.JPEG", (0, 0, 0), size=(8, 8))
    make_image(root / "with space" / "nested" / "deeper" / "x.Png", (0, 0, 0), size=(8, 8), noise_seed=5)
    Image.new("L", (9, 9), 10).save(root / "ünïcode" / "gray.png")
    Image.new("RGBA", (9, 9), (1, 2, 3, 100)).save(root / "ünïcode" / "alpha.png")
    Image.new("CMYK", (9, 9), (0, 0, 255, 0)).save(root / "dots.in.name" / "cmyk.jpg")
    Image.new("RGB", (5, 5), (1, 1, 1)).save(
        root / "dots.in.name" / "anim.gif", save_all=True, append_images=[Image.new("RGB", (5, 5), (9, 9, 9))]
    )
    make_image(root / "NA" / "tiny.bmp", (5, 5, 5), size=(1, 1))
    (root / "with space" / "inside_link.png").symlink_to(root / "NA" / "img_0.png")  # inside the root: followed
    # inside: followed
    (root / "NA" / "linked_folder").symlink_to(root / "with space" / "nested", target_is_directory=True)
    expected = {
        "Thumbs.db": "file outside any class folder",
        ".DS_Store": "hidden file",
        ".trash": "hidden folder",
        "empty class/": "no image file in this class folder; the class is left out",
        "with space/zero.jpg": "empty file",
        "with space/cut.jpg": "corrupt or truncated image",
        "with space/page.png": "not a readable image",
        "with space/README.txt": "not an image file extension",
        "with space/Thumbs.db": "not an image file extension",
        "with space/.DS_Store": "hidden file",
        "with space/._img_0.png": "hidden file",
        "with space/.cache": "hidden folder",
        "ünïcode/escape.png": "link points outside data.source",
        "ünïcode/loop.png": "broken link (a loop)",
        "ünïcode/dangling.png": "broken link",
        "ünïcode/fifo.png": "not a regular file",
        "ünïcode/back_up": "link to a folder that contains it (a loop)",
        "dots.in.name/notes.jpg": "not a readable image",
    }
    (root / "Thumbs.db").write_bytes(b"\0" * 64)
    (root / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    make_image(root / ".trash" / "old.png", (1, 1, 1))
    (root / "empty class").mkdir()
    (root / "with space" / "zero.jpg").write_bytes(b"")
    (root / "with space" / "cut.jpg").write_bytes(jpeg_bytes()[:500])
    (root / "with space" / "page.png").write_text("<html>moved</html>")
    (root / "with space" / "README.txt").write_text("readme")
    (root / "with space" / "Thumbs.db").write_bytes(b"\0" * 64)
    (root / "with space" / ".DS_Store").write_bytes(b"\0" * 64)
    (root / "with space" / "._img_0.png").write_bytes(b"\0\5\26\7 AppleDouble")
    make_image(root / "with space" / ".cache" / "thumb.png", (1, 1, 1))
    make_image(outside / "secret.png", (1, 1, 1))
    (root / "ünïcode" / "escape.png").symlink_to(outside / "secret.png")
    (root / "ünïcode" / "loop.png").symlink_to(root / "ünïcode" / "loop.png")
    (root / "ünïcode" / "dangling.png").symlink_to(root / "ünïcode" / "gone.png")
    os.mkfifo(root / "ünïcode" / "fifo.png")  # reading it would block forever
    (root / "ünïcode" / "back_up").symlink_to(root / "ünïcode", target_is_directory=True)
    (root / "dots.in.name" / "notes.jpg").write_text("not a jpeg")
    make_image(root / "with space" / 'new\nline, "quoted".png', (3, 3, 3), size=(7, 7))  # usable: CSV and JSON quote it
    make_image(root / "dots.in.name" / os.fsdecode(b"caf\xe9.png"), (4, 4, 4))  # Latin-1 bytes, not UTF-8
    expected["dots.in.name/caf\ufffd.png"] = "the name is not valid UTF-8; rename it"
    return expected


FOUND_BY_DECODING = {"with space/zero.jpg", "with space/cut.jpg", "with space/page.png", "dots.in.name/notes.jpg"}


def reasons_match(skipped: dict, expected: dict) -> None:
    assert set(skipped) == set(expected), f"unexpected: {set(skipped) ^ set(expected)}"
    for path, reason in expected.items():
        assert skipped[path].startswith(reason), f"{path}: {skipped[path]!r} does not start with {reason!r}"


def hostile_additions(root: Path) -> dict:
    """More of what a real folder holds, on top of messy_folder: the same picture under two labels and in two formats,
    a re-encoded copy, a strip, images costly to decode, branching links and look-alike class names. -> expected
    skips."""
    for c, name in enumerate(["with space", "ünïcode", "dots.in.name", "NA"]):  # enough images left in every class
        for i in range(4, 8):
            make_image(root / name / f"img_{i}.png", (60 * c, 200 - 40 * c, 90), noise_seed=10 * c + i)
    conflict = "an image with conflicting labels is left out, every copy of it"
    Image.open(root / "NA" / "img_4.png").save(root / "ünïcode" / "relabeled.bmp")  # the same pixels, another label
    # a copy, same label: kept
    Image.open(root / "dots.in.name" / "img_5.png").save(root / "dots.in.name" / "img_5.bmp")
    # a near-duplicate
    Image.open(root / "dots.in.name" / "img_6.png").save(root / "dots.in.name" / "img_6.jpg", quality=95)
    png(root / "NA" / "strip.png", 256, 100_000, bytes(256))
    gray16_png(root / "with space" / "deep16.png", 6000, 5000)  # 30 megapixels each: hundreds of MB if converted whole
    transparent_palette_png(root / "ünïcode" / "glass.png", 6000, 5000)
    levels = root / "dots.in.name" / "levels"
    for i in range(6):  # six levels, each with two links to the next: walked through both, 64 copies
        make_image(levels / str(i) / f"level_{i}.png", (i, 90, 200 - 9 * i), size=(12, 12), noise_seed=300 + i)
        if i < 5:
            for link in ("x", "y"):
                (levels / str(i) / link).symlink_to(levels / str(i + 1), target_is_directory=True)
    for i in range(3):  # "café" as one precomposed letter and as e + a combining accent: one class
        make_image(root / "caf\u00e9" / f"a{i}.png", (90, 40, 40 + i), noise_seed=400 + i)
        make_image(root / "cafe\u0301" / f"b{i}.png", (90, 40, 90 + i), noise_seed=410 + i)
    expected = {
        "NA/img_4.png": f"the same picture as ünïcode/relabeled.bmp (labeled 'ünïcode'): {conflict}",
        "ünïcode/relabeled.bmp": f"the same picture as NA/img_4.png (labeled 'NA'): {conflict}",
        # links into another class
        "with space/inside_link.png": f"the same picture as NA/img_0.png (labeled 'NA'): {conflict}",
        "NA/img_0.png": f"the same picture as with space/inside_link.png (labeled 'with space'): {conflict}",
        "NA/linked_folder/deeper/x.Png": "the same picture as with space/nested/deeper/x.Png (labeled 'with "
        f"space'): {conflict}",
        "with space/nested/deeper/x.Png": "the same picture as NA/linked_folder/deeper/x.Png (labeled 'NA'): "
        f"{conflict}",
        "NA/strip.png": "256x100000 pixels is thinner than 1:10",
    }
    for i in range(5):
        expected[f"dots.in.name/levels/{i}/x"] = f"link to a folder already listed as dots.in.name/levels/{i + 1}/"
        expected[f"dots.in.name/levels/{i}/y"] = f"link to a folder already listed as dots.in.name/levels/{i + 1}/"
    return expected


def write_csv(path: Path, text: str, encoding="utf-8") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode(encoding))
    return path


needs_dev_full = pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (Linux)")


DISK_FULL = "no space left on the device: free disk space"


def full_disk_at(path: Path):
    """A stand-in for files.temporary_sibling under which every write of `path` hits a full disk: its temporary file is
    a link to /dev/full (atomic_path creates its temporary file exclusively, never through a link, so the link cannot
    simply be planted beside it). Use it with monkeypatch, or in a stage's process through FULL_DISK_STAGE."""
    from transfer_learning import files

    real, target = files.temporary_sibling, Path(path).absolute()

    def to_dev_full(out: Path, made: list[Path] | None = None) -> Path:
        if Path(out).absolute() != target:
            return real(out, made)
        tmp = Path(out).with_name(Path(out).name + ".full.tmp")
        tmp.symlink_to("/dev/full")
        if made is not None:
            made.append(tmp)
        return tmp

    return to_dev_full


# `python -c FULL_DISK_STAGE <stage module> <output>` in full_disk_env(): runs the stage with a full disk under that
# one output.
FULL_DISK_STAGE = """
import runpy, sys
from support.bad_files import full_disk_at
from transfer_learning import files
files.temporary_sibling = full_disk_at(sys.argv[2])
runpy.run_module(sys.argv[1], run_name="__main__", alter_sys=True)
"""


def full_disk_env() -> dict:
    """FULL_DISK_STAGE's environment: this one, with the tests' folder importable (for support.bad_files)."""
    tests = str(Path(__file__).parent.parent)
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [tests, os.environ.get("PYTHONPATH")]))}
