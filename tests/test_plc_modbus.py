"""The Modbus TCP server with a real pymodbus client playing the PLC: the register map for a run of parts
matches the MQTT verdicts; a slow model makes parts miss their deadline: the PLC gets REJECT/deadline in
time, MES gets the late verdict with both facts, and no part is ever signalled OK without a decided OK."""

from __future__ import annotations

import threading

import pytest
from plc_helpers import (
    Collector,
    free_port,
    gated_pipeline,
    line_file,
    recorded_line,
    run_in_thread,
    wait_until,
)
from pymodbus.client import ModbusTcpClient
from test_backends import TOY_CLASSES, make_toy_bundle

from rtvp_edge.messaging.plc import modbus as m
from rtvp_edge.messaging.plc.station import VERDICT_DEADLINE

pytestmark = [pytest.mark.timeout(240)]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return make_toy_bundle(tmp_path_factory.mktemp("plc-mb") / "bundle")


def modbus_yaml(port: int, deadline_ms: float | None = None) -> str:
    dl = f"  reject_deadline_ms: {deadline_ms}\n" if deadline_ms else ""
    return dl + f"  heartbeat_ms: 100\n  modbus: {{host: 127.0.0.1, port: {port}}}\n"


class Plc:
    def __init__(self, port: int) -> None:
        self.client = ModbusTcpClient("127.0.0.1", port=port, timeout=10)
        assert self.client.connect(), "Modbus client could not connect"

    def coils(self) -> list[bool]:
        r = self.client.read_coils(0, count=8)
        assert not r.isError(), r
        return list(r.bits[:8])

    def regs(self) -> list[int]:
        r = self.client.read_holding_registers(0, count=m.N_REGISTERS)
        assert not r.isError(), r
        return list(r.registers)

    def write(self, address: int, value: bool) -> None:
        r = self.client.write_coil(address, value)
        assert not r.isError(), r

    def result(self, regs: list[int], coils: list[bool]) -> dict:
        n = regs[m.N_CLASSES]
        return {
            "part_id": m.registers_ascii(regs[m.PART_ID : m.PART_ID + m.PART_ID_REGS]),
            "trigger_seq": regs[m.TRIGGER_SEQ_HI] << 16 | regs[m.TRIGGER_SEQ_LO],
            "verdict_code": regs[m.VERDICT_CODE],
            "reason": regs[m.REJECT_REASON],
            "defects": regs[m.DEFECT_COUNT],
            "per_class": regs[m.CLASS_COUNTS : m.CLASS_COUNTS + n],
            "top_class": regs[m.TOP_CLASS],
            "reject": coils[m.REJECT],
            "result_seq": regs[m.RESULT_SEQ],
        }


