"""Records which files a stage opens, renames and removes, for the test that holds dvc.yaml's data deps and outs to
what the code does (test_e2e_runs.py). Python imports this module at start-up when its folder is on PYTHONPATH: the
fast run's first `dvc repro` puts it there, with FILE_AUDIT naming the folder for the logs. Only stage processes
(`python -m stages.<name>`) are recorded, through an audit hook (PEP 578): the events `open`, `os.listdir`, `os.scandir`
(reads), `os.rename`, `os.replace` (writes), `os.remove` and `os.rmdir`, which every Python-level file access raises
(NumPy, Keras' zip files, Pillow, matplotlib and dvclive all write through Python; C libraries that open files
themselves are not seen)."""

import atexit
import json
import os
import sys

_argv = getattr(sys, "orig_argv", [])
_log_dir = os.environ.get("FILE_AUDIT")
if _log_dir and "-m" in _argv and _argv[_argv.index("-m") + 1].startswith("stages."):
    _stage = _argv[_argv.index("-m") + 1]
    _events = []

    def _hook(event, args):
        if event == "open":
            path, mode, flags = args
            if isinstance(path, (str, bytes)):
                writes = any(c in (mode or "") for c in "wax+") if mode else bool(flags & (os.O_WRONLY | os.O_RDWR))
                _events.append(("write" if writes else "read", os.path.abspath(os.fsdecode(path))))
        elif event in ("os.rename", "os.replace"):
            _events.append(("write", os.path.abspath(os.fsdecode(args[1]))))
        elif event in ("os.listdir", "os.scandir") and isinstance(args[0], (str, bytes, os.PathLike)):
            _events.append(("read", os.path.abspath(os.fsdecode(args[0]))))
        elif event in ("os.remove", "os.rmdir"):
            _events.append(("remove", os.path.abspath(os.fsdecode(args[0]))))

    def _dump():
        with open(os.path.join(_log_dir, f"{_stage}-{os.getpid()}.json"), "w") as log:
            json.dump({"stage": _stage, "cwd": os.getcwd(), "events": sorted(set(_events))}, log)

    sys.addaudithook(_hook)
    atexit.register(_dump)
