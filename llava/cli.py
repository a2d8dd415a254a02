"""How every command-line entry point reports a user's mistake: `run_cli(main)` turns a user error (a missing file, a
malformed question line, an unknown method or bad budget, an unreadable image ...) into one `error: ...` line on
stderr and exit status 2, as argparse does for a bad flag; `--debug` or LLAVA_DEBUG=1 shows the traceback instead.
Any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

DEBUG_ENV = "LLAVA_DEBUG"


class UserError(ValueError):
    """Bad input from the user (a flag, a file, the environment), with a message that says what to do."""


# exception classes (module, name) that only ever describe bad input; matched by name so that checking an exception
# imports nothing (an entry point that never loaded the module cannot have raised its error)
USER_ERROR_TYPES = {
    ("builtins", "FileNotFoundError"),  # also the project's MissingDataError, MissingWeightsError ...
    ("builtins", "IsADirectoryError"),
    ("builtins", "NotADirectoryError"),
    ("builtins", "PermissionError"),
    ("builtins", "ConnectionError"),  # an image URL that cannot be downloaded (the message says what to do)
    ("PIL", "UnidentifiedImageError"),
    ("llava.eval.answer_files", "MalformedFileError"),
    ("llava.model.config", "CheckpointConfigError"),
    ("llava.model.multimodal_encoder.video_processor", "VideoReadError"),
}

# functions (module, name) that only validate what the user asked for: a ValueError raised under one of them is a
# user error (building the pruning method from --method / budget flags and METHOD / RETAIN_TOKN, parsing placement
# flags, picking the chunk; checking the method against the loaded model: its budget, its families)
VALIDATORS = {
    ("llava.sparse.methods", "pruning_from_args"),
    ("llava.model.vlm", "set_pruning"),
    ("llava.model.placement", "parse_device_map"),
    ("llava.model.placement", "parse_max_memory"),
    ("llava.eval.answering", "get_chunk"),
}


def is_user_error(err: BaseException) -> bool:
    """Whether `err` is about the user's input rather than a bug."""
    if any((cls.__module__, cls.__name__) in USER_ERROR_TYPES for cls in type(err).__mro__):
        return True
    if isinstance(err, UserError):
        return True
    if isinstance(err, ValueError):
        frame = err.__traceback__
        while frame is not None:
            code = frame.tb_frame.f_code
            if (frame.tb_frame.f_globals.get("__name__"), code.co_name) in VALIDATORS:
                return True
            frame = frame.tb_next
    return False


def run_cli(main: Callable[[], object], debug_flag_is_main_own: bool = False):
    """Run an entry point's `main()` (which parses sys.argv) and return its result; a user error exits 2 with one
    `error:` line unless `--debug` is given or LLAVA_DEBUG=1. `debug_flag_is_main_own`: leave `--debug` in sys.argv
    for a `main` that has its own flag of that name (it then shows tracebacks too)."""
    debug = "--debug" in sys.argv[1:] or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    if not debug_flag_is_main_own:
        sys.argv = [sys.argv[0], *(arg for arg in sys.argv[1:] if arg != "--debug")]
    try:
        return main()
    except Exception as err:
        if debug or not is_user_error(err):
            raise
        message = str(err) or type(err).__name__
        print(f"error: {' '.join(message.split())}", file=sys.stderr)
        sys.exit(2)
