"""Introspection XML generated from interface declarations."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from xml.sax.saxutils import quoteattr

from .interface import Interface
from .signature import split_signature

DOCTYPE = (
    '<!DOCTYPE node PUBLIC "-//freedesktop//DTD D-BUS Object Introspection 1.0//EN"\n'
    ' "http://www.freedesktop.org/standards/dbus/1.0/introspect.dtd">\n'
)

STANDARD_INTERFACES_XML = """\
  <interface name="org.freedesktop.DBus.Introspectable">
    <method name="Introspect"><arg name="xml_data" type="s" direction="out"/></method>
  </interface>
  <interface name="org.freedesktop.DBus.Peer">
    <method name="Ping"/>
    <method name="GetMachineId"><arg name="machine_uuid" type="s" direction="out"/></method>
  </interface>
"""

PROPERTIES_XML = """\
  <interface name="org.freedesktop.DBus.Properties">
    <method name="Get">
      <arg name="interface_name" type="s" direction="in"/>
      <arg name="property_name" type="s" direction="in"/>
      <arg name="value" type="v" direction="out"/>
    </method>
    <method name="GetAll">
      <arg name="interface_name" type="s" direction="in"/>
      <arg name="props" type="a{sv}" direction="out"/>
    </method>
    <method name="Set">
      <arg name="interface_name" type="s" direction="in"/>
      <arg name="property_name" type="s" direction="in"/>
      <arg name="value" type="v" direction="in"/>
    </method>
    <signal name="PropertiesChanged">
      <arg name="interface_name" type="s"/>
      <arg name="changed_properties" type="a{sv}"/>
      <arg name="invalidated_properties" type="as"/>
    </signal>
  </interface>
"""

OBJECT_MANAGER_XML = """\
  <interface name="org.freedesktop.DBus.ObjectManager">
    <method name="GetManagedObjects">
      <arg name="objects" type="a{oa{sa{sv}}}" direction="out"/>
    </method>
    <signal name="InterfacesAdded">
      <arg name="object" type="o"/>
      <arg name="interfaces" type="a{sa{sv}}"/>
    </signal>
    <signal name="InterfacesRemoved">
      <arg name="object" type="o"/>
      <arg name="interfaces" type="as"/>
    </signal>
  </interface>
"""


def _args(signature: str, names: Sequence[str], direction: str | None) -> Iterable[str]:
    for index, sig in enumerate(split_signature(signature)):
        name = names[index] if index < len(names) else f"arg{index}"
        dir_attr = f" direction={quoteattr(direction)}" if direction else ""
        yield f"      <arg name={quoteattr(name)} type={quoteattr(sig)}{dir_attr}/>"


def interface_xml(interface: Interface) -> str:
    lines = [f"  <interface name={quoteattr(interface.name)}>"]
    for method in interface.methods:
        lines.append(f"    <method name={quoteattr(method.name)}>")
        lines.extend(_args(method.in_signature, method.arg_names, "in"))
        lines.extend(_args(method.out_signature, method.out_names, "out"))
        lines.append("    </method>")
    for signal in interface.signals:
        lines.append(f"    <signal name={quoteattr(signal.name)}>")
        lines.extend(_args(signal.signature, signal.arg_names, None))
        lines.append("    </signal>")
    for prop in interface.properties:
        lines.append(
            f"    <property name={quoteattr(prop.name)} type={quoteattr(prop.signature)}"
            f" access={quoteattr(prop.access)}/>"
        )
    lines.append("  </interface>")
    return "\n".join(lines) + "\n"


def node_xml(
    interfaces: Sequence[Interface],
    children: Iterable[str],
    *,
    exported: bool,
    object_manager: bool,
) -> str:
    """The whole document for one node: its interfaces and child names."""
    parts = [DOCTYPE, "<node>\n", STANDARD_INTERFACES_XML]
    if exported:
        parts.append(PROPERTIES_XML)
    if object_manager:
        parts.append(OBJECT_MANAGER_XML)
    parts.extend(interface_xml(iface) for iface in interfaces)
    parts.extend(f"  <node name={quoteattr(child)}/>\n" for child in sorted(set(children)))
    parts.append("</node>\n")
    return "".join(parts)
