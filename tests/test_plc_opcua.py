"""The OPC UA server with a real asyncua client playing the PLC, over Basic256Sha256 SignAndEncrypt with a
username/password and a trusted client certificate: trigger, read the result, acknowledge; every result
matches the verdict MQTT carried for the same part; a PLC that never acknowledges or drops the connection
mid-handshake does not stall the line; a wrong password, an untrusted certificate and anonymous logins are
refused, with the reason logged by the server."""

from __future__ import annotations

import asyncio
import logging
import shutil

import pytest
from asyncua import Client, ua
from asyncua.crypto.security_policies import SecurityPolicyBasic256Sha256
from plc_helpers import (
    Collector,
    free_port,
    gated_pipeline,
    line_file,
    recorded_line,
    run_in_thread,
    wait_until,
)
from test_backends import TOY_CLASSES, make_toy_bundle

from rtvp_edge.messaging.plc.certs import make_certificate

pytestmark = [pytest.mark.timeout(240)]

PASSWORD = "gate-7-secret"
CLIENT_URI = "urn:test:plc-client"


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return make_toy_bundle(tmp_path_factory.mktemp("plc") / "bundle")


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    d = tmp_path_factory.mktemp("certs")
    server = make_certificate(d, "server", "urn:rtvp-edge:server", server=True)
    client = make_certificate(d / "client", "plc", CLIENT_URI, server=False)
    stranger = make_certificate(d / "stranger", "stranger", CLIENT_URI, server=False)
    (d / "trusted").mkdir()
    shutil.copy(client[0], d / "trusted" / "plc.der")
    return {"server": server, "client": client, "stranger": stranger, "trusted": d / "trusted"}


def opcua_yaml(port: int, certs, deadline_ms: float | None = 60_000) -> str:
    s_cert, s_key = certs["server"]
    dl = f"  reject_deadline_ms: {deadline_ms}\n" if deadline_ms else ""
    return (
        dl + "  heartbeat_ms: 100\n"
        "  opcua:\n"
        f"    host: 127.0.0.1\n    port: {port}\n"
        f"    certificate: {s_cert}\n    private_key: {s_key}\n    trusted_clients: {certs['trusted']}\n"
        "    users: [{username: plc, password_env: RTVP_TEST_PLC_PASSWORD}]\n"
    )


async def connect(port: int, cert_key, user="plc", password=PASSWORD) -> Client:
    c = Client(f"opc.tcp://127.0.0.1:{port}/rtvp-edge/", timeout=30)
    c.application_uri = CLIENT_URI
    await c.set_security(
        SecurityPolicyBasic256Sha256,
        str(cert_key[0]),
        str(cert_key[1]),
        mode=ua.MessageSecurityMode.SignAndEncrypt,
    )
    if user is not None:
        c.set_user(user)
        c.set_password(password)
    await c.connect()
    return c


class Plc:
    """The PLC's view of the station object: nodes by name (string NodeIds, as documented)."""

    def __init__(self, client: Client, ns: int, station: str = "st1") -> None:
        self.client, self.ns, self.station = client, ns, station

    def node(self, name: str):
        return self.client.get_node(ua.NodeId(f"{self.station}.{name}", self.ns))

    async def read(self, name: str):
        return await self.node(name).read_value()

    async def write(self, name: str, value: bool) -> None:
        await self.node(name).write_value(ua.DataValue(ua.Variant(value, ua.VariantType.Boolean)))

    async def wait(self, name: str, predicate, timeout: float = 60.0):
        end = asyncio.get_running_loop().time() + timeout
        while asyncio.get_running_loop().time() < end:
            value = await self.read(name)
            if predicate(value):
                return value
            await asyncio.sleep(0.01)
        raise AssertionError(f"{name} never satisfied the condition within {timeout} s")


