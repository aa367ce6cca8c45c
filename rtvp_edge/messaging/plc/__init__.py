"""PLC servers: the reject signal in the PLC's own protocol, before the reject gate.

``build_plc_station`` starts what the line file's ``plc:`` section asks for (OPC UA, Modbus TCP) around one
``PlcStation`` (results, deadlines, alarms). The protocol libraries are imported only here, only when
asked for, so a line without ``plc:`` never needs them. Integration guide: docs/plc.md.
"""

from __future__ import annotations

from collections.abc import Sequence

from rtvp_edge.messaging.plc.config import ModbusConfig, OpcUaConfig, PlcConfig
from rtvp_edge.messaging.plc.errors import PlcStartError
from rtvp_edge.messaging.plc.station import PlcResult, PlcStation

__all__ = [
    "ModbusConfig", "OpcUaConfig", "PlcConfig", "PlcResult", "PlcStartError", "PlcStation", "build_plc_station",
]  # fmt: skip


def build_plc_station(
    config: PlcConfig,
    station_name: str,
    class_names: Sequence[str],
    part_id_format: str = "T{trigger_seq:08d}",
) -> PlcStation:
    """Start the configured servers around a ``PlcStation`` (started; ``station.stop()`` stops all).

    Raises:
        PlcStartError: a server cannot start (port in use, password variable unset, unreadable
            certificate); the message names the line-file key.
    """
    station = PlcStation(class_names, config.reject_deadline_ms, config.trigger, part_id_format)
    try:
        if config.opcua is not None:
            try:
                from rtvp_edge.messaging.plc.opcua import OpcUaServer
            except ImportError as e:
                raise PlcStartError(f"plc.opcua needs asyncua: pip install 'rtvp-edge[plc]' ({e})") from None
            server = OpcUaServer(config.opcua, station_name, station, list(class_names), config.heartbeat_ms)
            station.add_server(server.start())
        if config.modbus is not None:
            try:
                from rtvp_edge.messaging.plc.modbus import ModbusServer
            except ImportError as e:
                raise PlcStartError(
                    f"plc.modbus needs pymodbus: pip install 'rtvp-edge[plc]' ({e})"
                ) from None
            mb = ModbusServer(config.modbus, station, list(class_names), config.heartbeat_ms)
            station.add_server(mb.start())
    except BaseException:
        station.stop()
        raise
    station.start()
    return station