def test_register_map_matches_mqtt_for_a_run_of_parts(tmp_path, bundle, mosquitto):
    n, ng = 5, {0, 3}
    rec = recorded_line(tmp_path, n, ng)
    port = free_port()
    p, gate, _ = gated_pipeline(line_file(tmp_path, bundle, rec, modbus_yaml(port), mosquitto.port), rec)
    mqtt = Collector(mosquitto.port)
    plc = Plc(port)
    try:
        t = run_in_thread(p, n)
        beat = plc.coils()[m.HEARTBEAT]
        wait_until(lambda: plc.coils()[m.HEARTBEAT] != beat, what="heartbeat toggle")
        assert plc.regs()[m.N_CLASSES] == len(TOY_CLASSES)
        # writing a read-only coil or a register is refused (exception response), the map is unchanged
        assert plc.client.write_coil(m.REJECT, True).isError()
        assert plc.client.write_register(m.VERDICT_CODE, 1).isError()
        results = []
        for k in range(n):
            plc.write(m.TRIGGER, True)
            wait_until(lambda: plc.coils()[m.TRIGGER_ACK], what="TRIGGER_ACK")
            plc.write(m.TRIGGER, False)
            wait_until(lambda: not plc.coils()[m.TRIGGER_ACK], what="TRIGGER_ACK cleared")
            completed = plc.coils()[m.INSPECTION_COMPLETED]
            gate.pass_one()
            regs = wait_until(
                lambda k=k: (r := plc.regs())[m.RESULT_SEQ] == k + 1 and r, what=f"result {k + 1}"
            )
            coils = plc.coils()
            assert coils[m.RESULTS_VALID] and coils[m.INSPECTION_COMPLETED] != completed
            results.append(plc.result(regs, coils))
            plc.write(m.RESULTS_ACK, True)
            wait_until(lambda: not plc.coils()[m.RESULTS_VALID], what="RESULTS_VALID cleared by the ack")
            plc.write(m.RESULTS_ACK, False)
        regs = plc.regs()
        assert regs[m.TRIGGER_COUNT] == n and regs[m.ACKS_MISSED] == 0 and regs[m.ERROR_CODE] == 0
        t.join(120)
        assert not t.is_alive()
        wait_until(lambda: len(mqtt.verdicts()) == n, what="MQTT verdicts")
        verdicts = mqtt.verdicts()
    finally:
        plc.client.close()
        mqtt.close()
        p.close()
    assert [r["trigger_seq"] for r in results] == list(range(n))
    assert {r["trigger_seq"] for r in results if r["reject"]} == ng
    for r in results:
        v = verdicts[r["part_id"]]
        assert v["trigger_seq"] == r["trigger_seq"]
        assert r["verdict_code"] == {"OK": 1, "NG": 2}[v["verdict"]] and r["reason"] == (
            1 if r["reject"] else 0
        )
        assert r["defects"] == v["defect_count"] == sum(r["per_class"])
        for i, name in enumerate(TOY_CLASSES):
            assert r["per_class"][i] == sum(d["class_name"] == name for d in v["defects"])
        best = max(v["defects"], key=lambda d: d["score"], default=None)
        assert r["top_class"] == (TOY_CLASSES.index(best["class_name"]) + 1 if best else 0)
        assert v["plc"]["result_seq"] == r["result_seq"] and v["plc"]["late"] is False


def test_slow_model_parts_miss_deadline_plc_rejects_mes_gets_late_verdict(tmp_path, bundle, mosquitto):
    n, ng = 3, {1}
    rec = recorded_line(tmp_path, n, ng)
    port = free_port()
    p, gate, got = gated_pipeline(
        line_file(tmp_path, bundle, rec, modbus_yaml(port, deadline_ms=300), mosquitto.port), rec
    )
    release = threading.Event()
    submit = p.inference.submit

    def slow_submit(part, on_done):  # the model is stuck until the test has seen the deadline signal
        assert release.wait(120)
        release.clear()
        submit(part, on_done)

    p.inference.submit = slow_submit
    mqtt = Collector(mosquitto.port)
    plc = Plc(port)
    try:
        t = run_in_thread(p, n)
        for k in range(n):
            gate.pass_one()
            regs = wait_until(
                lambda k=k: (r := plc.regs())[m.RESULT_SEQ] == k + 1 and r, what="deadline signal"
            )
            r = plc.result(regs, plc.coils())
            assert r["verdict_code"] == VERDICT_DEADLINE
            assert (r["reject"], r["reason"], r["trigger_seq"]) == (True, 3, k)
            assert regs[m.TRIGGER_TO_SIGNAL_MS] >= 300
            assert len(got) == k  # the verdict of this part is not decided yet: REJECT came from the deadline
            release.set()  # the model answers, late
            wait_until(lambda k=k: len(got) == k + 1, what="late verdict")
            # the late verdict changes nothing on the PLC side
            assert plc.regs()[m.RESULT_SEQ] == k + 1
        t.join(120)
        assert not t.is_alive()
        wait_until(lambda: len(mqtt.verdicts()) == n, what="MQTT verdicts")
        verdicts = mqtt.verdicts()
    finally:
        plc.client.close()
        mqtt.close()
        p.close()
    stats = p.plc_station.stats
    assert stats["signalled_pass"] == 0 and stats["deadline"] == n and stats["late_verdicts"] == n
    by_seq = {v["trigger_seq"]: v for v in verdicts.values()}
    for k in range(n):
        v = by_seq[k]
        assert v["verdict"] == ("NG" if k in ng else "OK")  # the real verdict, decided late
        plc_info = v["plc"]
        assert (
            plc_info["signal"] == "REJECT" and plc_info["reason"] == "deadline" and plc_info["late"] is True
        )
        assert plc_info["verdict_after_trigger_ms"] > plc_info["trigger_to_signal_ms"] >= 300
