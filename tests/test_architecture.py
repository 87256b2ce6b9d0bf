"""ARCHITECTURE.md names every module and every command, and nothing that is gone."""

from __future__ import annotations

import re
from pathlib import Path

from mushpi_ble.cli import COMMANDS

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "mushpi_ble"
TEXT = (ROOT / "ARCHITECTURE.md").read_text()


def sections() -> dict[str, str]:
    """Code-map sections by the folder their heading names (``mushpi_ble/`` is "")."""
    found: dict[str, str] = {}
    for block in re.split(r"^### ", TEXT, flags=re.M)[1:]:
        heading = block.split("\n", 1)[0]
        folder = re.match(r"`([\w/]+/)`", heading)
        if folder:
            name = folder.group(1)
            found["" if name == "mushpi_ble/" else name] = block
    return found


def words(text: str) -> set[str]:
    return {w.strip("`,;:()") for w in text.split()}


def modules() -> list[str]:
    return sorted(str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py")
                  if p.name != "__init__.py")


def test_every_module_is_in_the_code_map() -> None:
    """Every folder has a section of its own, and each of its modules is named there by
    its file name (a nested folder is not folded into its parent's section)."""
    by_folder = sections()
    missing = []
    for module in modules():
        folder, _, name = module.rpartition("/")
        block = by_folder.get(folder + "/" if folder else "")
        if block is None or name not in words(block):
            missing.append(module)
    assert not missing, f"ARCHITECTURE.md does not name: {missing}"


def test_every_module_the_code_map_names_exists() -> None:
    stale = []
    for folder, block in sections().items():
        listing = block.split("```")[1] if "```" in block else ""
        named = {w.strip(",;:()") for w in listing.split() if "`" not in w}  # `x` is quoted
        for word in named:
            if word.endswith(".py") and not (PACKAGE / folder / word).exists():
                stale.append(folder + word)
    assert not stale, f"ARCHITECTURE.md names modules that do not exist: {stale}"


def test_every_command_is_an_entry_point() -> None:
    entry_points = TEXT.split("## Entry points", 1)[1].split("\n## ", 1)[0]
    missing = [name for name, *_ in COMMANDS if f"`{name}`" not in entry_points]
    assert not missing, f"ARCHITECTURE.md's entry points miss: {missing}"