async def plc_session(port, certs, gate, n_parts: int) -> list[dict]:
    """Trigger -> TriggerAck -> (cameras shoot) -> ResultsValid -> read -> ResultsAck, for every part."""
    client = await connect(port, certs["client"])
    try:
        ns = await client.get_namespace_index("urn:rtvp-edge:plc")
        plc = Plc(client, ns)
        assert await plc.read("ClassNames") == list(TOY_CLASSES)
        beat = await plc.read("Heartbeat")
        await plc.wait("Heartbeat", lambda v: v != beat)  # the server is alive
        results = []
        for k in range(n_parts):
            await plc.write("Trigger", True)
            await plc.wait("TriggerAck", bool)
            await plc.write("Trigger", False)
            await plc.wait("TriggerAck", lambda v: not v)
            gate.pass_one()  # the container reaches the cameras
            await plc.wait("ResultSeq", lambda v, k=k: v == k + 1)
            assert await plc.read("ResultsValid") is True
            r = {n: await plc.read(n) for n in (
                "PartId", "TriggerSeq", "VerdictCode", "Verdict", "Reject", "RejectReason", "DefectCount",
                "DefectCounts", "TopClass", "ResultSeq", "TriggerCount", "ResultTimestamp",
            )}  # fmt: skip
            results.append(r)
            await plc.write("ResultsAck", True)
            await plc.wait("ResultsValid", lambda v: not v)
            await plc.write("ResultsAck", False)
        results.append({"AcksMissed": await plc.read("AcksMissed"), "Alarm": await plc.read("Alarm")})
        return results
    finally:
        await client.disconnect()


def test_plc_handshake_over_signed_encrypted_session_matches_mqtt(
    tmp_path, bundle, certs, mosquitto, monkeypatch
):
    monkeypatch.setenv("RTVP_TEST_PLC_PASSWORD", PASSWORD)
    n, ng = 6, {1, 4}
    rec = recorded_line(tmp_path, n, ng)
    port = free_port()
    p, gate, got = gated_pipeline(
        line_file(tmp_path, bundle, rec, opcua_yaml(port, certs), mosquitto.port), rec
    )
    mqtt = Collector(mosquitto.port)
    try:
        t = run_in_thread(p, n)
        results = asyncio.run(plc_session(port, certs, gate, n))
        t.join(120)
        assert not t.is_alive(), "the line did not finish"
        verdicts = wait_until(lambda: len(mqtt.verdicts()) == n, what="MQTT verdicts") and mqtt.verdicts()
    finally:
        mqtt.close()
        p.close()
    tail = results.pop()
    assert tail == {"AcksMissed": 0, "Alarm": False}
    assert [r["TriggerSeq"] for r in results] == list(range(n))
    assert {r["TriggerSeq"] for r in results if r["Reject"]} == ng  # the NG containers, and only those
    for r in results:
        v = verdicts[r["PartId"]]
        assert v["trigger_seq"] == r["TriggerSeq"] and v["verdict"] == r["Verdict"]
        assert r["VerdictCode"] == {"OK": 1, "NG": 2}[v["verdict"]]
        assert r["Reject"] is (v["verdict"] != "OK") and r["RejectReason"] == (
            "defect" if r["Reject"] else ""
        )
        assert r["DefectCount"] == v["defect_count"] == sum(r["DefectCounts"])
        best = max(v["defects"], key=lambda d: d["score"], default=None)
        assert r["TopClass"] == (best["class_name"] if best else "")
        assert v["plc"] == {
            "signal": "REJECT" if r["Reject"] else "PASS", "reason": r["RejectReason"],
            "result_seq": r["ResultSeq"], "late": False, "deadline_ms": 60000.0,
            "trigger_to_signal_ms": v["plc"]["trigger_to_signal_ms"],
        }  # fmt: skip
    assert results[-1]["TriggerCount"] == n


