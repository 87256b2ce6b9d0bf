"""One object per session step, each owning its state and its part of the status.

The supervisor (:mod:`mushpi_ble.peripheral`) runs them in order and passes
events between them; this package is its only door.
"""

from .adapter import AdapterKeeper
from .advertiser import Advertiser
from .application import Application
from .devices import Devices
from .host import SessionHost
from .naming import Naming
from .pairing import Agent, Bonds
from .step import (
    CentralConnected,
    CentralLeft,
    PowerChanged,
    SessionEvent,
    SessionTask,
    Step,
    StepHost,
    Stopping,
    in_scope,
)
from .steps import SessionSteps

__all__ = [
    "AdapterKeeper",
    "Advertiser",
    "Agent",
    "Application",
    "Bonds",
    "CentralConnected",
    "CentralLeft",
    "Devices",
    "Naming",
    "PowerChanged",
    "SessionEvent",
    "SessionHost",
    "SessionSteps",
    "SessionTask",
    "Step",
    "StepHost",
    "Stopping",
    "in_scope",
]
