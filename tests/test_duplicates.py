"""transfer_learning/duplicates.py: the same picture found by its pixels (exact copies in any format,
near-duplicates), and what happens to a picture under two labels."""

from __future__ import annotations

import importlib.util
import io
import json
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from support.images import make_image
from support.projects import ROOT, run_stage, stage_project
from transfer_learning import duplicates, images

# The exact search it replaced, and the pictures: benchmarks/duplicates_reference.py (loaded by its path: benchmarks/
# is no package), one copy for this file and the benchmark.
REFERENCE = ROOT / "benchmarks" / "duplicates_reference.py"
_spec = importlib.util.spec_from_file_location("duplicates_reference", REFERENCE)
reference = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(reference)
exact_groups, photo, frames = reference.exact_groups, reference.photo, reference.frames


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
    keys = [str(path) for path in files]
    found = duplicates.groups(duplicates.Fingerprints.of(prints), keys)
    assert len(prints) == 1797 and len(set(found)) == 1797 and found == exact_groups(prints, keys)
    assert sum(a.dhash == b.dhash for i, a in enumerate(prints) for b in prints[i + 1 : i + 200]) > 0, (
        "the hashes alone collide"
    )


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
    assert skipped == {
        "cats/c0.png": f"the same picture as dogs/cat_copy.png (labeled 'dogs'): {conflict}",
        "dogs/cat_copy.png": f"the same picture as cats/c0.png (labeled 'cats'): {conflict}",
        "cats/c1.png": f"the same picture as dogs/cat_resaved.bmp (labeled 'dogs'): {conflict}",
        "dogs/cat_resaved.bmp": f"the same picture as cats/c1.png (labeled 'cats'): {conflict}",
        "cats/c2.png": f"the same picture as kittens/k0.png (labeled 'kittens'): {conflict}",
        "kittens/k0.png": f"the same picture as cats/c2.png (labeled 'cats'): {conflict}",
        "cats/c3.png": f"the same picture as kittens/k1.bmp (labeled 'kittens'): {conflict}",
        "kittens/k1.bmp": f"the same picture as cats/c3.png (labeled 'cats'): {conflict}",
        "cats/c4.png": f"the same picture as kittens/k2.png (labeled 'kittens'): {conflict}",
        "kittens/k2.png": f"the same picture as cats/c4.png (labeled 'cats'): {conflict}",
        "kittens/": "no usable image of this class; the class is left out",
    }
    assert report["classes"] == {"cats": 3, "dogs": 5}
    for stage in ("split", "normalize"):
        assert run_stage(project, stage).returncode == 0
    assert json.loads((project / "data/normalized/encoding.json").read_text())["classes"] == ["cats", "dogs"]


def near(a: duplicates.Fingerprint, b: duplicates.Fingerprint) -> bool:
    return (
        bin(a.dhash ^ b.dhash).count("1") <= duplicates.NEAR_BITS
        and np.abs(a.thumbnail.astype(int) - b.thumbnail).mean() <= duplicates.NEAR_LEVELS
    )


