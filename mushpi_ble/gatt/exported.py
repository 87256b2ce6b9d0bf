"""One object we export to bluetoothd and take back: the export bookkeeping, once."""

from __future__ import annotations

from mushpi_ble.dbus import Connection, Interface


class ExportedObject:
    """An object at ``path`` on ``conn`` whose one interface ``_interface()`` builds;
    exporting and unexporting are idempotent."""

    def __init__(self, conn: Connection, path: str) -> None:
        self._conn = conn
        self.path = path
        self.exported = False

    def _interface(self) -> Interface:
        raise NotImplementedError

    def export(self) -> None:
        if not self.exported:
            self._conn.export(self.path, [self._interface()])
            self.exported = True

    def unexport(self) -> None:
        if self.exported:
            self._conn.unexport(self.path)
            self.exported = False
