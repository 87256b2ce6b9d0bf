"""Why the peripheral could not start: one exception type per cause.

``start()`` raises these with a message a grower's installer can act on;
``BlePortal()`` and ``load_settings()`` raise :class:`ConfigError` for a bad
setting. Nothing here imports anything: the command line catches these
without loading the settings machinery.
"""

from __future__ import annotations

from typing import Any


class StartError(RuntimeError):
    """The peripheral could not start; the message says why and what to do."""


class BusUnavailable(StartError):
    """The D-Bus system bus (or the configured bus) could not be reached."""


class BluezUnavailable(StartError):
    """No process owns ``org.bluez`` on the bus: bluetoothd is not running."""


class AdapterNotFound(StartError):
    """The configured adapter does not exist (or never appeared)."""


class RegistrationRefused(StartError):
    """bluetoothd refused the GATT application (its error is in the message)."""


class StartTimeout(StartError):
    """Start-up did not finish within the bus timeout."""


class ConfigError(ValueError):
    """One invalid setting, named precisely enough to fix it without reading code."""

    def __init__(
        self,
        variable: str,
        value: str,
        allowed: str,
        problem: str | None = None,
        source: str | None = None,
        others: tuple[ConfigError, ...] = (),
    ) -> None:
        self.variable = variable
        self.value = value
        self.allowed = allowed
        self.problem = problem
        self.source = source
        self.others = others
        """The other invalid settings of the same start: every one is reported at once."""
        where = f" (from {source})" if source else ""
        why = f"{problem}; " if problem else ""
        lines = [f"{variable}={value!r}{where} is invalid: {why}allowed {allowed}"]
        lines += [str(other) for other in others]
        super().__init__("\n".join(lines))

    @property
    def all(self) -> tuple[ConfigError, ...]:
        return (self, *self.others)

    def __reduce__(self) -> tuple[type[ConfigError], tuple[Any, ...]]:
        """Keep the fields when the error crosses a process or thread boundary."""
        return (type(self), (self.variable, self.value, self.allowed, self.problem, self.source,
                             self.others))

    @classmethod
    def gather(cls, errors: list[ConfigError]) -> ConfigError:
        """One error that names them all (the first's fields, the rest in ``others``)."""
        first = errors[0]
        return cls(first.variable, first.value, first.allowed, first.problem, first.source,
                   tuple(errors[1:]))
