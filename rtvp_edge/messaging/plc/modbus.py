"""The Modbus TCP server (pymodbus) for PLCs without OPC UA. Register map: docs/plc.md.

The map is held in two plain lists owned by the server's asyncio loop; the line's results are applied on
that loop (``call_soon_threadsafe``) in one step, so a PLC never reads half of a result. Coils and holding
registers are also served as discrete inputs and input registers (FC2/FC4) for PLCs that prefer those.
Only the coils TRIGGER and RESULTS_ACK are writable.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Sequence

from pymodbus.constants import ExcCodes
from pymodbus.datastore import ModbusServerContext
from pymodbus.server import ModbusTcpServer

from rtvp_edge.messaging.plc.config import ModbusConfig
from rtvp_edge.messaging.plc.errors import PlcStartError, check_port
from rtvp_edge.messaging.plc.station import PlcResult, PlcStation

log = logging.getLogger(__name__)

# Coils (FC1 read, FC5/FC15 write; also FC2), 0-based addresses
TRIGGER, TRIGGER_ACK, INSPECTION_COMPLETED, RESULTS_VALID, RESULTS_ACK, REJECT, HEARTBEAT, ALARM = range(8)
N_COILS = 16
WRITABLE_COILS = {TRIGGER, RESULTS_ACK}
# Holding registers (FC3; also FC4), 0-based addresses, 16-bit unsigned
RESULT_SEQ = 0  # low 16 bits, wraps
TRIGGER_SEQ_HI, TRIGGER_SEQ_LO = 1, 2  # uint32, high word first; 0xFFFFFFFF unknown
VERDICT_CODE = 3  # 0 none, 1 OK, 2 NG, 3 INCOMPLETE, 4 DEADLINE
REJECT_REASON = 4  # 0 none, 1 defect, 2 incomplete, 3 deadline
DEFECT_COUNT = 5
TOP_CLASS = 6  # class index + 1; 0 none
ERROR_CODE = 7  # bits: 1 camera down, 2 model/stage error, 4 line stopped
TRIGGER_COUNT = 8  # PLC triggers seen, low 16 bits
TRIGGER_TO_SIGNAL_MS = 9  # saturates at 65535
ACKS_MISSED = 10  # results replaced before the PLC acknowledged them, low 16 bits
N_CLASSES = 11
CLASS_COUNTS = 12  # 12 .. 12+C-1: defects per class, bundle class order (max 20 classes)
MAX_CLASSES = 20
PART_ID = 32  # 32..47: part id, ASCII, 2 characters per register (high byte first), NUL padded
PART_ID_REGS = 16
N_REGISTERS = PART_ID + PART_ID_REGS


def ascii_registers(text: str, n: int = PART_ID_REGS) -> list[int]:
    """``text`` as ``n`` registers of two ASCII bytes each (high byte first), NUL padded, cut to 2n bytes."""
    raw = text.encode("ascii", "replace")[: 2 * n].ljust(2 * n, b"\0")
    return [raw[i] << 8 | raw[i + 1] for i in range(0, 2 * n, 2)]


def registers_ascii(regs: Sequence[int]) -> str:
    """Inverse of ``ascii_registers`` (for clients and tests)."""
    return b"".join(bytes([r >> 8, r & 0xFF]) for r in regs).rstrip(b"\0").decode("ascii", "replace")


class _Map(ModbusServerContext):
    """The station's registers as pymodbus' server sees a datastore (async get/set by function code).

    Not ``super().__init__``: pymodbus 3.x serves any context marked ``old_simulator`` through these two
    coroutines, which is all a fixed register map needs."""

    def __init__(self, on_write) -> None:  # noqa: D107 - see class docstring
        self.old_simulator = True
        self.simdevices: list = []
        self.coils = [False] * N_COILS
        self.regs = [0] * N_REGISTERS
        self.on_write = on_write

    def device_ids(self) -> list[int]:
        return [0]

    async def async_getValues(self, device_id: int, func_code: int, address: int, count: int = 1):  # noqa: N802
        # reads, and the read-back after a write (pymodbus reads with the write's function code)
        table = (
            self.coils if func_code in (1, 2, 5, 15) else self.regs if func_code in (3, 4, 6, 16) else None
        )
        if table is None or address < 0 or address + count > len(table):
            return ExcCodes.ILLEGAL_ADDRESS
        return list(table[address : address + count])

    async def async_setValues(self, device_id: int, func_code: int, address: int, values):  # noqa: N802
        if func_code not in (5, 15):
            return ExcCodes.ILLEGAL_ADDRESS  # registers are read-only to the PLC
        values = list(values) if isinstance(values, (list, tuple)) else [values]
        addrs = range(address, address + len(values))
        if any(a not in WRITABLE_COILS for a in addrs):
            return ExcCodes.ILLEGAL_ADDRESS
        for a, v in zip(addrs, values, strict=True):
            previous, self.coils[a] = self.coils[a], bool(v)
            self.on_write(a, bool(v), previous)
        return None


class ModbusServer:
    """The station's Modbus TCP server.

    Args:
        config: ``plc.modbus``.
        station: the ``PlcStation`` (receives the PLC's triggers).
        class_names: the bundle's classes (per-class counts in this order; at most 20 are mapped).
        heartbeat_ms: the HEARTBEAT coil toggles at this period.
    """

    def __init__(
        self, config: ModbusConfig, station: PlcStation, class_names: list[str], heartbeat_ms: int = 500
    ) -> None:
        self.config, self.station = config, station
        self.class_names, self.heartbeat_s = list(class_names), heartbeat_ms / 1e3
        if len(self.class_names) > MAX_CLASSES:
            log.warning("Modbus map holds per-class counts of the first %d classes only", MAX_CLASSES)
        self.map = _Map(self._on_write)
        self.map.regs[N_CLASSES] = min(len(self.class_names), MAX_CLASSES)
        self.map.regs[TRIGGER_SEQ_HI] = self.map.regs[TRIGGER_SEQ_LO] = 0xFFFF
        self.stats = {"acks": 0, "acks_missed": 0, "plc_triggers": 0}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._server: ModbusTcpServer | None = None

    protocol = "modbus"

    def clients(self) -> int:
        """Client connections open now (metrics)."""
        server = self._server
        return 0 if server is None else len(server.active_connections)

    def start(self, timeout: float = 30.0) -> ModbusServer:
        check_port(self.config.host, self.config.port, "plc.modbus")
        logging.getLogger("pymodbus").setLevel(logging.WARNING)
        self._thread = threading.Thread(target=self._run, name="plc-modbus", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise PlcStartError(f"plc.modbus: server did not start within {timeout:.0f} s")
        if self._error is not None:
            raise PlcStartError(
                f"plc.modbus.port: cannot listen on {self.config.host}:{self.config.port}: {self._error}"
            )
        log.info("Modbus TCP server on %s:%d", self.config.host, self.config.port)
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None and self._thread and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(10.0)

    def present(self, result: PlcResult) -> None:
        self._call(self._apply, result)

    def set_alarm(self, error_code: int, text: str) -> None:
        self._call(self._apply_alarm, error_code)

    def _call(self, fn, *args) -> None:
        if self._loop is not None and not self._loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: the server stopped
                self._loop.call_soon_threadsafe(fn, *args)

    # -- the server's own thread (everything below runs on its loop) ----------------------------------
    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as e:  # noqa: BLE001 - reported by start()
            if not self._ready.is_set():
                self._error = e
            else:
                log.exception("Modbus server failed")
        finally:
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        server = self._server = ModbusTcpServer(self.map, address=(self.config.host, self.config.port))
        await server.serve_forever(background=True)
        self._ready.set()
        try:
            while not self._stop.is_set():
                try:
                    await asyncio.wait_for(self._stop.wait(), self.heartbeat_s)
                except asyncio.TimeoutError:
                    self.map.coils[HEARTBEAT] = not self.map.coils[HEARTBEAT]
        finally:
            await server.shutdown()

    def _apply(self, r: PlcResult) -> None:
        c, h = self.map.coils, self.map.regs
        if c[RESULTS_VALID]:
            self.stats["acks_missed"] += 1  # newest wins: the line never waits for a PLC
            h[ACKS_MISSED] = self.stats["acks_missed"] & 0xFFFF
        h[RESULT_SEQ] = r.result_seq & 0xFFFF
        seq = r.trigger_seq & 0xFFFFFFFF if r.trigger_seq >= 0 else 0xFFFFFFFF
        h[TRIGGER_SEQ_HI], h[TRIGGER_SEQ_LO] = seq >> 16, seq & 0xFFFF
        h[VERDICT_CODE], h[REJECT_REASON] = r.verdict_code, r.reason_code
        h[DEFECT_COUNT] = min(r.defect_count, 0xFFFF)
        h[TOP_CLASS] = self.class_names.index(r.top_class) + 1 if r.top_class in self.class_names else 0
        h[TRIGGER_TO_SIGNAL_MS] = min(int(round(r.trigger_to_signal_ms or 0)), 0xFFFF)
        counts = list(r.class_counts[:MAX_CLASSES])
        h[CLASS_COUNTS : CLASS_COUNTS + len(counts)] = [min(x, 0xFFFF) for x in counts]
        h[PART_ID : PART_ID + PART_ID_REGS] = ascii_registers(r.part_id)
        c[REJECT] = r.reject
        c[INSPECTION_COMPLETED] = not c[INSPECTION_COMPLETED]
        c[RESULTS_VALID] = True

    def _apply_alarm(self, code: int) -> None:
        self.map.regs[ERROR_CODE] = code & 0xFFFF
        self.map.coils[ALARM] = code != 0

    def _on_write(self, address: int, value: bool, previous: bool) -> None:
        c, h = self.map.coils, self.map.regs
        if address == TRIGGER and value and not previous:
            self.stats["plc_triggers"] += 1
            h[TRIGGER_COUNT] = self.stats["plc_triggers"] & 0xFFFF
            c[TRIGGER_ACK] = True
            self.station.on_plc_trigger()
        elif address == TRIGGER and not value:
            c[TRIGGER_ACK] = False
        elif address == RESULTS_ACK and value and not previous and c[RESULTS_VALID]:
            self.stats["acks"] += 1
            c[RESULTS_VALID] = False
