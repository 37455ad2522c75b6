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

At scale (near_components): the near-duplicates are never listed. Candidate pairs are checked and merged batch by
batch into a union-find, and a pair already in one component is not checked again. The exact search this replaced
kept every near pair in a Python set before uniting them: 2,000 frames of one scene made 1.5 million pairs (6.6 s,
375 MB), so 10,000 about 37 million (some 9 GB, extrapolated). Memory now, whatever the number of look-alikes, for N
images:

    about 120 N bytes  +  40 BLOCK^2 bytes (a tile: 10 MB)  +  600 PAIRS bytes (thumbnail checks: 5 MB)

on top of the Fingerprints (200 N bytes) and the keys; measured 119 bytes an image at 100,000 and 400,000 distinct
images (benchmarks/duplicates.py). The groups are exactly those of the exact search (tests/test_duplicates.py
keeps it as the reference): the components of one relation do not depend on the order its pairs are found in, and a
group's name is the smallest key in it.
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
SMALL = 64  # buckets up to this size are searched together, by offset (vectorised across buckets)
BLOCK = 512  # larger buckets are searched in BLOCK x BLOCK tiles: bounds the memory of a bucket many share
PAIRS = 8_192  # candidate pairs whose thumbnails are compared at a time


@dataclass(frozen=True)
class Fingerprint:
    sha256: str  # of the decoded snapshot: its shape and its pixels
    dhash: int  # 64-bit difference hash
    thumbnail: np.ndarray  # 8x8 RGB, uint8


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
                reasons[i] = (
                    f"the same picture as {paths[other]} (labeled {labels[other]!r}): an image with conflicting labels "
                    "is left out, every copy of it"
                )
    return reasons


class Fingerprints:
    """What `groups` needs of many images' fingerprints, in two parallel NumPy arrays (dHashes, thumbnails): 200 bytes
    an image, where a list of Fingerprint objects holds about 730 (an int, a hex string, an ndarray object and the
    Fingerprint's own dict each). The sha256 is not kept: ingest's rows have it, and exact copies need no pass of
    their own, as one snapshot has one dHash and one thumbnail: the near search joins them at distance 0.
    Grows like a list (by doubling) when appended past `capacity`; give the count when it is known, and no slack is
    left."""

    def __init__(self, capacity: int = 0):
        self._count = 0
        self._dhash = np.empty(capacity, dtype=np.uint64)
        self._thumbnails = np.empty((capacity, 8, 8, 3), dtype=np.uint8)

    @classmethod
    def of(cls, prints: list[Fingerprint]) -> Fingerprints:
        table = cls(len(prints))
        for f in prints:
            table.append(f)
        return table

    def __len__(self) -> int:
        return self._count

    def append(self, f: Fingerprint) -> None:
        if self._count == len(self._dhash):
            size = max(16, 2 * self._count)
            self._dhash = np.resize(self._dhash, size)
            self._thumbnails = np.resize(self._thumbnails, (size, 8, 8, 3))
        self._dhash[self._count] = f.dhash
        self._thumbnails[self._count] = f.thumbnail
        self._count += 1

    def without(self, rows) -> Fingerprints:
        """A copy without the given rows (indices), in the same order."""
        keep = np.setdiff1d(np.arange(self._count), np.fromiter(rows, dtype=np.int64))
        table = Fingerprints()
        table._count, table._dhash, table._thumbnails = len(keep), self.dhash[keep], self.thumbnails[keep]
        return table

    @property
    def dhash(self) -> np.ndarray:  # (n,) uint64
        return self._dhash[: self._count]

    @property
    def thumbnails(self) -> np.ndarray:  # (n, 8, 8, 3) uint8
        return self._thumbnails[: self._count]


def groups(prints: Fingerprints, keys: list[str]) -> list[str]:
    """The group of each image: the smallest of the `keys` (one per image) among its copies and near-duplicates
    (transitively)."""
    if len(prints) != len(keys):
        raise ValueError(f"{len(prints)} fingerprints but {len(keys)} keys")
    roots = near_components(prints.dhash, prints.thumbnails).tolist()
    name = {}
    for group, key in zip(roots, keys):
        name[group] = min(name.get(group, key), key)
    return [name[group] for group in roots]


class _Components:
    """Union-find over n nodes in two NumPy arrays, merged many edges at a time: a batch of edges is reduced to the
    roots it touches, and scipy's connected_components joins those (no Python loop over edges). Union by size keeps
    every tree O(log n) deep, so finding the roots of a batch takes a few vectorised gathers."""

    def __init__(self, n: int):
        self.parent = np.arange(n)
        self.size = np.ones(n, dtype=np.int64)

    def find(self, nodes: np.ndarray) -> np.ndarray:
        roots = self.parent[nodes]
        while True:
            up = self.parent[roots]
            if np.array_equal(up, roots):
                break
            roots = up
        self.parent[nodes] = roots  # path compression, for the nodes asked about
        return roots

    def merge(self, a: np.ndarray, b: np.ndarray) -> None:
        """Joins the components of a[k] and b[k] for every k."""
        a, b = self.find(a), self.find(b)
        apart = a != b
        if not apart.any():
            return
        a, b = a[apart], b[apart]
        touched, local = np.unique(np.concatenate([a, b]), return_inverse=True)
        # scipy.sparse is imported here, as only a merge needs it: importing it costs ingest 23 MB and 0.2 s
        from scipy.sparse import coo_matrix
        from scipy.sparse.csgraph import connected_components

        # int32 weights: the repeats of an edge are summed, and must not wrap round to 0
        weights = np.ones(len(a), dtype=np.int32)
        edges = coo_matrix((weights, (local[: len(a)], local[len(a) :])), shape=(len(touched),) * 2)
        count, component = connected_components(edges, directed=False)
        # each merged component's new root: its largest old root (the smallest index among equals)
        ranked = np.lexsort((touched, -self.size[touched], component))
        winner = ranked[np.r_[True, component[ranked][1:] != component[ranked][:-1]]]
        total = np.bincount(component, weights=self.size[touched], minlength=count).astype(np.int64)
        self.parent[touched] = touched[winner][component]
        self.size[touched[winner]] = total


