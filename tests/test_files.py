"""transfer_learning/files.py and transfer_learning/errors.py: outputs written atomically and durably, arrays read
without pickle, and a stage that fails (full or read-only disk, a signal) says so in one line and leaves no
half-written output."""

from __future__ import annotations

import errno
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from support.bad_files import DISK_FULL, full_disk_at, needs_dev_full
from transfer_learning import errors, files
from transfer_learning.errors import PipelineError


@needs_dev_full
@pytest.mark.parametrize(
    "write",
    [
        lambda p: files.save_npy(p, np.zeros((100, 100))),
        lambda p: files.write_json(p, {"a": 1}),
        lambda p: files.write_csv(p, __import__("pandas").DataFrame({"a": [1.5]})),
    ],
    ids=["npy", "json", "csv"],
)
def test_disk_full_is_one_line_and_leaves_nothing(tmp_path, monkeypatch, write):
    out = tmp_path / "out" / "result"
    monkeypatch.setattr(files, "temporary_sibling", full_disk_at(out))
    with pytest.raises(PipelineError) as info:
        write(out)
    assert str(info.value) == f"cannot write {out}: {DISK_FULL}"
    assert os.listdir(out.parent) == [], "neither the output nor its temporary file"


def test_disk_full_when_reserving_a_memory_mapped_array(tmp_path, monkeypatch):
    """npy_writer reserves the space first: on a full disk a later write to the mapping would kill the stage
    (SIGBUS)."""

    def no_space(fd, offset, length):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "posix_fallocate", no_space)
    out = tmp_path / "images.npy"
    with pytest.raises(PipelineError, match=f"^cannot write {out}: {DISK_FULL}$"):
        with files.npy_writer(out, (1000, 32, 32, 3), np.uint8):
            pytest.fail("must not be reached")
    assert os.listdir(tmp_path) == []


def test_reserving_really_allocates_the_file(tmp_path):
    out = tmp_path / "images.npy"
    with files.npy_writer(out, (64, 32, 32, 3), np.uint8) as array:
        [tmp] = tmp_path.glob("images.npy.*.tmp")
        blocks = os.stat(tmp).st_blocks * 512
        array[:] = 3
    assert blocks >= 64 * 32 * 32 * 3, "the space is on disk before any pixel is written"
    assert files.load_npy(out).sum() == 3 * 64 * 32 * 32 * 3


def write_memory_mapped(path: Path) -> None:
    with files.npy_writer(path, (4, 2), np.uint8) as array:
        array[:] = 1


@pytest.mark.parametrize(
    "write",
    [
        lambda p: files.write_json(p, {"a": 1}),
        lambda p: files.save_npy(p, np.zeros(10)),
        write_memory_mapped,
    ],
    ids=["json", "npy", "memory-mapped npy"],
)
def test_outputs_reach_the_disk_before_they_are_renamed_into_place(tmp_path, monkeypatch, write):
    """After a power loss, an output renamed into place (and recorded by DVC as done) must not be empty: the temporary
    file is fsynced before the rename, and the folder (which holds the rename) after it."""
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", str(src)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    out = tmp_path / "out" / "result"
    write(out)
    tmp = events[0][1]
    assert re.fullmatch(re.escape(str(out)) + rf"\.{os.getpid()}-[0-9a-f]{{8}}\.tmp", tmp), tmp
    assert events == [("fsync", tmp), ("replace", tmp), ("fsync", str(out.parent))], events


def test_a_file_in_the_way_of_the_output_folder(tmp_path):
    (tmp_path / "metrics").write_text("not a folder")
    with pytest.raises(PipelineError) as info:
        files.write_json(tmp_path / "metrics" / "data.json", {})
    assert (
        str(info.value)
        == f"cannot write {tmp_path / 'metrics' / 'data.json'}: a file is in the way where a folder is needed: move it"
    )


def test_read_only_file_system(tmp_path, monkeypatch):
    """EROFS cannot be produced without mounting; the rename that publishes the output fails as on a read-only mount."""

    def read_only(src, dst):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(src), None, str(dst))

    monkeypatch.setattr(os, "replace", read_only)
    out = tmp_path / "x.json"
    with pytest.raises(PipelineError, match=r"cannot write .*x.json: the file system is read-only: make it writable"):
        files.write_json(out, {})
    assert os.listdir(tmp_path) == []


@pytest.mark.skipif(
    os.geteuid() == 0, reason="root writes into read-only folders anyway; the same path is covered above"
)
def test_read_only_folder(tmp_path):
    folder = tmp_path / "locked"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        with pytest.raises(PipelineError, match="permission denied: fix the folder's permissions"):
            files.write_json(folder / "x.json", {})
    finally:
        folder.chmod(0o755)


def test_an_input_error_inside_a_write_is_not_blamed_on_the_output(tmp_path):
    with pytest.raises(PermissionError):
        with files.atomic_path(tmp_path / "out.csv"):
            raise PermissionError(errno.EACCES, "Permission denied", "/some/input.png")


