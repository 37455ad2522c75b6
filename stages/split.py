"""Stage split: manifest -> train/val/test assignment, stratified by class (or target bin), seeded.

Copies and near-duplicates of a picture (one `group` of the manifest) always land in the same split,
and where a picture lands depends on its file's bytes and split.seed, not on the order of the rows or on ingest's params
(transfer_learning/splitting.py). With subjects (the manifest's `subject` column, from split.group_column or
split.filename_groups) every image of a subject does too, with its copies (transfer_learning/grouping.py): split.csv
then names each image's group, which train-head's k-fold folds keep together. metrics/split.json says what each
split holds: images, groups (a picture with its copies, and its subject's images) and subjects.
"""

import pandas as pd

from transfer_learning import files, grouping, params, paths, splitting
from transfer_learning.errors import PipelineError, run


def main():
    p = params.load()
    # what the assignment reads (file_sha256: the order of regression ties); subject: there with subjects only
    manifest = files.read_manifest(paths.MANIFEST, p.data.task, ("path", "label", "file_sha256", "group", "subject"))
    if p.data.task == "classification" and manifest["label"].nunique() < 2:
        raise PipelineError(
            f"the data has only one usable class ({manifest['label'].iloc[0]!r}); "
            f"classification needs at least 2 (skipped files are listed in {paths.DATA_REPORT})"
        )
    stratum = splitting.strata(manifest, p.data.task, p.split.bins)
    subject = manifest["subject"] if "subject" in manifest else None
    if subject is None:
        split, unit = splitting.assign(manifest, stratum, p.split.val, p.split.test, p.split.seed), manifest["group"]
        columns = {"path": manifest["path"], "split": split}
    else:
        split, unit = splitting.assign_subjects(manifest, stratum, p.split.val, p.split.test, p.split.seed)
        columns = {"path": manifest["path"], "split": split, "group": unit}
    held = grouping.counts(split, unit, subject, paths.SPLITS)
    files.write_csv(paths.SPLIT, pd.DataFrame(columns))
    files.write_json(paths.SPLIT_REPORT, held)
    of_subjects = " of {subjects} subjects" if subject is not None else ""
    shown = (f"{name} {n['images']} images" + of_subjects.format(**n) for name, n in held.items())
    print("split:", ", ".join(shown))


if __name__ == "__main__":
    run(main)