def near_components(dhashes: np.ndarray, thumbnails: np.ndarray) -> np.ndarray:
    """The component of each image (an index among its own) under the near-duplicate relation, linked transitively.

    Candidates share one of BANDS bands of their dHash (two hashes within NEAR_BITS bits agree on at least one:
    pigeonhole), so hashes are only compared within a band's bucket, and a pair that shares an earlier band was checked
    there. No list of pairs is kept: each batch of candidates is checked and merged at once, and a pair whose images
    are already in one component is not checked again, so a bucket of n look-alikes costs about n thumbnail checks
    once they are joined, not n^2 / 2. What stays quadratic is a bucket of many images whose dHashes are close and
    whose thumbnails are not (look-alikes that are different pictures): each such pair is checked once, in bounded
    memory. Memory, whatever the buckets: arrays of n entries (about 120 bytes an image), the candidates of one
    offset among small buckets (at most n), one BLOCK x BLOCK tile of a large bucket (about 40 bytes a cell) and PAIRS
    thumbnail checks (about 600 bytes each)."""
    hashes = np.asarray(dhashes, dtype=np.uint64)
    thumbs = np.asarray(thumbnails, dtype=np.uint8)
    thumbs = thumbs.reshape(len(thumbs), int(np.prod(thumbs.shape[1:])))  # one row of levels an image
    components = _Components(len(hashes))
    edges = np.linspace(0, 64, BANDS + 1).astype(int)
    masks = [np.uint64(((1 << (high - low)) - 1) << low) for low, high in zip(edges, edges[1:])]

    def candidates(differ: np.ndarray, band: int) -> np.ndarray:
        """Where hashes that differ by the bits `differ` (and share `band`) are close enough to check their thumbnails,
        and share no earlier band."""
        close = np.bitwise_count(differ) <= NEAR_BITS
        for earlier in masks[:band]:
            close &= (differ & earlier) != 0
        return close

    def link(a: np.ndarray, b: np.ndarray) -> None:
        """Merges the pairs (a[k], b[k]) whose dHashes already passed and whose thumbnails pass, PAIRS at a time."""
        for at in range(0, len(a), PAIRS):
            i, j = a[at : at + PAIRS], b[at : at + PAIRS]
            apart = components.find(i) != components.find(j)
            i, j = i[apart], j[apart]
            x, y = thumbs[i], thumbs[j]
            difference = np.maximum(x, y)
            difference -= np.minimum(x, y, out=x)  # |x - y| in uint8, without a wider copy
            similar = difference.sum(axis=1, dtype=np.int64) / thumbs.shape[1] <= NEAR_LEVELS  # the mean, as np.mean
            components.merge(i[similar], j[similar])

    for band, mask in enumerate(masks):
        key = hashes & mask
        order = np.argsort(key, kind="stable")
        starts = np.flatnonzero(np.r_[True, key[order][1:] != key[order][:-1]])
        sizes = np.diff(np.r_[starts, len(order)])
        del key
        # small buckets, all at once: the pairs of sorted positions (k, k + offset) that fall in one bucket
        size_at, rank = np.repeat(sizes, sizes), np.arange(len(order)) - np.repeat(starts, sizes)
        active = np.flatnonzero((size_at > 1) & (size_at <= SMALL))
        for offset in range(1, SMALL):
            active = active[rank[active] + offset < size_at[active]]
            if not len(active):
                break
            i, j = order[active], order[active + offset]
            close = candidates(hashes[i] ^ hashes[j], band)
            link(i[close], j[close])
        del size_at, rank, active
        # large buckets: BLOCK x BLOCK tiles, skipped once every image in them is in one component
        for start, size in zip(starts[sizes > SMALL], sizes[sizes > SMALL]):
            bucket = order[start : start + size]
            for r in range(0, size, BLOCK):
                rest = components.find(bucket[r:])
                if rest.min() == rest.max():
                    break
                rows = bucket[r : r + BLOCK]
                for c in range(r, size, BLOCK):
                    cols = bucket[c : c + BLOCK]
                    row_roots, col_roots = components.find(rows), components.find(cols)
                    if row_roots.min() == row_roots.max() == col_roots.min() == col_roots.max():
                        continue
                    close = candidates(hashes[rows][:, None] ^ hashes[cols][None, :], band)
                    close &= row_roots[:, None] != col_roots[None, :]
                    if c == r:
                        close = np.triu(close, 1)
                    i, j = np.nonzero(close)
                    link(rows[i], cols[j])
    return components.find(np.arange(len(hashes)))
