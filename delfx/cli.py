"""The `delfx` command line: each command parses options and calls one core function.

Data goes to stdout, logs and progress to stderr. Every option can also be set from the
environment as DELFX_<COMMAND>_<OPTION> (e.g. DELFX_INSPECT_JSON=1); command line wins.
Heavy libraries (TensorFlow, Ray, FAISS) are imported inside the commands that need them, so
`delfx --help` stays instant.
"""

from __future__ import annotations

import logging
import sys

import click

from delfx.commands import extract, index, recognize, store
from delfx.errors import DelfxError

log = logging.getLogger("delfx")


class DelfxGroup(click.Group):
    """Every failure ends as one line on stderr and an exit status, never a traceback:
    domain errors and system errors (a full disk, a permission) exit 1, Ctrl-C 130, anything
    unforeseen 1 with a line saying it is a delfx bug (`-v` shows the traceback)."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except DelfxError as exc:
            raise click.ClickException(str(exc)) from None
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)
        except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort, SystemExit):
            raise
        except OSError as exc:
            raise click.ClickException(describe_os_error(exc)) from None
        except Exception as exc:
            if ctx.params.get("verbose", 0) >= 1:
                raise
            log.debug("unexpected error", exc_info=True)
            raise click.ClickException(f"unexpected error {type(exc).__name__}: {exc} (a delfx "
                                       f"bug: please report it; -v shows the traceback)") from None


def describe_os_error(exc: OSError) -> str:
    """'path: No space left on device' from an OSError, whichever library raised it."""
    import errno as errnos
    text = exc.strerror or str(exc)
    if exc.errno in (errnos.ENOSPC, errnos.EDQUOT):
        text = "no space left on the device (free space, then run again: finished work is kept)"
    where = exc.filename or ""
    return f"{where}: {text}" if where else text


def configure_logging(verbosity: int) -> None:
    """stderr logging: -q warnings only, default delfx info, -v delfx debug, -vv everything."""
    level = {-1: logging.WARNING, 0: logging.INFO}.get(verbosity, logging.DEBUG)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s",
                                           datefmt="%H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbosity >= 2 else logging.WARNING)
    logging.getLogger("delfx").setLevel(level)
    from delfx import tf_quiet
    tf_quiet.set_verbosity(verbosity)


def _print_version(ctx: click.Context, _param, value: bool) -> None:
    if not value or ctx.resilient_parsing:
        return
    from delfx.versions import library_versions
    for name, version in library_versions().items():
        click.echo(f"{name} {version}")
    ctx.exit()


@click.group(cls=DelfxGroup, context_settings={"help_option_names": ["-h", "--help"],
                                               "auto_envvar_prefix": "DELFX",
                                               "show_default": True})
@click.option("--version", is_flag=True, expose_value=False, is_eager=True, callback=_print_version,
              help="Show delfx and library versions and exit.")
@click.option("-v", "--verbose", count=True, help="More log output (-vv: also library logs).")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors on stderr.")
def cli(verbose: int, quiet: bool) -> None:
    """delfx: DELF local features for landmark recognition, from extraction to GAP.

    Stages: sample-data -> extract -> build-index -> train -> classify -> evaluate.
    """
    configure_logging(-1 if quiet else verbose)


for module in (store, extract, index, recognize):
    for command in vars(module).values():
        if isinstance(command, click.Command):
            cli.add_command(command)


def main() -> None:
    cli(prog_name="delfx")
