"""The `gnconvert` command line: a thin layer over the library.

Each command lives in `gnconvert.commands.<name>` and is imported only when it
runs, so `gnconvert list` does not pay for importing torch.  A GnconvertError
becomes one line on stderr and a non-zero exit status.
"""
from __future__ import annotations

import importlib
import sys

import click

from .errors import GnconvertError

# command name -> module in gnconvert.commands that defines `command` (a click.Command)
COMMANDS = {
    "list": "list_models",
    "fetch": "fetch",
    "inspect": "inspect",
    "convert": "convert",
    "predict": "predict",
    "selftest": "selftest",
    "verify": "verify",
    "export": "export",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx):
        return list(COMMANDS)

    def get_command(self, ctx, name):
        module = COMMANDS.get(name)
        if module is None:
            return None
        try:
            mod = importlib.import_module(f"gnconvert.commands.{module}")
        except ModuleNotFoundError as e:
            if e.name == f"gnconvert.commands.{module}":
                return None  # not built yet
            raise
        return mod.command


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="gnconvert")
def cli():
    """Detectron's Group Normalization Mask R-CNN models, converted to PyTorch and proven."""


def main(argv=None):
    try:
        cli.main(args=argv, prog_name="gnconvert", standalone_mode=False)
    except GnconvertError as e:
        click.echo(f"gnconvert: error: {e}", err=True)
        sys.exit(e.exit_code)
    except click.exceptions.Abort:
        click.echo("gnconvert: aborted", err=True)
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    sys.exit(0)


if __name__ == "__main__":
    main()
