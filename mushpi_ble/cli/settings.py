"""``mushpi-ble config``: every setting in effect and where it came from.

The same inputs the service reads (the environment, then ``--env-file`` or
``MUSHPI_ENV_FILE`` or ``./.env``) are checked as at start-up: a bad value
is exit 3 with every problem named; otherwise one line per setting, in a
form a settings file takes, with its source: the environment, which file, or
the default.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Mapping

from mushpi_ble.cli import exits
from mushpi_ble.config import ENV_FILE_VARIABLE, load_settings, setting_sources


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_env_file_argument(parser)
    parser.add_argument("--json", action="store_true",
                        help="print variable, value and source as JSON")


def add_env_file_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--env-file", default=None, metavar="PATH",
                        help="the settings file to read (it must exist); default "
                             "MUSHPI_ENV_FILE, else ./.env if present")


def environment(args: argparse.Namespace) -> Mapping[str, str]:
    """The environment the settings are read from, with ``--env-file`` in force."""
    if getattr(args, "env_file", None):
        return {**os.environ, ENV_FILE_VARIABLE: args.env_file}
    return os.environ


def run(args: argparse.Namespace) -> int:
    env = environment(args)
    load_settings(env)  # a bad setting raises ConfigError: main() prints it, exit 3
    sources = setting_sources(env)
    if args.json:
        print(json.dumps([{"variable": s.variable, "value": s.value, "source": s.source}
                          for s in sources], indent=2))
        return exits.OK
    width = max(len(f"{s.variable}={s.value}") for s in sources)
    for s in sources:
        print(f"{s.variable}={s.value}".ljust(width) + f"   # {s.source}")
    return exits.OK
