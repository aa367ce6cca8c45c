"""The OPC UA server (asyncua): one object per station with the vision-system handshake.

Node table, handshake timing and security: docs/plc.md. Every variable has a string NodeId
``ns=<index of plc.opcua.namespace>;s=<station>.<Name>``, e.g. ``ns=2;s=rig-1.Reject``, so a PLC program can
address it without browsing.

The server runs its own asyncio loop in a thread. The line hands it results with ``present`` (never
blocks: the result is queued for the loop); the PLC's writes to ``Trigger`` and ``ResultsAck`` are seen
through asyncua's post-write callback, so the handshake answers without polling.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import hmac
import logging
import threading
from pathlib import Path
from typing import Any

from asyncua import Server, ua
from asyncua.common.callback import CallbackType
from asyncua.crypto.permission_rules import User, UserRole
from asyncua.crypto.truststore import TrustStore
from asyncua.crypto.validator import CertificateValidator, CertificateValidatorOptions

from rtvp_edge.messaging.plc.config import OpcUaConfig
from rtvp_edge.messaging.plc.errors import PlcStartError, check_port
from rtvp_edge.messaging.plc.station import PlcResult, PlcStation

log = logging.getLogger(__name__)

_POLICIES = {
    "None": ua.SecurityPolicyType.NoSecurity,
    "Basic256Sha256_Sign": ua.SecurityPolicyType.Basic256Sha256_Sign,
    "Basic256Sha256_SignAndEncrypt": ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt,
}

V = ua.VariantType
# name -> (variant type, initial value, writable by the PLC); the node table of docs/plc.md
NODES: dict[str, tuple[ua.VariantType, Any, bool]] = {
    # handshake
    "Trigger": (V.Boolean, False, True),
    "TriggerAck": (V.Boolean, False, False),
    "TriggerCount": (V.UInt32, 0, False),
    "InspectionCompleted": (V.Boolean, False, False),
    "ResultsValid": (V.Boolean, False, False),
    "ResultsAck": (V.Boolean, False, True),
    # result of the latest part, written between ResultSeqBegin (first) and ResultSeq (last)
    "ResultSeqBegin": (V.UInt32, 0, False),
    "ResultSeq": (V.UInt32, 0, False),
    "PartId": (V.String, "", False),
    "TriggerSeq": (V.Int64, -1, False),
    "VerdictCode": (V.UInt16, 0, False),
    "Verdict": (V.String, "", False),
    "Reject": (V.Boolean, False, False),
    "RejectReasonCode": (V.UInt16, 0, False),
    "RejectReason": (V.String, "", False),
    "DefectCount": (V.UInt16, 0, False),
    "DefectCounts": (V.UInt16, [], False),  # per class, in ClassNames order
    "ClassNames": (V.String, [], False),
    "TopClass": (V.String, "", False),
    "TopScore": (V.Float, 0.0, False),
    "ResultTimestamp": (V.DateTime, None, False),
    "TriggerToSignalMs": (V.Double, 0.0, False),
    # station health
    "Alarm": (V.Boolean, False, False),
    "AlarmText": (V.String, "", False),
    "ErrorCode": (V.UInt16, 0, False),
    "Heartbeat": (V.UInt32, 0, False),
    "AcksMissed": (V.UInt32, 0, False),
}


class _Users:
    """asyncua user manager: the line file's users (passwords from the environment), anonymous only when
    ``allow_anonymous``. Refusals are logged with the username (never the password)."""

    def __init__(self, config: OpcUaConfig) -> None:
        self.passwords = {u.username: u.password() for u in config.users}
        self.allow_anonymous = config.allow_anonymous

    def get_user(self, iserver, username=None, password=None, certificate=None) -> User | None:
        if username is None and password is None:
            if self.allow_anonymous:
                return User(role=UserRole.User, name="anonymous")
            log.warning("OPC UA: anonymous login refused (plc.opcua.allow_anonymous is false)")
            return None
        expected = self.passwords.get(username or "")
        given = password.decode() if isinstance(password, bytes) else (password or "")
        if expected is not None and hmac.compare_digest(expected.encode(), given.encode()):
            return User(role=UserRole.User, name=username)
        log.warning("OPC UA: login refused for user %r (unknown user or wrong password)", username)
        return None


class OpcUaServer:
    """The station's OPC UA server.

    Args:
        config: ``plc.opcua``.
        station_name: the station id (the object's name and the NodeId prefix).
        station: the ``PlcStation`` (receives the PLC's triggers).
        class_names: the bundle's classes (``ClassNames``, ``DefectCounts`` order).
        heartbeat_ms: ``Heartbeat`` increments at this period while the server runs.
    """

    def __init__(
        self,
        config: OpcUaConfig,
        station_name: str,
        station: PlcStation,
        class_names: list[str],
        heartbeat_ms: int = 500,
    ) -> None:
        self.config, self.station_name, self.station = config, station_name, station
        self.class_names, self.heartbeat_s = list(class_names), heartbeat_ms / 1e3
        self.port = config.port
        self.ns = 0
        self.node_ids: dict[str, ua.NodeId] = {}
        self.stats = {"acks": 0, "acks_missed": 0, "plc_triggers": 0}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: asyncio.Queue | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._values: dict[str, Any] = {k: v for k, (_, v, _) in NODES.items()}
        self._server: Server | None = None

    protocol = "opcua"

    @property
    def endpoint(self) -> str:
        return f"opc.tcp://{self.config.host}:{self.port}/rtvp-edge/"

    def clients(self) -> int:
        """Client connections open now (secure channels; metrics)."""
        server = self._server
        return 0 if server is None else len(server.iserver.asyncio_transports)

    # -- life cycle (line threads) ---------------------------------------------------------------------
    def start(self, timeout: float = 60.0) -> OpcUaServer:
        """Start listening. Raises ``PlcStartError`` naming the key (port in use, bad certificate...)."""
        try:
            self._users = _Users(self.config)  # every password_env must be set before we listen
        except ValueError as e:
            raise PlcStartError(f"plc.opcua.users: {e}") from None
        check_port(self.config.host, self.config.port, "plc.opcua")
        self._thread = threading.Thread(target=self._run, name="plc-opcua", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise PlcStartError(f"plc.opcua: server did not start within {timeout:.0f} s")
        if self._error is not None:
            raise PlcStartError(_start_error(self.config, self._error)) from None
        log.info("OPC UA server on %s (object %s, namespace %s)", self.endpoint, self.station_name, self.ns)
        return self

    def stop(self) -> None:
        if self._loop is not None and self._queue is not None and self._thread and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._queue.put_nowait, None)
            self._thread.join(10.0)

    def present(self, result: PlcResult) -> None:
        self._put(("result", result))

    def set_alarm(self, error_code: int, text: str) -> None:
        self._put(("alarm", (error_code, text)))

    def _put(self, item) -> None:
        if self._loop is not None and self._queue is not None and not self._loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: the server stopped
                self._loop.call_soon_threadsafe(self._queue.put_nowait, item)

    # -- the server's own thread ----------------------------------------------------------------------
    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as e:  # noqa: BLE001 - reported by start()
            if not self._ready.is_set():
                self._error = e
            else:
                log.exception("OPC UA server failed")
        finally:
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._queue = asyncio.Queue()
        server = self._server = await self._build()
        await server.start()
        self._ready.set()
        heartbeat = asyncio.create_task(self._heartbeat())
        try:
            while (item := await self._queue.get()) is not None:
                kind, payload = item
                if kind == "result":
                    await self._present(payload)
                else:
                    await self._write("ErrorCode", payload[0])
                    await self._write("AlarmText", payload[1])
                    await self._write("Alarm", payload[0] != 0)
        finally:
            heartbeat.cancel()
            await server.stop()

    async def _build(self) -> Server:
        cfg = self.config
        server = Server(user_manager=self._users)
        await server.init()
        server.set_endpoint(f"opc.tcp://{cfg.host}:{cfg.port}/rtvp-edge/")
        server.set_server_name(f"rtvp-edge {self.station_name}")
        await server.set_application_uri(cfg.application_uri)
        server.set_security_policy([_POLICIES[p] for p in cfg.security_policies])
        tokens: list[type] = [ua.UserNameIdentityToken] if cfg.users else []
        if cfg.allow_anonymous:
            tokens.append(ua.AnonymousIdentityToken)
        server.set_identity_tokens(tokens)
        if cfg.certificate:
            await server.load_certificate(cfg.certificate)
            await server.load_private_key(cfg.private_key)
        if cfg.trusted_clients:
            store = TrustStore([Path(cfg.trusted_clients)], [])
            await store.load()
            validator = CertificateValidator(
                CertificateValidatorOptions.TRUSTED_VALIDATION | CertificateValidatorOptions.PEER_CLIENT,
                store,
            )

            async def check(cert, app):
                try:
                    await validator(cert, app)
                except Exception as e:
                    code = getattr(e, "code", None)
                    why = ua.StatusCode(code).name if isinstance(code, int) else f"{type(e).__name__}: {e}"
                    log.warning(
                        "OPC UA: client certificate %s (application %s) refused: %s; trust it by copying it "
                        "into plc.opcua.trusted_clients (%s)",
                        cert.subject.rfc4514_string(), app.ApplicationUri, why, cfg.trusted_clients,
                    )  # fmt: skip
                    raise

            server.set_certificate_validator(check)
        self.ns = await server.register_namespace(cfg.namespace)
        obj = await server.nodes.objects.add_object(
            ua.NodeId(self.station_name, self.ns), ua.QualifiedName(self.station_name, self.ns)
        )
        self._values["ClassNames"] = list(self.class_names)
        self._values["DefectCounts"] = [0] * len(self.class_names)
        self._values["ResultTimestamp"] = datetime.datetime.now(datetime.timezone.utc)
        for name, (vtype, _, writable) in NODES.items():
            nid = ua.NodeId(f"{self.station_name}.{name}", self.ns)
            var = await obj.add_variable(
                nid, ua.QualifiedName(name, self.ns), ua.Variant(self._values[name], vtype)
            )
            if writable:
                await var.set_writable()
            self.node_ids[name] = nid
        self._by_id = {nid: name for name, nid in self.node_ids.items()}
        server.subscribe_server_callback(CallbackType.PostWrite, self._on_plc_write)
        return server

    async def _write(self, name: str, value: Any) -> None:
        self._values[name] = value
        vtype = NODES[name][0]
        await self._server.write_attribute_value(  # type: ignore[union-attr]
            self.node_ids[name], ua.DataValue(ua.Variant(value, vtype))
        )

    async def _present(self, r: PlcResult) -> None:
        if self._values["ResultsValid"]:
            self.stats["acks_missed"] += 1  # the PLC did not acknowledge the previous result: newest wins
            await self._write("AcksMissed", self.stats["acks_missed"])
        # A consistent snapshot for a PLC reading mid-update (each write may let the loop serve a read):
        # ResultSeqBegin before the first field, ResultSeq after the last. A PLC reads ResultSeq, the
        # fields, then ResultSeqBegin (one Read request in that order will do): equal -> one result.
        await self._write("ResultsValid", False)
        await self._write("ResultSeqBegin", r.result_seq)
        await self._write("PartId", r.part_id)
        await self._write("TriggerSeq", r.trigger_seq)
        await self._write("VerdictCode", r.verdict_code)
        await self._write("Verdict", r.verdict)
        await self._write("Reject", r.reject)
        await self._write("RejectReasonCode", r.reason_code)
        await self._write("RejectReason", r.reason)
        await self._write("DefectCount", min(r.defect_count, 65535))
        await self._write("DefectCounts", [min(c, 65535) for c in r.class_counts])
        await self._write("TopClass", r.top_class)
        await self._write("TopScore", r.top_score)
        await self._write(
            "ResultTimestamp", datetime.datetime.fromtimestamp(r.result_time, datetime.timezone.utc)
        )
        await self._write("TriggerToSignalMs", r.trigger_to_signal_ms or 0.0)
        await self._write("ResultSeq", r.result_seq)  # last of the result: the snapshot is complete
        await self._write("InspectionCompleted", not self._values["InspectionCompleted"])  # toggles
        await self._write("ResultsValid", True)

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_s)
            await self._write("Heartbeat", (self._values["Heartbeat"] + 1) % 2**32)

    async def _on_plc_write(self, event, _dispatcher) -> None:
        for wv in event.request_params.NodesToWrite:
            name = self._by_id.get(wv.NodeId)
            if name not in ("Trigger", "ResultsAck") or wv.AttributeId != ua.AttributeIds.Value:
                continue
            value = bool(wv.Value.Value.Value)
            previous, self._values[name] = self._values[name], value
            if name == "Trigger" and value and not previous:
                self.stats["plc_triggers"] += 1
                await self._write("TriggerCount", (self._values["TriggerCount"] + 1) % 2**32)
                await self._write("TriggerAck", True)
                self.station.on_plc_trigger()
            elif name == "Trigger" and not value and previous:
                await self._write("TriggerAck", False)
            elif name == "ResultsAck" and value and not previous and self._values["ResultsValid"]:
                self.stats["acks"] += 1
                await self._write("ResultsValid", False)


def _start_error(config: OpcUaConfig, e: BaseException) -> str:
    if isinstance(e, OSError) and e.errno in (98, 48, 10048):  # EADDRINUSE (Linux, macOS, Windows)
        return f"plc.opcua.port: cannot listen on {config.host}:{config.port}: address already in use"
    if isinstance(e, OSError) and config.host not in ("0.0.0.0", "::", "localhost", "127.0.0.1"):
        return f"plc.opcua.host: cannot listen on {config.host}:{config.port}: {e}"
    if isinstance(e, OSError):
        return f"plc.opcua.port: cannot listen on {config.host}:{config.port}: {e}"
    return f"plc.opcua: server did not start: {type(e).__name__}: {e} (check certificate and private_key)"
