"""The command line: a thin shell over the API. Each command group lives in its own module."""

from __future__ import annotations

import importlib
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import NoReturn

import typer

from fewlabel.errors import DiskFullError, FewlabelError, is_disk_full, one_line
from fewlabel.fileio import atomic_write_text

app = typer.Typer(
    name="fewlabel",
    help="Medical image classifiers from tens of labels, and how far those labels go.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Each module defines register(app). Order = order in --help.
_COMMAND_MODULES = ("demo", "inspect", "suggest", "train", "pretrain", "curve", "report")

for _name in _COMMAND_MODULES:
    importlib.import_module(f"fewlabel.cli.{_name}").register(app)


#: Exit codes (docs/guarantees.md): what a script can tell apart.
EXIT_OK = 0
EXIT_PROBLEMS = 1  # the data was read and problems were found (inspect, predict, curve cells)
EXIT_USAGE = 2  # a usage error or an input that cannot be read / an output that cannot be written
EXIT_INTERNAL = 3  # a bug in fewlabel: the traceback is in a log file the message names
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141  # as a shell reports a process ended by SIGPIPE

LOG_DIR_ENV = "FEWLABEL_LOG_DIR"


def main(argv: list[str] | None = None) -> None:
    """Entry point: every failure is ONE line on stderr with a distinct exit code, never a traceback.

    A ``FewlabelError`` (the user's input) or an ``OSError`` naming a file exits 2; anything else is a
    fewlabel bug: its traceback goes to a log file and the line says where (exit 3).
    """
    try:
        # With standalone_mode=False, typer returns a raised Exit's code instead of exiting.
        code = app(args=argv, standalone_mode=False)
        if isinstance(code, int) and code:
            sys.exit(code)
    except FewlabelError as exc:
        typer.echo(f"error: {printable(str(exc))}", err=True)
        sys.exit(EXIT_USAGE)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        typer.echo("aborted", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except BrokenPipeError:
        # The reader of our output went away (``fewlabel inspect … | head``): not an error of ours.
        # Point stdout at /dev/null so the interpreter's final flush does not complain either.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(EXIT_BROKEN_PIPE)
    except OSError as exc:
        if is_disk_full(exc):
            _disk_full(exc)
        if exc.filename is None:
            _internal_error(exc)
        # A file the user named or pointed at: a symlink loop, a full disk, a permission, a vanished file.
        where = exc.filename if exc.filename2 is None else f"{exc.filename} -> {exc.filename2}"
        typer.echo(f"error: {printable(str(where))}: {exc.strerror or type(exc).__name__}", err=True)
        sys.exit(EXIT_USAGE)
    except Exception as exc:
        # Usage errors (unknown option, missing argument) carry their own message and exit code.
        # typer >= 0.29 vendors click as typer._click; older versions use click itself.
        if _is_click_exception(exc):
            typer.echo(f"error: {printable(_usage_line(exc))}", err=True)
            sys.exit(exc.exit_code)
        if is_disk_full(exc):  # torch, safetensors and SQLite report a full disk in their own types
            _disk_full(exc)
        _internal_error(exc)


def _disk_full(exc: BaseException) -> NoReturn:
    """A full disk is the user's machine, not a bug and not damage: one line, exit 2, nothing to delete."""
    where = next((e.filename for e in (exc, exc.__cause__, exc.__context__)
                  if isinstance(e, OSError) and e.filename is not None), None)
    typer.echo(f"error: {printable(str(DiskFullError(path=where)))}", err=True)
    sys.exit(EXIT_USAGE)


def printable(text: str) -> str:
    """Control characters from file or class names shown escaped, so an error line cannot move the
    cursor, recolour the terminal or split into two lines. A byte of a name that is not UTF-8 shows
    as ``\\xNN`` (as ``ls -b`` shows it), so the line names the file the user can find."""
    return "".join(ch if ch.isprintable() else _escaped(ch) for ch in text)


def _escaped(ch: str) -> str:
    code = ord(ch)
    if 0xDC80 <= code <= 0xDCFF:  # how Python keeps a byte of a file name that is not UTF-8
        return f"\\x{code - 0xDC00:02x}"
    return ascii(ch)[1:-1]


def _internal_error(exc: BaseException) -> NoReturn:
    """Save the traceback to a log file and say, in one line, where it is and that it is our bug."""
    summary = printable(one_line(exc)[:300])
    log = _write_crash_log(exc)
    where = f"the traceback is in {log}" if log is not None else "no log file could be written"
    typer.echo(f"internal error: {summary} ({where}; please report it with that file)", err=True)
    sys.exit(EXIT_INTERNAL)


def _write_crash_log(exc: BaseException) -> Path | None:
    text = "".join(traceback.format_exception(exc))
    header = f"fewlabel {_version()} · {time.strftime('%Y-%m-%dT%H:%M:%S')} · argv {sys.argv!r}\n\n"
    candidates = [os.environ.get(LOG_DIR_ENV), Path.home() / ".cache" / "fewlabel" / "logs",
                  Path(tempfile.gettempdir()) / "fewlabel-logs"]
    for folder in candidates:
        if not folder:
            continue
        try:
            path = Path(folder) / f"crash-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
            atomic_write_text(path, header + text)
            return path
        except OSError:
            continue
    return None


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("fewlabel")
    except Exception:
        return "?"


def _usage_line(exc: Exception) -> str:
    """Click's usage error as one line (its own display is four: usage, hint, blank, error)."""
    message = " ".join(str(exc.format_message()).split())  # type: ignore[attr-defined]
    ctx = getattr(exc, "ctx", None)
    return f"{message} (see '{ctx.command_path} --help')" if ctx is not None else message


def _is_click_exception(exc: Exception) -> bool:
    bases = []
    try:
        from typer._click import ClickException as Vendored

        bases.append(Vendored)
    except ImportError:
        pass
    try:
        from click import ClickException

        bases.append(ClickException)
    except ImportError:
        pass
    return isinstance(exc, tuple(bases)) if bases else False
