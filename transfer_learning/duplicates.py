"""Which images show the same picture, judged from their decoded pixels (NumPy and Pillow, no TensorFlow).

- Exact copies: the same decoded snapshot (sha256 of its shape and pixels), whatever the file's
  format, metadata or name: a PNG and a BMP of one picture, a photo re-saved with other EXIF, a link.
- Near-duplicates: a copy re-encoded (JPEG quality), resized or saved as another format with a
  lossy step. Two images are near-duplicates when their 64-bit difference hashes (dHash: which of
  two neighbours is brighter, on a 9x8 grey thumbnail) differ in at most NEAR_BITS bits and their
  8x8 colour thumbnails differ by at most NEAR_LEVELS (of 255) on average. The thumbnail check keeps
  look-alike but different pictures apart: handwritten digits often share a dHash (the committed 8x8
  digits have 107 pairs at distance 0), yet their closest pair differs by 4 levels; JPEG re-encodes
  (even at quality 20) and half-size copies of photos stay within 1. Flowers-17 holds 67 such pairs.

Copies and near-duplicates, linked transitively, form a group: split keeps each group in one split
(so no picture is in training and test at once), and the data report lists the near-duplicates. A group
is named by a key of its own members that ingest's params cannot change (ingest passes the sha256 of each
file's bytes): where split puts it then does not depend on the size of the snapshots.

Conflicting labels: an exact copy that carries another label (the same picture in two class folders,
or listed twice in a CSV with two labels) cannot be trusted either way, so every copy of it is left
out and reported. Near-duplicates with different labels are kept (a look-alike may be a different
picture) and listed in the report with their labels, for review. Regression targets are
measurements: copies with different targets are kept (in one split) and counted in the report.
"""
from __future__ import annotations

import hashlib
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
from PIL import Image

NEAR_BITS = 4
NEAR_LEVELS = 2.0
BANDS = NEAR_BITS + 1  # two hashes within NEAR_BITS bits agree on at least one of NEAR_BITS + 1 bands (pigeonhole)
BLOCK = 1024           # rows compared at a time within a band: bounds the memory of a band many hashes share
PAIRS = 100_000        # candidate pairs whose thumbnails are compared at a time


@dataclass(frozen=True)
class Fingerprint:
    sha256: str              # of the decoded snapshot: its shape and its pixels
    dhash: int               # 64-bit difference hash
    thumbnail: np.ndarray    # 8x8 RGB, uint8


def fingerprint(pixels: np.ndarray) -> Fingerprint:
    """(H, W, 3) uint8 snapshot -> its fingerprint."""
    digest = hashlib.sha256(f"{pixels.shape}".encode())
    digest.update(np.ascontiguousarray(pixels).data)
    image = Image.fromarray(pixels, "RGB")
    grey = np.asarray(image.convert("L").resize((9, 8), Image.Resampling.BOX), dtype=np.int16)
    bits = (grey[:, 1:] > grey[:, :-1]).ravel()
    thumbnail = np.asarray(image.resize((8, 8), Image.Resampling.BOX), dtype=np.uint8)
    return Fingerprint(digest.hexdigest(), int.from_bytes(np.packbits(bits).tobytes(), "big"), thumbnail)


def conflicting_labels(paths: list[str], labels: list[str], hashes: list[str]) -> dict[int, str]:
    """Rows whose picture (the same snapshot) also appears under another label -> why they are left out."""
    rows_of = defaultdict(list)
    for i, digest in enumerate(hashes):
        rows_of[digest].append(i)
    reasons = {}
    for rows in rows_of.values():
        if len({labels[i] for i in rows}) > 1:
            for i in rows:
                other = next(j for j in rows if labels[j] != labels[i])
                reasons[i] = (f"the same picture as {paths[other]} (labeled {labels[other]!r}): an image with conflicting labels "
                              "is left out, every copy of it")
    return reasons


def groups(prints: list[Fingerprint], keys: list[str]) -> list[str]:
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

    for i, j in near_pairs([first[d].dhash for d in distinct], np.stack([first[d].thumbnail for d in distinct]) if distinct else None):
        a, b = root(i), root(j)
        parent[max(a, b)] = min(a, b)
    name = {}
    for f, key in zip(prints, keys):
        group = root(index[f.sha256])
        name[group] = min(name.get(group, key), key)
    return [name[root(index[f.sha256])] for f in prints]


def near_pairs(dhashes: list[int], thumbnails: np.ndarray | None) -> list[tuple[int, int]]:
    """Pairs (i < j) of near-duplicates. Candidates share a band of their dHash (so no pair within NEAR_BITS is
    missed), then both conditions are checked; hashes are only compared within a band's bucket."""
    if not dhashes:
        return []
    hashes = np.array(dhashes, dtype=np.uint64)
    thumbs = thumbnails.reshape(len(hashes), -1).astype(np.int16)
    edges = np.linspace(0, 64, BANDS + 1).astype(int)
    pairs = set()
    for low, high in zip(edges, edges[1:]):
        band = (hashes >> np.uint64(low)) & np.uint64((1 << (high - low)) - 1)
        order = np.argsort(band, kind="stable")
        starts = np.flatnonzero(np.r_[True, band[order][1:] != band[order][:-1]])
        for bucket in np.split(order, starts[1:]):
            for start in range(0, len(bucket), BLOCK):
                rows = bucket[start:start + BLOCK]
                close = np.bitwise_count(hashes[rows][:, None] ^ hashes[bucket][None, :]) <= NEAR_BITS
                i, j = np.nonzero(close)
                i, j = rows[i], bucket[j]
                keep = i < j
                i, j = i[keep], j[keep]
                for at in range(0, len(i), PAIRS):
                    a, b = i[at:at + PAIRS], j[at:at + PAIRS]
                    similar = np.abs(thumbs[a] - thumbs[b]).mean(axis=1) <= NEAR_LEVELS
                    pairs.update(zip(a[similar].tolist(), b[similar].tolist()))
    return sorted(pairs)
