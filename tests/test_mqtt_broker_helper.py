"""The tests' own Mosquitto helper: a port taken between choosing it and binding it (another process on the
machine) makes the first start move to another free port; a restart keeps its port."""

from __future__ import annotations

import socket

import pytest

from tests.mqtt_broker import MosquittoBroker, PortInUse, find_mosquitto


def test_first_start_moves_off_a_port_taken_meanwhile(tmp_path):
    binary = find_mosquitto()
    if binary is None:
        pytest.skip("mosquitto broker binary not found (apt-get install mosquitto)")
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        broker = MosquittoBroker(workdir=tmp_path / "b", binary=binary, port=taken)
        with pytest.raises(PortInUse):
            broker.start()  # a restart keeps its port, and says why it cannot
        broker.start_on_a_free_port()
        try:
            assert broker.port != taken and broker.running
            with socket.create_connection((broker.host, broker.port), timeout=5):
                pass
        finally:
            broker.stop()