def planted(seed: int, n: int, shared_low_bits: int = 0):
    """n random fingerprints and planted relations among more, shuffled -> (prints, keys, pairs in one group, pairs in
    two). Planted: near pairs at the limits (4 bits and a mean of exactly 2 levels), pairs just past either limit,
    exact copies (one snapshot, two files), chains a-b-c and a-b-d whose ends are not near-duplicates (c is 6 bits from
    a, d 3 levels), and clusters of one dHash (sizes around SMALL and above BLOCK) whose thumbnails are near or far at
    random. With `shared_low_bits`, every hash has the same lowest bits: one bucket of them all, searched tile by
    tile."""
    rng = np.random.default_rng(seed)
    low = (1 << shared_low_bits) - 1
    common = int(rng.integers(0, 2**63)) & low
    prints = []

    def add(dhash: int, thumbnail: np.ndarray, sha256: str | None = None) -> int:
        prints.append(
            duplicates.Fingerprint(
                sha256 or rng.bytes(32).hex(), (dhash & ~low) | common, np.clip(thumbnail, 0, 255).astype(np.uint8)
            )
        )
        return len(prints) - 1

    def flip(dhash: int, bits: int | list) -> int:
        """dhash with `bits` bits flipped: that many at random, or those listed."""
        for bit in rng.choice(np.arange(shared_low_bits, 64), bits, replace=False) if isinstance(bits, int) else bits:
            dhash ^= 1 << int(bit)
        return dhash

    def base() -> tuple[int, np.ndarray]:
        return int(rng.integers(0, 2**63)) * 2 + int(rng.integers(0, 2)), rng.integers(20, 236, (8, 8, 3))

    for _ in range(n):
        add(*base())
    together, apart = [], []
    steps = np.arange(192).reshape(8, 8, 3) % 2 + 1  # 1, 2, 1, 2, ...: a mean of 1.5 levels
    for _ in range(40):
        h, t = base()
        together.append((add(h, t), add(flip(h, 4), t + 2)))  # at both limits: near
        h, t = base()
        apart.append((add(h, t), add(flip(h, 5), t)))  # 5 bits
        h, t = base()
        apart.append((add(h, t), add(flip(h, 1), t + 2 + (np.arange(192) == 0).reshape(8, 8, 3))))  # 2 + 1/192
        h, t = base()
        a = add(h, t)
        together.append((a, add(h, t, prints[a].sha256)))  # an exact copy
        bits = rng.choice(np.arange(shared_low_bits, 64), 7, replace=False)
        b = add(flip(h, bits[:3]), t + steps)  # 3 bits, 1.5 levels
        c = add(flip(prints[b].dhash, bits[3:6]), prints[b].thumbnail + steps % 2)  # a-c: 6 bits, 2.0 levels
        d = add(flip(prints[b].dhash, bits[6:]), prints[b].thumbnail + steps)  # a-d: 4 bits, 3.0 levels
        assert all(near(prints[x], prints[y]) for x, y in ((a, b), (b, c), (b, d))), "a chain"
        assert not near(prints[a], prints[c]) and not near(prints[a], prints[d]), "whose ends are not near-duplicates"
        together += [(a, c), (a, d)]
    for size in (2, 64, 65, 200, 700):
        h, t = base()
        members = [
            add(h, t + rng.integers(-1, 2, t.shape) if rng.random() < 0.5 else rng.integers(20, 236, t.shape))
            for _ in range(size)
        ]
        apart += [(i, j) for i, j in zip(members, members[1:]) if not near(prints[i], prints[j])][:1]
    order = rng.permutation(len(prints))
    position = np.argsort(order)
    keys = [rng.bytes(32).hex() for _ in prints]
    return (
        [prints[i] for i in order],
        keys,
        [(position[a], position[b]) for a, b in together],
        [(position[a], position[b]) for a, b in apart],
    )


@pytest.mark.parametrize("seed, shared_low_bits", [(0, 0), (1, 0), (2, 12)])
def test_planted_near_pairs_and_chains_are_grouped_as_the_exact_search_groups_them(seed, shared_low_bits):
    """The tiled search must give exactly today's groups (the transitive closure, the same names): checked against the
    exact search on random fingerprints with planted near-duplicates, chains, limits and copies, in any order."""
    prints, keys, together, apart = planted(seed, 3000, shared_low_bits)
    found = duplicates.groups(duplicates.Fingerprints.of(prints), keys)
    assert found == exact_groups(prints, keys)
    assert all(found[a] == found[b] for a, b in together) and all(found[a] != found[b] for a, b in apart)
    assert len(together) == 160 and len(apart) == 85 and len(set(found)) < len(prints) - 600, "the plants are there"
    order = np.random.default_rng(seed + 100).permutation(len(prints))
    shuffled = duplicates.groups(duplicates.Fingerprints.of([prints[i] for i in order]), [keys[i] for i in order])
    assert shuffled == [found[i] for i in order]


