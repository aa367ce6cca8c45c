"""OPC UA result atomicity: a PLC reading while results replace each other never takes fields of two
parts for one. The server writes ``ResultSeqBegin`` before the first result field and ``ResultSeq`` after
the last; a client reading ResultSeq, the fields, then ResultSeqBegin (one Read request, or three) and
finding them equal has one result's fields. A real asyncua server and client, hundreds of results.

The write order is what makes the protocol hold whatever the server library does between two writes; the
reading test checks the protocol end to end (with asyncua 1.x one result's writes happen to run without
serving a read in between, so the reads that see ResultSeq != ResultSeqBegin come from reads spread over
several requests while results replace each other)."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from asyncua import Client, ua
from plc_helpers import free_port

from rtvp_edge.messaging.plc.config import OpcUaConfig
from rtvp_edge.messaging.plc.opcua import NODES, OpcUaServer
from rtvp_edge.messaging.plc.station import PlcResult, PlcStation

pytestmark = [pytest.mark.timeout(240)]

CLASSES = ["oil", "bubble"]
FIELDS = ["PartId", "TriggerSeq", "VerdictCode", "Verdict", "DefectCount", "DefectCounts", "TopClass"]


def result(seq: int) -> PlcResult:
    """Every field derived from ``seq``: a mix of two results cannot pass ``expected`` by chance."""
    verdict = ("OK", "NG", "INCOMPLETE", "DEADLINE")[seq % 4]
    counts = (seq % 7, seq % 5)
    return PlcResult(
        seq, f"P{seq:05d}", 7 * seq, verdict, verdict != "OK", "" if verdict == "OK" else "defect",
        sum(counts), counts, CLASSES[seq % 2], 0.5, 1.7e9 + seq, float(seq),
    )  # fmt: skip


def expected(seq: int) -> list:
    r = result(seq)
    return [
        r.part_id,
        r.trigger_seq,
        r.verdict_code,
        r.verdict,
        r.defect_count,
        list(r.class_counts),
        r.top_class,
    ]


class _Ignore:
    def datachange_notification(self, *_):
        pass


@pytest.fixture
def server():
    cfg = OpcUaConfig(host="127.0.0.1", port=free_port(), security_policies=["None"], allow_anonymous=True)
    srv = OpcUaServer(cfg, "st1", PlcStation(CLASSES), CLASSES, heartbeat_ms=50)
    order: list[str] = []
    write = srv._write

    async def recording_write(name, value):  # the order the server writes its nodes in
        order.append(name)
        await write(name, value)

    srv._write = recording_write
    srv.start()
    srv.order = order
    yield srv
    srv.stop()


def test_result_seq_begin_first_and_result_seq_last(server):
    server.order.clear()
    server.present(result(1))
    server.set_alarm(0, "")  # queued behind the result: its writes show the result's writes are done
    deadline = time.monotonic() + 30
    while "Alarm" not in server.order and time.monotonic() < deadline:
        time.sleep(0.01)  # the server's own thread writes; wait for the state, not for a time
    assert "Alarm" in server.order, server.order
    order = [n for n in server.order if n not in ("Heartbeat", "ErrorCode", "AlarmText", "Alarm")]
    begin, end = order.index("ResultSeqBegin"), order.index("ResultSeq")
    fields = [n for n in NODES if n not in ("ResultSeqBegin", "ResultSeq") and n in order]
    fields = [n for n in fields if n not in ("ResultsValid", "InspectionCompleted", "AcksMissed")]
    assert len(fields) >= 10
    assert all(begin < order.index(n) < end for n in fields), order
    assert order[0] == "ResultsValid" and order[-2:] == ["InspectionCompleted", "ResultsValid"], order


def test_a_plc_reading_mid_update_never_mixes_two_results(server):
    n = 400

    def feed():  # the line: results replace each other on the server while the PLC reads
        for seq in range(1, n + 1):
            server.present(result(seq))
            time.sleep(0.002)  # spreads the updates over the reads (how many interleave, not the outcome)

    async def plc() -> tuple[int, int, set]:
        client = Client(f"opc.tcp://127.0.0.1:{server.port}/rtvp-edge/", timeout=30)
        await client.connect()
        try:
            ns = await client.get_namespace_index("urn:rtvp-edge:plc")
            node = {
                k: client.get_node(ua.NodeId(f"st1.{k}", ns))
                for k in ("ResultSeq", "ResultSeqBegin", *FIELDS)
            }
            ordered = [node["ResultSeq"], *(node[f] for f in FIELDS), node["ResultSeqBegin"]]
            # a subscription on every node (as a PLC or an HMI may hold): data-change notifications are
            # sent while the server writes a result, so reads can be served between two field writes
            sub = await client.create_subscription(10, _Ignore())
            await sub.subscribe_data_change(list(node.values()))
            feeder = threading.Thread(target=feed, daemon=True)
            feeder.start()
            consistent, torn, seen = 0, 0, set()
            end = asyncio.get_running_loop().time() + 180
            seq, reads = 0, 0
            while seq != n and asyncio.get_running_loop().time() < end:
                reads += 1
                if reads % 2:  # one Read request: ResultSeq, fields, ResultSeqBegin
                    values = await client.read_values(ordered)
                else:  # three requests, the slower way a PLC program may do it
                    values = [await node["ResultSeq"].read_value()]
                    values += await client.read_values([node[f] for f in FIELDS])
                    values.append(await node["ResultSeqBegin"].read_value())
                seq, fields, begin = values[0], values[1:-1], values[-1]
                if seq != begin:
                    torn += 1  # an update in progress: read again
                    continue
                if seq:
                    assert fields == expected(seq), (seq, fields)
                    consistent += 1
                    seen.add(seq)
            feeder.join(30)
            return consistent, torn, seen
        finally:
            await client.disconnect()

    consistent, torn, seen = asyncio.run(plc())
    assert n in seen and consistent >= 1
    print(f"{consistent} consistent reads of {len(seen)} results, {torn} reads mid-update detected")