async def careless_plc(port, certs, gate, n_parts: int) -> None:
    """Triggers, reads, never acknowledges, then drops the connection with Trigger still high."""
    client = await connect(port, certs["client"])
    ns = await client.get_namespace_index("urn:rtvp-edge:plc")
    plc = Plc(client, ns)
    gate.pass_one()
    await plc.wait("ResultSeq", lambda v: v == 1)
    await plc.write("Trigger", True)
    await plc.wait("TriggerAck", bool)
    # gone mid-handshake: no ResultsAck, Trigger left high, no CloseSession
    client.uaclient.protocol.transport.abort()
    for _ in range(n_parts - 1):
        gate.pass_one()


async def read_after(port, certs, n_parts):
    client = await connect(port, certs["client"])
    try:
        plc = Plc(client, await client.get_namespace_index("urn:rtvp-edge:plc"))
        await plc.wait("ResultSeq", lambda v: v == n_parts)
        return {n: await plc.read(n) for n in ("ResultSeq", "AcksMissed", "ResultsValid", "TriggerAck")}
    finally:
        await client.disconnect()


def test_missing_ack_and_dropped_client_do_not_stall_the_line(tmp_path, bundle, certs, monkeypatch):
    monkeypatch.setenv("RTVP_TEST_PLC_PASSWORD", PASSWORD)
    n = 5
    rec = recorded_line(tmp_path, n, set())
    port = free_port()
    p, gate, got = gated_pipeline(
        line_file(tmp_path, bundle, rec, opcua_yaml(port, certs), None), rec, use_mqtt=False
    )
    try:
        t = run_in_thread(p, n)
        asyncio.run(careless_plc(port, certs, gate, n))
        t.join(120)
        assert not t.is_alive(), "the line stalled"
        assert len(got) == n
        seen = asyncio.run(read_after(port, certs, n))  # a PLC reconnecting finds the newest result
    finally:
        p.close()
    assert seen["ResultSeq"] == n and seen["ResultsValid"] is True
    assert seen["AcksMissed"] == n - 1  # every result replaced unacknowledged was counted
    assert seen["TriggerAck"] is True  # Trigger still high from the vanished PLC


async def connect_and_close(port, cert_key) -> bool:
    client = await connect(port, cert_key)
    await client.disconnect()
    return True


def test_wrong_password_untrusted_certificate_and_anonymous_are_refused(
    tmp_path, bundle, certs, monkeypatch, caplog
):
    monkeypatch.setenv("RTVP_TEST_PLC_PASSWORD", PASSWORD)
    rec = recorded_line(tmp_path, 1, set())
    port = free_port()
    p, gate, _ = gated_pipeline(
        line_file(tmp_path, bundle, rec, opcua_yaml(port, certs), None), rec, use_mqtt=False
    )
    caplog.set_level(logging.WARNING, logger="rtvp_edge.messaging.plc.opcua")
    try:
        with pytest.raises(ua.UaStatusCodeError) as wrong:
            asyncio.run(connect(port, certs["client"], password="guess"))
        assert "BadUserAccessDenied" in type(wrong.value).__name__ or "Denied" in str(wrong.value)
        with pytest.raises(Exception) as untrusted:  # noqa: PT011 - asyncua raises per transport state
            asyncio.run(connect(port, certs["stranger"]))
        assert (
            "Untrusted" in f"{type(untrusted.value).__name__} {untrusted.value}" or "Untrusted" in caplog.text
        )
        with pytest.raises(ua.UaStatusCodeError) as anonymous:  # allow_anonymous is false
            asyncio.run(connect(port, certs["client"], user=None))
        assert "BadIdentityTokenRejected" in type(anonymous.value).__name__
        assert asyncio.run(connect_and_close(port, certs["client"]))  # the right credentials still work
    finally:
        p.close()
    assert "login refused for user 'plc'" in caplog.text
    assert "client certificate CN=stranger" in caplog.text and "trusted_clients" in caplog.text
    assert "BadCertificateUntrusted" in caplog.text