@pytest.mark.parametrize(
    "failure, message",
    [
        (
            OSError(errno.ENOSPC, "No space left on device", "models/model.keras"),
            f"error: models/model.keras: {DISK_FULL}",
        ),
        (
            OSError(errno.EROFS, "Read-only file system", "plots/x.png"),
            "error: plots/x.png: the file system is read-only: ",
        ),
        (
            RuntimeError(
                "Unable to synchronously create file (file write failed: errno = 28, error message = 'No space left "
                "on device')"
            ),
            f"error: {DISK_FULL} (RuntimeError)",
        ),
    ],
)
def test_disk_errors_from_inside_libraries_are_one_line(capsys, failure, message):
    def main():
        raise failure

    with pytest.raises(SystemExit) as info:
        errors.run(main)
    assert info.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1


def test_other_errors_still_show_their_traceback():
    def main():
        raise FileNotFoundError(errno.ENOENT, "No such file or directory", "data/ingested/manifest.csv")

    with pytest.raises(FileNotFoundError):  # a bug or a missing upstream output: the traceback helps
        errors.run(main)


def test_a_failed_write_keeps_the_old_output_and_leaves_no_temporary_file(tmp_path):
    out = tmp_path / "out" / "a.npy"
    files.save_npy(out, np.arange(5))
    for failure in (RuntimeError("boom"), KeyboardInterrupt()):
        with pytest.raises(type(failure)):
            with files.npy_writer(out, (1000,), np.int64) as array:
                array[:10] = 7  # half-written...
                raise failure
        assert np.array_equal(files.load_npy(out), np.arange(5)) and os.listdir(out.parent) == ["a.npy"]
    files.save_npy(out, np.ones(3))
    assert np.array_equal(files.load_npy(out), np.ones(3)) and os.listdir(out.parent) == ["a.npy"]