def test_pairs_at_the_edges_of_buckets_and_tiles_are_found():
    """Near pairs that share one band only (one bit apart in each other band), placed where an off-by-one would lose
    them: the first and last images of buckets of SMALL - 1, SMALL and SMALL + 1 (searched by offset, or in tiles),
    both sides of a tile's edge, the diagonal tiles, and beside a tile that is already one component."""
    rng = np.random.default_rng(7)
    small, block = duplicates.SMALL, duplicates.BLOCK
    edges = np.linspace(0, 64, duplicates.BANDS + 1).astype(int)
    first_band, others = (1 << int(edges[1])) - 1, sum(1 << int(e) for e in edges[1:-1])
    prints, planted_pairs = [], []
    for bucket, size in enumerate((2, small - 1, small, small + 1, block, block + 1, 2 * block + 3)):
        hashes = [(int(h) & ~first_band) | (bucket + 1) for h in rng.integers(0, 2**63, size)]
        thumbs = list(rng.integers(20, 200, (size, 8, 8, 3)))
        if size > 2 * block:  # a tile that is one component, and a near-duplicate of it in the next one
            cluster = thumbs[0]
            for k in range(block):
                hashes[k], thumbs[k] = hashes[0], cluster + rng.integers(-1, 2, cluster.shape)
            hashes[block + 5], thumbs[block + 5] = hashes[0] ^ others, cluster + 1
            planted_pairs += [(len(prints) + k, len(prints) + block + 5) for k in range(block)]
        ends = [
            (0, size - 1),
            (1, 2),
            (size - 3, size - 2),
            (block - 1, block),
            (0, 2 * block),
            (block + 1, 2 * block + 2),
        ]
        pairs = {q: p for p, q in ends if 0 <= p < q < size and q != block + 5}
        for q in sorted(pairs):
            hashes[q], thumbs[q] = hashes[pairs[q]] ^ others, thumbs[pairs[q]] + 2
            planted_pairs.append((len(prints) + pairs[q], len(prints) + q))
        prints += [duplicates.Fingerprint(rng.bytes(32).hex(), h, t.astype(np.uint8)) for h, t in zip(hashes, thumbs)]
    keys = [rng.bytes(32).hex() for _ in prints]
    found = duplicates.groups(duplicates.Fingerprints.of(prints), keys)
    assert found == exact_groups(prints, keys)
    planted_groups = list(range(len(prints)))  # the planted pairs, linked transitively (nothing else is near)
    for a, b in planted_pairs:
        old, new = planted_groups[b], planted_groups[a]
        planted_groups = [new if g == old else g for g in planted_groups]
    assert len(set(zip(found, planted_groups))) == len(set(found)) == len(set(planted_groups))


def encoded(picture: Image.Image, fmt: str, **options) -> np.ndarray:
    buffer = io.BytesIO()
    picture.save(buffer, format=fmt, **options)
    return np.asarray(Image.open(buffer).convert("RGB"))


def test_photo_families_are_grouped_as_the_exact_search_groups_them():
    """Copies, JPEG re-encodes and half-size copies of 12 photos: 12 groups, the exact search's."""
    prints, family = [], []
    for seed in range(12):
        picture = photo(seed)
        half = picture.resize((60, 45), Image.Resampling.LANCZOS)
        for pixels in (
            np.asarray(picture),
            np.asarray(picture),
            encoded(picture, "JPEG", quality=85),
            encoded(picture, "JPEG", quality=50),
            np.asarray(half),
        ):
            prints.append(duplicates.fingerprint(pixels))
            family.append(seed)
    keys = [f"{seed}-{i}" for i, seed in enumerate(family)]
    found = duplicates.groups(duplicates.Fingerprints.of(prints), keys)
    assert found == exact_groups(prints, keys)
    assert len(set(found)) == 12
    assert all(len({g for g, f in zip(found, family) if f == seed}) == 1 for seed in range(12))


