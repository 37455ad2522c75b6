"""Live metrics while a model trains: dvclive's Keras callback, for `dvc exp show`, VS Code's DVC extension and Studio.

At the end of every epoch the callback appends a row to <folder>/plots/metrics/{train,eval}/<metric>.tsv
(step 0 is the first epoch; `eval` is the validation set) and rewrites <folder>/metrics.json with that
epoch's figures, so a running `dvc exp run`, or a queued experiment, shows them before the stage ends.
dvc.yaml declares the folder (an output), its metrics.json (top-level `metrics`) and the loss curves
(top-level `plots`) itself: dvclive writes no dvc.yaml (dvcyaml=False) and saves no experiment of its own
(DVC records the stage). No timestamps are logged, so a rerun writes the same bytes.

dvclive's metrics.json holds the last epoch; the restored best epoch is metrics/<stage>.json (training.best_epoch).
"""

from __future__ import annotations

from pathlib import Path

import keras


def callbacks(folder: Path, chief: bool = True, resumed: int = 0, samples=None) -> list[keras.callbacks.Callback]:
    """The callback logging into `folder`; none on a multi_worker worker other than the chief (only the chief writes).
    `samples` (epoch_samples.Samples): also its grid of validation predictions, every epoch (plots/images).

    `resumed` > 0: an interrupted run goes on after that many epochs (resume.Backup.find has put their files back):
    their rows stay and the next epoch is logged as step `resumed`, as an uninterrupted run would. dvclive's own
    resume reads the step from metrics.json, which cannot tell one finished epoch (step 0) from none."""
    if not chief:
        return []
    from dvclive import Live
    from dvclive.keras import DVCLiveCallback

    live = Live(dir=str(folder), dvcyaml=False, save_dvc_exp=False, resume=resumed > 0)
    if resumed:
        live.step = resumed
    # the image, then the step
    return ([samples.callback(live)] if samples is not None else []) + [DVCLiveCallback(live=live)]
