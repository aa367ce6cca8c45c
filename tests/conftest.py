"""Shared fixtures. ``mosquitto``: a real Mosquitto broker on a free localhost port, per test.

    def test_x(mosquitto):                   # plain, anonymous
        EventPublisher(MqttConfig(broker="external", host=mosquitto.host, port=mosquitto.port), ...)
        mosquitto.stop(); mosquitto.start()  # restart on the same port

    def test_y(mosquitto_factory):           # TLS and/or username + password
        broker = mosquitto_factory(tls=True, users={"line": "s3cret"})
        broker.tls["ca"]                     # CA certificate the client must trust
        broker.tls["client_cert"], broker.tls["client_key"]   # for require_client_cert=True

Tests skip with a clear reason when the mosquitto binary is absent; under ``scripts/test.sh`` (CI, which
installs Debian's package) they fail instead (``RTVP_REQUIRE_MOSQUITTO=1``).
"""

from __future__ import annotations

import os
import shutil

import pytest

from tests.mqtt_broker import MosquittoBroker, find_mosquitto, make_test_ca


@pytest.fixture
def mosquitto_factory(tmp_path_factory):
    """Factory ``(tls=False, users=None, require_client_cert=False, server_names="DNS:localhost,IP:127.0.0.1")
    -> MosquittoBroker`` (started). ``broker.tls`` holds the PEM paths: ca, cert/key (server),
    client_cert/client_key (signed by the same CA)."""
    binary = find_mosquitto()
    if binary is None and os.environ.get("RTVP_REQUIRE_MOSQUITTO") == "1":
        # scripts/test.sh (CI) installs it: there a missing broker is a failure, not a skipped test
        pytest.fail(
            "mosquitto broker binary not found, and RTVP_REQUIRE_MOSQUITTO=1 (apt-get install mosquitto)"
        )
    if binary is None:
        pytest.skip(
            "mosquitto broker binary not found (apt-get install mosquitto); MQTT tests need a real broker"
        )
    brokers: list[MosquittoBroker] = []

    def make(
        tls: bool = False,
        users: dict[str, str] | None = None,
        require_client_cert: bool = False,
        server_names: str = "DNS:localhost,IP:127.0.0.1",
    ) -> MosquittoBroker:
        if users and shutil.which("mosquitto_passwd") is None:
            pytest.skip("mosquitto_passwd not found (ships with Debian's mosquitto package)")
        if tls and shutil.which("openssl") is None:
            pytest.skip("openssl command line tool not found; needed to make a test CA")
        workdir = tmp_path_factory.mktemp("mosquitto")
        certs = make_test_ca(workdir / "certs", server_names) if tls else None
        broker = MosquittoBroker(
            workdir=workdir, binary=binary, tls=certs, users=users, require_client_cert=require_client_cert
        )
        brokers.append(broker)
        return broker.start_on_a_free_port()

    yield make
    for broker in brokers:
        broker.stop()


@pytest.fixture
def mosquitto(mosquitto_factory) -> MosquittoBroker:
    """A plain (anonymous, no TLS) Mosquitto on 127.0.0.1 with ``.host``, ``.port``, ``.stop()``, ``.start()``."""
    return mosquitto_factory()
