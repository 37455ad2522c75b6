"""The near-duplicate search as it was before it was grouped tile by tile, and the pictures both are measured on:
the reference that tests/test_duplicates.py holds the new search to (group for group, name for name) and that
benchmarks/duplicates.py measures it against. Plain NumPy and Pillow, no test framework."""

from __future__ import annotations

import numpy as np
from PIL import Image

from transfer_learning import duplicates

# Every candidate pair kept in a set, then united.
EXACT_BLOCK = 1024
EXACT_PAIRS = 100_000


def exact_groups(prints: list[duplicates.Fingerprint], keys: list[str]) -> list[str]:
    """The group of each image: the smallest of the `keys` (one per image) among its copies and near-duplicates
    (transitively)."""
    distinct = sorted({f.sha256 for f in prints})
    index = {digest: i for i, digest in enumerate(distinct)}
    first = {}
    for f in prints:
        first.setdefault(f.sha256, f)
    parent = list(range(len(distinct)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    thumbnails = np.stack([first[d].thumbnail for d in distinct]) if distinct else None
    for i, j in exact_near_pairs([first[d].dhash for d in distinct], thumbnails):
        a, b = root(i), root(j)
        parent[max(a, b)] = min(a, b)
    name = {}
    for f, key in zip(prints, keys):
        group = root(index[f.sha256])
        name[group] = min(name.get(group, key), key)
    return [name[root(index[f.sha256])] for f in prints]


def exact_near_pairs(dhashes: list[int], thumbnails: np.ndarray | None) -> list[tuple[int, int]]:
    """Pairs (i < j) of near-duplicates. Candidates share a band of their dHash (so no pair within NEAR_BITS is missed),
    then both conditions are checked; hashes are only compared within a band's bucket."""
    if not dhashes:
        return []
    hashes = np.array(dhashes, dtype=np.uint64)
    thumbs = thumbnails.reshape(len(hashes), -1).astype(np.int16)
    edges = np.linspace(0, 64, duplicates.BANDS + 1).astype(int)
    pairs = set()
    for low, high in zip(edges, edges[1:]):
        band = (hashes >> np.uint64(low)) & np.uint64((1 << (high - low)) - 1)
        order = np.argsort(band, kind="stable")
        starts = np.flatnonzero(np.r_[True, band[order][1:] != band[order][:-1]])
        for bucket in np.split(order, starts[1:]):
            for start in range(0, len(bucket), EXACT_BLOCK):
                rows = bucket[start : start + EXACT_BLOCK]
                close = np.bitwise_count(hashes[rows][:, None] ^ hashes[bucket][None, :])
                close = close <= duplicates.NEAR_BITS
                i, j = np.nonzero(close)
                i, j = rows[i], bucket[j]
                keep = i < j
                i, j = i[keep], j[keep]
                for at in range(0, len(i), EXACT_PAIRS):
                    a, b = i[at : at + EXACT_PAIRS], j[at : at + EXACT_PAIRS]
                    similar = np.abs(thumbs[a] - thumbs[b]).mean(axis=1) <= duplicates.NEAR_LEVELS
                    pairs.update(zip(a[similar].tolist(), b[similar].tolist()))
    return sorted(pairs)


def photo(seed: int, size=(120, 90)) -> Image.Image:
    """A smooth picture (gradients and soft blobs), as photos are: what JPEG and resizing are made for."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0 : size[1], 0 : size[0]] / max(size)
    pixels = np.stack(
        [
            rng.uniform(40, 200) + 50 * np.sin(rng.uniform(2, 9) * x + rng.uniform(0, 6) * y + rng.uniform(0, 6))
            for _ in range(3)
        ],
        axis=-1,
    )
    for _ in range(4):
        cx, cy, r = rng.uniform(0, 1), rng.uniform(0, 0.75), rng.uniform(0.05, 0.2)
        pixels += rng.uniform(-80, 80, 3) * np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / r**2)[..., None]
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


def frames(n: int, seed: int = 3):
    """n near-identical frames (64x48) of one smooth scene, each with its own noise (+-2 levels) and shifted by 0, 1 or
    2 pixels: each is a near-duplicate of hundreds, frames 2 pixels apart are not near-duplicates (their thumbnails
    differ by about 3 levels), and all are linked through the 1-pixel ones: one group, found transitively."""
    scene = np.asarray(photo(seed, (100, 75)), dtype=np.int16)
    rng = np.random.default_rng(seed)
    for i in range(n):
        frame = scene[10:58, 10 + i % 3 : 74 + i % 3]
        yield np.clip(frame + rng.integers(-2, 3, frame.shape), 0, 255).astype(np.uint8)
