"""facade_ab's busy phase: reads split at the producer's publishing."""

from __future__ import annotations

from mushpi_ble.bench.facade_ab import split_reads


def test_reads_are_split_into_while_and_after_the_publishing() -> None:
    """A read overlapping the publishing counts as while, even when it began before
    or ended after it; one begun after the last publish counts as after."""
    stamps = [10.0, 10.5, 11.0]
    reads = [
        (9.0, 9.5),  # before: neither
        (9.9, 10.1),  # overlaps the first publish
        (10.6, 10.7),  # inside
        (10.9, 11.4),  # overlaps the last publish
        (11.2, 11.3),  # after
        (12.0, 12.002),  # after
    ]
    split = split_reads(reads, stamps)
    assert split["publishing_ms"] == 1000.0
    assert split["reads_while_publishing_ms"]["n"] == 3
    assert round(split["reads_while_publishing_ms"]["max"], 6) == 500.0
    assert split["reads_after_publishing_ms"]["n"] == 2
    assert round(split["reads_after_publishing_ms"]["min"], 6) == 2.0


def test_no_publishes_no_split() -> None:
    assert split_reads([(1.0, 2.0)], []) == {}
