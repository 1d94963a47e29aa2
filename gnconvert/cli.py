"""The `gnconvert` command line: a thin layer over the library.

Each command lives in `gnconvert.commands.<name>` and is imported only when it
runs, so `gnconvert list` does not pay for importing torch.  A GnconvertError
becomes one line on stderr and a non-zero exit status.
"""
from __future__ import annotations

import importlib
import sys

import click

from gnconvert.errors import GnconvertError, UsageError

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
        return importlib.import_module(f"gnconvert.commands.{module}").command


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="gnconvert")
def cli():
    """Detectron's Group Normalization Mask R-CNN models, converted to PyTorch and proven."""


def _expand_opts(argv):
    """Detectron's `--opts KEY VALUE [KEY VALUE ...]` (last on the line) -> click's repeated
    `--opts KEY VALUE`."""
    if "--opts" not in argv:
        return argv
    at = argv.index("--opts")
    rest = argv[at + 1:]
    if not rest or len(rest) % 2:
        raise UsageError("--opts takes KEY VALUE pairs and comes last, e.g. --opts TEST.SCALE 600 TEST.MAX_SIZE 1000")
    pairs = [tok for i in range(0, len(rest), 2) for tok in ("--opts", rest[i], rest[i + 1])]
    return argv[:at] + pairs


def main(argv=None):
    import warnings

    # torch.jit's deprecation notices say nothing a user can act on
    warnings.filterwarnings("ignore", message=r"`torch\.jit\..*` is deprecated", category=FutureWarning)
    try:
        argv = _expand_opts(list(sys.argv[1:] if argv is None else argv))
        cli.main(args=argv, prog_name="gnconvert", standalone_mode=False)
    except GnconvertError as e:
        click.echo(f"gnconvert: error: {e}", err=True)
        sys.exit(e.exit_code)
    except (click.exceptions.Abort, KeyboardInterrupt):
        command = next((a for a in (argv or []) if a in COMMANDS), None)
        hint = {"fetch": "run the same fetch again: it resumes the download",
                "verify": "rerun the same verify with --resume to continue",
                "predict": "rerun the same predict with --resume to continue"}.get(command, "nothing was written")
        click.echo(f"gnconvert: interrupted; {hint}", err=True)
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    sys.exit(0)


if __name__ == "__main__":
    main()
