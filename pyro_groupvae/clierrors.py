"""How the command line reports failures: one line ``pyro-groupvae: error: <problem and what to do>`` on stderr,
exit code 2 (130 when interrupted, as a shell reports Ctrl-C), the Python traceback only with ``--debug``.

Errors of the library (:mod:`pyro_groupvae.errors`) carry their message; the few built-in exceptions a run can
still meet (a file in the way of the run folder, a permission problem, Ctrl-C, an unexpected internal error) get a
message here. Options are checked up front (:func:`check_args`) so that nonsense fails before any data is loaded.
"""
from __future__ import annotations

import os
import sys
import traceback
from pathlib import Path

from .errors import PyroGroupVAEError, one_line

PROG = "pyro-groupvae"
EXIT_ERROR, EXIT_INTERRUPTED = 2, 130
_NOT_OPTIONS = ("command", "model", "out", "run_dir", "device", "seed", "resume", "no_progress", "dataset",
                "data_root", "baseline", "quick", "debug")


def pop_debug(argv):
    """Remove ``--debug`` from ``argv`` (anywhere before a ``--``); true if it was there or
    ``PYRO_GROUPVAE_DEBUG`` is set."""
    end = argv.index("--") if "--" in argv else len(argv)
    found = "--debug" in argv[:end]
    while "--debug" in argv[:end]:
        argv.remove("--debug")
        end -= 1
    return found or os.environ.get("PYRO_GROUPVAE_DEBUG", "") not in ("", "0")


def check_args(args):
    """Up-front checks of parsed options: numbers (``--hidden 0``, ``--epochs -3``, ``--min-scale -1``, ...), the
    device (``--device gpu``, ``cuda`` without CUDA) and the run folder (a regular file in the way). A run folder's
    ``config.json`` is read (and checked, :func:`~pyro_groupvae.validation.read_json_config`) once, first thing, by
    :func:`~pyro_groupvae.runs.train_run` (``--resume``) and :func:`~pyro_groupvae.runs.load_run` (``evaluate``)."""
    from .validation import check_run_dir, resolve_device, validate_options

    opts = {k: v for k, v in vars(args).items() if k not in _NOT_OPTIONS}
    validate_options(opts)
    if getattr(args, "device", None) is not None:
        resolve_device(args.device)
    if args.command in ("train", "demo") and getattr(args, "out", None):
        check_run_dir(args.out)


def _message(e):
    """One line naming the problem and what to do, for any exception."""
    if isinstance(e, PyroGroupVAEError) or type(e).__module__.startswith("pyro_groupvae"):
        return one_line(e)
    text = one_line(e)
    if "Expected more than 1 value per channel when training" in text:
        return ("a training batch holds a single image, but the network uses batch normalisation, which needs at "
                "least 2 images per batch: choose a batch size that leaves no last batch of one image")
    if type(e).__name__ == "MisconfigurationException":  # PyTorch Lightning: accelerator/devices/strategy
        return (f"{text}: check --accelerator, --devices, --strategy and --num-nodes (README: training on several "
                "devices)")
    if isinstance(e, (NotADirectoryError, FileExistsError, IsADirectoryError)):
        return (f"{e.strerror or text}: {e.filename}: a file is in the way of a folder (or the reverse); choose "
                "another --out (or --data-root)")
    if isinstance(e, PermissionError):
        return f"permission denied: {e.filename}: choose a folder you can write (--out) or read (--data-root)"
    if isinstance(e, FileNotFoundError):
        return text if e.filename is None else f"{e.strerror or 'not found'}: {e.filename}"
    if isinstance(e, OSError) and getattr(e, "errno", None) == 28:
        return f"no space left on the device while writing {e.filename or ''}: free some space or use another --out"
    if isinstance(e, FloatingPointError):
        return text
    if isinstance(e, RuntimeError) and "CUDA" in text and ("out of memory" in text or "OutOfMemory" in text):
        return "the GPU ran out of memory: use a smaller batch size or --device cpu"
    if isinstance(e, MemoryError):
        return "out of memory: use a smaller batch size or dataset"
    return f"unexpected {type(e).__name__}: {text} (rerun with --debug to see where; please report this)"


def report_error(e, debug=False, args=None, file=None):
    """Print the one-line error (and, with ``debug``, the traceback first); returns the exit code 2."""
    file = file or sys.stderr
    if debug:
        traceback.print_exception(type(e), e, e.__traceback__, file=file)
    print(f"{PROG}: error: {_message(e)}", file=file)
    return EXIT_ERROR


def _last_checkpoint(out):
    """The newest checkpoint file in a run folder, or ``None``."""
    out = Path(out)
    if not out.is_dir():
        return None
    try:
        from .infer.train import CHECKPOINT
    except ImportError:  # pragma: no cover - the engine may rename it
        CHECKPOINT = "checkpoint.pt"
    candidates = [out / CHECKPOINT] + sorted(out.glob("*.ckpt")) + sorted(out.glob("checkpoints/*.ckpt"))
    candidates = [p for p in candidates if p.is_file()]
    return max(candidates, key=lambda p: p.stat().st_mtime) if candidates else None


def _epochs_done(out):
    history = Path(out) / "history.csv"
    try:
        lines = [ln for ln in history.read_text().splitlines() if ln.strip()]
    except OSError:
        return None
    return max(len(lines) - 1, 0)


def report_interrupt(args=None, debug=False, file=None):
    """Ctrl-C (a ``KeyboardInterrupt``; :func:`~pyro_groupvae.infer.fit` has already given SIGINT its handler back):
    one line saying where the last checkpoint is and how to resume; returns the exit code 130."""
    file = file or sys.stderr
    if debug:
        traceback.print_exc(file=file)
    command = getattr(args, "command", None)
    if command == "train":
        ckpt = _last_checkpoint(args.out)
        if ckpt is not None:
            done = _epochs_done(args.out)
            at = f" (after epoch {done})" if done else ""
            msg = (f"interrupted: the last checkpoint is {ckpt}{at}; continue with `{PROG} train {args.model} "
                   f"--out {args.out} --resume --epochs {args.epochs}`")
        else:
            msg = f"interrupted before the first checkpoint: nothing to resume in {args.out}; start the run again"
    elif command == "demo":
        msg = f"interrupted: the demo's run folders are under {args.out}; run the demo again to finish it"
    else:
        msg = "interrupted"
    print(f"{PROG}: {msg}", file=file)
    return EXIT_INTERRUPTED
