"""`infir`'s exit statuses: runs the typer app and turns what happened into one line and an exit
status (README, "Exit status"; the codes are `pipeline.runner.outcome`'s): 0 success, 1 internal
error, 2 error, 3 finished with failed rows, 130 interrupted.

The app and its state are handed in by `pipeline.cli.main()` rather than imported from the package:
the package calls this module, and an import back would be an import circle."""

from __future__ import annotations

import sys

import click
import typer

from pipeline.errors import InfirError


def _click_exceptions(name: str) -> tuple[type[BaseException], ...]:
    """typer 0.2x raises from its own copy of click (typer._click): catch both copies."""
    found = [getattr(click.exceptions, name)]
    try:
        from typer._click import exceptions as vendored

        found.append(getattr(vendored, name))
    except (ImportError, AttributeError):
        pass
    return tuple(found)


_ABORT, _USAGE, _EXIT = (_click_exceptions(n) for n in ("Abort", "ClickException", "Exit"))


def run_app(app: typer.Typer, state: dict, argv: list[str] | None = None) -> int:
    """Run the typer `app` with `argv` (default: sys.argv); the exit status. `state` is the app's
    (its `debug` flag is set by `--debug` while the app runs)."""
    from pipeline.runner import outcome

    debug = "--debug" in (argv if argv is not None else sys.argv)
    try:
        # Not standalone: `app` returns the command's value (a build's status) or, for an Exit it
        # caught, its code; typer turns Ctrl-C into Exit(130) there, so 130 is returned, not raised.
        rv = app(args=argv, standalone_mode=False)
    except InfirError as e:
        if state["debug"]:
            raise
        typer.secho(f"error: {e}", err=True, fg="red")
        return outcome.ERROR
    except (*_ABORT, KeyboardInterrupt):
        rv = outcome.INTERRUPTED
    except _USAGE as e:
        e.show()
        return e.exit_code
    except _EXIT as e:
        return e.exit_code
    except OSError as e:  # the machine's answer (permissions, a full disk, a missing folder): the user's to fix
        if state["debug"] or debug:
            raise
        where = f"{e.filename}: " if getattr(e, "filename", None) else ""
        typer.secho(f"error: {where}{e.strerror or e}", err=True, fg="red")
        return outcome.ERROR
    except Exception as e:  # a bug: one line for the user, the traceback behind --debug
        if state["debug"] or debug:
            raise
        typer.secho(f"internal error: {type(e).__name__}: {e} (rerun with --debug for details)", err=True, fg="red")
        return outcome.INTERNAL_ERROR
    if rv == outcome.INTERRUPTED:
        typer.secho(outcome.INTERRUPTED_LINE, err=True, fg="yellow")
    return rv if isinstance(rv, int) and not isinstance(rv, bool) else outcome.OK
