"""``mushpi-ble bench``: the benchmark suite (:mod:`mushpi_ble.bench.suite`)."""

from __future__ import annotations

import argparse

from mushpi_ble.bench import suite


def add_arguments(parser: argparse.ArgumentParser) -> None:
    suite.add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    return suite.run(args)
