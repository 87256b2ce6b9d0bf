"""Report the one real error out of a trio nursery's exception group.

Nurseries wrap every failure in an ExceptionGroup; callers of a resource
want the ``StartError`` or ``ConnectionLost`` itself. A lost bus fails the
receive loop and every pending call at once — one event, reported once.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import trio

from .errors import ConnectionLost


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]


def unwrap_group(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The single meaningful exception inside ``group``, or the group itself."""
    leaves = [e for e in _leaves(group) if not isinstance(e, trio.Cancelled)] or _leaves(group)
    if len(leaves) == 1:
        return leaves[0]
    if all(isinstance(exc, ConnectionLost) for exc in leaves):
        return leaves[0]
    return group


@contextmanager
def single_errors() -> Iterator[None]:
    """Re-raise a nursery's lone exception unwrapped."""
    try:
        yield
    except BaseExceptionGroup as group:
        raise unwrap_group(group) from None
