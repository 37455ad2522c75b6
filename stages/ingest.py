"""Stage ingest: data.source -> a validated manifest (one row per usable image) and the data report.

Every file is hashed, then decoded (in parallel threads): EXIF orientation applied, converted to
RGB, shrunk so its shorter side is at most ingest.max_short_side. Unusable files are skipped and
listed with the reason in metrics/data.json. Identical pictures are recognised by their decoded
pixels, near-duplicates by a perceptual hash (transfer_learning/duplicates.py): a picture that appears
under two labels is left out, every copy of it, and copies and near-duplicates share a `group`, which
split keeps in one split. A group is named by the smallest sha256 of its files' bytes, not of their
decoded pixels, so the split does not move when an ingest param (ingest.max_short_side) changes them.
The pixels are not kept: the stages that need them decode the files again (image_sets.py), which costs
a decode per pass and saves a decoded copy of the dataset on disk (5-50x its files' size).
"""

import collections
import hashlib
from concurrent.futures import ThreadPoolExecutor

import pandas as pd
from tqdm import tqdm

from transfer_learning import duplicates, entries, files, images, params, paths, records, settings, sources
from transfer_learning.errors import PipelineError, run

BATCH = 64  # images decoded ahead of the writer: bounds memory whatever the dataset size
# pixels_sha256: of the decoded snapshot; file_sha256: of the file's bytes; group: copies and near-duplicates share one
# (duplicates.groups), named by the smallest file_sha256 among them
COLUMNS = ["path", "label", "pixels_sha256", "file_sha256", "group", "width", "height"]
SUBJECT = "subject"  # with split.group_column or split.filename_groups only: the image's subject, kept in one split


def load_item(item: entries.Item, max_short_side: int, max_pixels: int):
    """-> (row dict, fingerprint) or (None, reason). The file is decoded lazily: a huge file never sits in
    memory whole."""
    try:
        with open(item.file, "rb") as f:
            file_sha256 = hashlib.file_digest(f, "sha256").hexdigest()
        pixels, size = images.decode(item.file, max_short_side, max_pixels)
    except OSError as exc:
        return None, f"cannot read file ({exc.strerror or exc})"
    except images.Unusable as exc:
        return None, str(exc)
    row = {"path": item.path, "label": item.label, "file_sha256": file_sha256, "width": size[0], "height": size[1]}
    if item.subject is not None:
        row[SUBJECT] = item.subject
    return row, duplicates.fingerprint(pixels)


def main():
    p = params.load()
    items, skipped = sources.list_source(
        p.data.source,
        p.data.csv,
        p.data.task,
        p.data.path_column,
        p.data.target_column,
        group_column=p.split.group_column,
        filename_groups=p.split.filename_groups,
    )
    # the manifest gains a subject column only when subjects are named: the default run's stays byte for byte
    columns = COLUMNS + [SUBJECT] if p.split.group_column is not None or p.split.filename_groups else COLUMNS
    # a list per column, not a dict per image: ~500 bytes an image less; prints: 200 bytes an image, in arrays
    table, prints = {column: [] for column in columns if column != "group"}, duplicates.Fingerprints(len(items))
    labels = {str(item.label) for item in items}
    # each listing entry is freed once decoded (~600 bytes an image): the listing and the manifest never both whole
    pending = collections.deque(items)
    del items
    with (
        ThreadPoolExecutor(settings.workers()) as pool,
        tqdm(total=len(pending), desc="ingest: decoding", unit="img") as progress,
    ):  # closed before any error is shown
        while pending:
            batch = [pending.popleft() for _ in range(min(BATCH, len(pending)))]
            loaded = pool.map(
                lambda it: load_item(it, p.ingest.max_short_side, int(p.ingest.max_megapixels * 1e6)), batch
            )
            for item, (row, result) in zip(batch, loaded):
                if row is None:
                    skipped.append(entries.Skipped(item.path, result))
                    continue
                for column, value in (row | {"pixels_sha256": result.sha256}).items():
                    table[column].append(value)
                prints.append(result)
            images.return_freed_memory()  # the batch's decoding buffers: freed, but held between the rows kept
            progress.update(len(batch))
        if p.data.task == "classification":  # the same picture under two labels: every copy is left out
            conflicts = duplicates.conflicting_labels(table["path"], table["label"], table["pixels_sha256"])
            skipped += [entries.Skipped(table["path"][i], reason) for i, reason in conflicts.items()]
            if conflicts:
                table = {c: [v for i, v in enumerate(values) if i not in conflicts] for c, values in table.items()}
                prints = prints.without(conflicts)
        if not table["path"]:  # the report is still written, so the user can see why every file was skipped
            report(pd.DataFrame(columns=columns), skipped, p.data.task).write(paths.DATA_REPORT)
            reasons = "; ".join(f"{s.path}: {s.reason}" for s in skipped[:3])
            raise PipelineError(
                f"data.source {p.data.source}: no usable image"
                + (f" ({len(skipped)} skipped, e.g. {reasons}; every one is in {paths.DATA_REPORT})" if skipped else "")
            )
    # the groups first and the fingerprints freed, then the manifest in its column order (no reordered copy): the
    # fingerprints, the table and the manifest never all at once
    table["group"] = duplicates.groups(prints, table["file_sha256"])
    del prints
    manifest = pd.DataFrame({column: table.pop(column) for column in columns})
    if p.data.task == "classification":  # a class whose every file was skipped
        gone = sorted(labels - set(manifest["label"].astype(str)))
        skipped += [
            entries.Skipped(f"{label}/", "no usable image of this class; the class is left out") for label in gone
        ]
    files.write_csv(paths.MANIFEST, manifest, float_format=None)  # regression targets keep every digit
    report(manifest, skipped, p.data.task).write(paths.DATA_REPORT)
    print(f"ingest: {len(manifest)} images, {len(skipped)} skipped (listed in {paths.DATA_REPORT}) -> {paths.INGESTED}")


def report(manifest: pd.DataFrame, skipped: list, task: str) -> records.DataReport:
    """The data report: counts, exact copies, near-duplicates (kept, each group in one split) and every skipped file
    with its reason."""
    kind = {}
    if task == "classification":
        kind["classes"] = {
            str(name): int(count) for name, count in manifest["label"].value_counts().sort_index().items()
        }
    elif len(manifest):
        kind["target"] = {k: round(float(v), 6) for k, v in manifest["label"].astype(float).describe().items()}
        kind["duplicates_with_different_targets"] = int(
            (manifest.groupby("pixels_sha256")["label"].nunique() > 1).sum()
        )
    near = manifest.groupby("group").filter(lambda g: g["pixels_sha256"].nunique() > 1)
    near_duplicates = sorted(
        (
            records.NearDuplicates(
                paths=tuple(sorted(g["path"])),
                labels=tuple(sorted(set(g["label"]))) if task == "classification" else None,
            )
            for _, g in near.groupby("group")
        ),
        key=lambda group: group.paths,
    )
    return records.DataReport(
        images=len(manifest),
        skipped=len(skipped),
        duplicates=int(manifest["pixels_sha256"].duplicated().sum()),
        **kind,
        near_duplicates=tuple(near_duplicates),
        subjects=int(manifest[SUBJECT].nunique()) if SUBJECT in manifest else None,
        skipped_files=tuple(
            records.SkippedFile(path=s.path, reason=s.reason) for s in sorted(skipped, key=lambda s: s.path)
        ),
    )


if __name__ == "__main__":
    run(main)