def test_fingerprints_are_kept_in_arrays_and_rows_can_be_left_out():
    prints = [duplicates.fingerprint(pixels) for pixels in frames(5)]
    table = duplicates.Fingerprints()
    for f in prints:
        table.append(f)
    assert len(table) == 5 and table.dhash.tolist() == [f.dhash for f in prints]
    assert np.array_equal(table.thumbnails, np.stack([f.thumbnail for f in prints]))
    kept = table.without({1, 3})
    assert kept.dhash.tolist() == [prints[i].dhash for i in (0, 2, 4)] and len(table) == 5
    assert duplicates.groups(duplicates.Fingerprints(), []) == []


def peak_of(project, stage: str) -> tuple[subprocess.CompletedProcess, float]:
    """Runs a stage in a process of its own and -> (its result, its peak resident memory in MB). A wrapper process
    waits for it, so that the peak is the stage's, not that of any other child this test process had."""
    wrapper = (
        "import resource, subprocess, sys; "
        "code = subprocess.run([sys.executable, sys.argv[1]], stdout=2).returncode; "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(code)"
    )
    result = subprocess.run(
        [sys.executable, "-c", wrapper, f"stages/{stage}.py"], cwd=project, capture_output=True, text=True
    )
    return result, int(result.stdout.split()[-1]) / 1024 if result.stdout.strip() else float("nan")


def test_two_thousand_near_identical_frames_are_one_group_in_bounded_memory(tmp_path):
    """The exact search kept every near pair in a set: these 2,000 frames make 1.5 million pairs and ingest peaked at
    464-470 MB (20 images: 90 MB); 10,000 would need some 9 GB. The tiled search never holds the pairs: ingest peaks at
    126 MB (20 images: 112, scipy.sparse included), its memory does not grow with the number of look-alikes, and its
    groups are the exact search's. The bound asserted, 200 MB, leaves room for other Python and library versions."""
    source = tmp_path / "images"
    (source / "scene").mkdir(parents=True)
    (source / "other").mkdir()
    for i, pixels in enumerate(frames(2000)):
        Image.fromarray(pixels).save(source / "scene" / f"{i:04d}.png")
    for i in range(10):
        photo(500 + i, (64, 48)).save(source / "other" / f"{i}.png")
    project = stage_project(tmp_path, {"data.source": str(source)})
    result, peak_mb = peak_of(project, "ingest")
    assert result.returncode == 0, result.stderr[-2000:]
    assert peak_mb < 200, f"ingest peaked at {peak_mb:.0f} MB"
    manifest = pd.read_csv(project / "data/ingested/manifest.csv")
    prints = [duplicates.fingerprint(images.decode(source / path, 256, 10**8)[0]) for path in manifest["path"]]
    assert manifest["group"].tolist() == exact_groups(prints, manifest["file_sha256"].tolist())
    scene = manifest["path"].str.startswith("scene/")
    assert manifest.loc[scene, "group"].nunique() == 1 and manifest["group"].nunique() == 11
    assert manifest.loc[scene, "group"].iloc[0] == manifest.loc[scene, "file_sha256"].min()
    frame = dict(zip(manifest["path"], prints))
    assert not near(frame["scene/0000.png"], frame["scene/0002.png"]), "2 pixels apart: linked only through others"


def test_the_duplicates_benchmark_runs_at_its_smallest_size():
    """A benchmark is code: it runs here at its smallest size, and its old and new searches give the same groups."""
    result = subprocess.run(
        [sys.executable, "benchmarks/duplicates.py", "--smallest"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    rows = [line for line in result.stdout.splitlines() if line.startswith(("| frames", "| random"))]
    assert len(rows) == 2 and all(row.endswith("| yes |") for row in rows), result.stdout