SLOW_STAGE = """
import time
from transfer_learning import files
from transfer_learning.errors import run

def main():
    with files.atomic_path(files.Path("out.txt")) as tmp, open(tmp, "w") as f:
        f.write("partial")
        f.flush()
        print("writing", flush=True)
        time.sleep(60)

run(main)
"""


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signalled_stage_says_so_in_one_line_and_removes_its_temporary_file(tmp_path, signum):
    (tmp_path / "out.txt").write_text("previous run")
    stage = subprocess.Popen(
        [sys.executable, "-c", SLOW_STAGE], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert stage.stdout.readline() == "writing\n" and len(list(tmp_path.glob("out.txt.*.tmp"))) == 1
    stage.send_signal(signum)
    _, stderr = stage.communicate(timeout=30)
    assert stage.returncode == 130
    assert stderr == "error: interrupted; no output was half-written: run `dvc repro` again to finish\n"
    assert sorted(os.listdir(tmp_path)) == ["out.txt"] and (tmp_path / "out.txt").read_text() == "previous run"


class Payload:
    """Unpickling this creates `marker`: what a malicious array file would do, with a harmless effect."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def test_an_array_file_with_pickled_objects_is_refused(tmp_path):
    marker = tmp_path / "code-ran"
    evil = tmp_path / "train_images.npy"
    np.save(evil, np.array([Payload(marker)], dtype=object), allow_pickle=True)
    np.load(evil, allow_pickle=True)
    assert marker.exists(), "the payload is real"
    marker.unlink()
    for mmap in (False, True):
        with pytest.raises(
            PipelineError, match="train_images.npy holds Python objects, which are never unpickled; rerun the stage"
        ):
            files.load_npy(evil, mmap=mmap)
    assert not marker.exists()
    (tmp_path / "garbage.npy").write_bytes(b"\x93NUMPY\x01\x00garbage")
    with pytest.raises(PipelineError, match="garbage.npy is not a valid .npy array"):
        files.load_npy(tmp_path / "garbage.npy")


def test_a_link_at_a_guessable_temporary_name_is_never_written_through(tmp_path, monkeypatch):
    """In a shared folder (/tmp) someone plants links to a victim file at the names a write could use: the old fixed
    `out.csv.tmp`, a hidden variant, and (the random part guessed) the very name drawn first. The victim is untouched,
    out.csv is a regular file with the new content, and the planted links are left as they were (not ours to delete)."""
    import pandas as pd

    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    shared = tmp_path / "shared"
    shared.mkdir()
    planted = ["out.csv.tmp", ".out.csv.tmp", f"out.csv.{os.getpid()}-0000000a.tmp", "out.csv.999999999-0000000c.tmp"]
    for name in planted:
        (shared / name).symlink_to(victim)
    draws = iter(["0000000a", "0000000b"])
    monkeypatch.setattr("secrets.token_hex", lambda nbytes: next(draws))
    files.write_csv(shared / "out.csv", pd.DataFrame({"a": [1]}))
    assert victim.read_text() == "precious"
    assert not (shared / "out.csv").is_symlink() and (shared / "out.csv").read_text() == "a\n1\n"
    assert sorted(os.listdir(shared)) == sorted(planted + ["out.csv"])
    assert all((shared / name).is_symlink() for name in planted)


def test_two_writers_of_one_output_each_publish_a_whole_file(tmp_path):
    """Two runs writing one output at once (two `predict.py` with the default -o predictions.csv): each fills its own
    temporary file, so the output is exactly one run's complete content, and neither fails. The barrier makes both
    write at the same time, half before and half after the other has started."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    out = tmp_path / "predictions.csv"
    both_writing = threading.Barrier(2)

    def write(run: str) -> None:
        with files.atomic_path(out) as tmp, open(tmp, "w") as f:
            f.write(f"{run}: first half\n")
            f.flush()
            both_writing.wait(timeout=30)
            f.write(f"{run}: second half\n")

    with ThreadPoolExecutor(2) as pool:
        for future in [pool.submit(write, run) for run in ("run A", "run B")]:
            future.result()  # no exception in either writer
    assert out.read_text() in {f"{run}: first half\n{run}: second half\n" for run in ("run A", "run B")}
    assert os.listdir(tmp_path) == ["predictions.csv"], "no temporary file is left"


def interrupt_as_open_returns(monkeypatch):
    """Ctrl-C landing the moment os.open has created the temporary file, before its name is returned."""
    real = os.open

    def open_then_interrupted(file, flags, *args, **kwargs):
        fd = real(file, flags, *args, **kwargs)
        if flags & os.O_CREAT:
            os.close(fd)
            raise KeyboardInterrupt
        return fd

    monkeypatch.setattr(os, "open", open_then_interrupted)


def interrupt_as_the_name_returns(monkeypatch):
    """Ctrl-C landing after temporary_sibling has returned, before atomic_path has stored the name (CPython checks
    for signals at the end of a call)."""
    real = files.temporary_sibling

    def created_then_interrupted(path, made=None):
        real(path, made)
        raise KeyboardInterrupt

    monkeypatch.setattr(files, "temporary_sibling", created_then_interrupted)


@pytest.mark.parametrize("interrupt", [interrupt_as_open_returns, interrupt_as_the_name_returns])
def test_an_interruption_while_the_temporary_file_is_created_leaves_nothing(tmp_path, monkeypatch, interrupt):
    """The CI failure of 2026-12-04: extract-features interrupted (SIGINT) just as it created its second output's
    temporary file (the activations, beside the features) left that file behind."""
    interrupt(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        with files.atomic_path(tmp_path / "out.npy"):
            pass
    assert os.listdir(tmp_path) == []


def test_a_killed_writers_leftover_is_removed_by_the_next_write_and_a_live_ones_kept(tmp_path):
    """A writer killed mid-write (SIGKILL, a power cut) leaves its `<name>.<pid>-<random>.tmp`; the next write of that
    output removes it, as its process is gone, but never the file of a writer still running (this process)."""
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    leftover = tmp_path / f"out.txt.{int(dead.stdout)}-0123abcd.tmp"
    leftover.write_text("half")
    live = tmp_path / f"out.txt.{os.getpid()}-89abcdef.tmp"
    live.write_text("in progress")
    other = tmp_path / "other.txt.1-0123abcd.tmp"  # another output's
    other.write_text("x")
    with files.atomic_path(tmp_path / "out.txt") as tmp:
        tmp.write_text("new")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["out.txt", live.name, other.name])


def test_the_split_is_joined_to_the_manifest_on_the_path_not_the_row(tmp_path):
    """normalize reads each manifest row's split from split.csv: by the image's path, so rows in another order get
    the right split, and a split.csv of another manifest (an image missing, or one too many) is one error line."""
    import pandas as pd

    manifest = pd.DataFrame({"path": ["a.png", "b.png", "c.png"], "label": ["x", "y", "x"]})
    split = tmp_path / "split.csv"
    split.write_text("path,split\nc.png,test\na.png,train\nb.png,val\n")
    assert files.read_split(split, manifest).tolist() == ["train", "val", "test"]
    split.write_text("path,split\nc.png,test\na.png,train\n")
    missing = r"lists 2 images and the manifest 3, e\.g\. b\.png has no split.*dvc repro"
    with pytest.raises(PipelineError, match=missing):
        files.read_split(split, manifest)
    split.write_text("path,split\nc.png,test\na.png,train\nb.png,val\nd.png,val\n")
    with pytest.raises(PipelineError, match="lists 4 images and the manifest 3: they come from two runs"):
        files.read_split(split, manifest)
    split.write_text("path,split\nc.png,test\na.png,train\nb.png,val\na.png,val\n")
    with pytest.raises(PipelineError, match="split.csv lists a.png twice; run `dvc repro`"):
        files.read_split(split, manifest)
