"""TLS + username/password against a real Mosquitto; refused logins and bad TLS are clear errors."""

from __future__ import annotations

import pytest

from rtvp_edge.messaging.client import MqttConnectError
from rtvp_edge.messaging.config import MqttConfig, MqttConfigError
from rtvp_edge.messaging.publisher import EventPublisher
from rtvp_edge.station import StationIds
from tests.mqtt_broker import MODEL_INFO, Collector, make_verdict

pytestmark = pytest.mark.mqtt
STATION = StationIds("plant1", "glass", "st1")
USERS = {"line7": "s3cret-pw", "mes": "mes-pw"}


@pytest.fixture(scope="module")
def secure_broker(tmp_path_factory):
    """One TLS + password Mosquitto for the module (making a CA costs a little)."""
    from tests.mqtt_broker import MosquittoBroker, find_mosquitto, make_test_ca

    binary = find_mosquitto()
    if binary is None:
        pytest.skip("mosquitto broker binary not found (apt-get install mosquitto)")
    workdir = tmp_path_factory.mktemp("secure-mosquitto")
    broker = MosquittoBroker(workdir=workdir, binary=binary, tls=make_test_ca(workdir / "certs"), users=USERS)
    yield broker.start_on_a_free_port()
    broker.stop()


def _config(broker, tmp_path, ca=None, **kw) -> MqttConfig:
    return MqttConfig(
        broker="external",
        host=kw.pop("host", "localhost"),
        port=broker.port,
        tls={"ca": ca or broker.tls["ca"]},
        username=kw.pop("username", "line7"),
        password_env="RTVP_TEST_MQTT_PASSWORD",
        outbox={"path": tmp_path / "outbox.sqlite"},
        reconnect_min_s=0.05,
        reconnect_max_s=0.5,
        **kw,
    )


def test_tls_and_password_deliver(secure_broker, tmp_path, monkeypatch):
    monkeypatch.setenv("RTVP_TEST_MQTT_PASSWORD", USERS["line7"])
    collector = Collector(secure_broker, "rtvp/#", username="mes", password=USERS["mes"])
    pub = EventPublisher(_config(secure_broker, tmp_path), STATION, MODEL_INFO).start()
    assert pub.connected
    seqs = pub.publish_verdict(make_verdict(2))
    assert collector.wait_for(lambda c: len([p for p in c.payloads() if "seq" in p]) >= len(seqs))
    assert pub.stop(flush_timeout=30) == 0
    collector.close()


def test_wrong_password_is_a_clear_error(secure_broker, tmp_path, monkeypatch):
    monkeypatch.setenv("RTVP_TEST_MQTT_PASSWORD", "not-the-password")
    pub = EventPublisher(_config(secure_broker, tmp_path), STATION, MODEL_INFO)
    with pytest.raises(
        MqttConnectError, match=r"(?i)refused the connection: (not authorized|bad user name or password)"
    ):
        pub.start()
    assert "refused" in pub.state and pub.error is not None
    assert "line7" in str(pub.error) and "RTVP_TEST_MQTT_PASSWORD" in str(pub.error)


def test_unknown_user_is_a_clear_error(secure_broker, tmp_path, monkeypatch):
    monkeypatch.setenv("RTVP_TEST_MQTT_PASSWORD", "x")
    pub = EventPublisher(_config(secure_broker, tmp_path, username="intruder"), STATION, MODEL_INFO)
    with pytest.raises(MqttConnectError, match="refused"):
        pub.start()


def test_missing_password_variable_names_it(secure_broker, tmp_path, monkeypatch):
    monkeypatch.delenv("RTVP_TEST_MQTT_PASSWORD", raising=False)
    pub = EventPublisher(_config(secure_broker, tmp_path), STATION, MODEL_INFO)
    with pytest.raises(MqttConfigError, match="RTVP_TEST_MQTT_PASSWORD is not set"):
        pub.start()


def test_untrusted_certificate_is_a_clear_error(secure_broker, tmp_path, monkeypatch):
    from tests.mqtt_broker import make_test_ca

    monkeypatch.setenv("RTVP_TEST_MQTT_PASSWORD", USERS["line7"])
    other_ca = make_test_ca(tmp_path / "other")["ca"]
    pub = EventPublisher(_config(secure_broker, tmp_path, ca=other_ca), STATION, MODEL_INFO)
    with pytest.raises(MqttConnectError, match="TLS handshake .* failed.*not trusted"):
        pub.start()


def test_missing_ca_file_names_the_key(secure_broker, tmp_path, monkeypatch):
    monkeypatch.setenv("RTVP_TEST_MQTT_PASSWORD", USERS["line7"])
    pub = EventPublisher(_config(secure_broker, tmp_path, ca=tmp_path / "nope.crt"), STATION, MODEL_INFO)
    with pytest.raises(MqttConfigError, match=r"mqtt\.tls\.ca: file .*nope\.crt not found"):
        pub.start()


def test_client_certificate(mosquitto_factory, tmp_path):
    broker = mosquitto_factory(tls=True, require_client_cert=True)
    base = {"broker": "external", "host": "localhost", "port": broker.port, "connect_timeout_s": 2}
    with_cert = MqttConfig(
        **base,
        tls={"ca": broker.tls["ca"], "cert": broker.tls["client_cert"], "key": broker.tls["client_key"]},
        outbox={"path": tmp_path / "a.sqlite"},
    )
    pub = EventPublisher(with_cert, STATION, MODEL_INFO).start()
    assert pub.connected
    pub.publish_verdict(make_verdict(0))
    assert pub.stop(flush_timeout=30) == 0
    # Without a client certificate the broker ends the handshake: never connected, never silently "fine".
    without = MqttConfig(**base, tls={"ca": broker.tls["ca"]}, outbox={"path": tmp_path / "b.sqlite"})
    try:
        pub = EventPublisher(without, STATION, MODEL_INFO).start()
    except MqttConnectError as exc:  # TLS 1.2: the handshake itself fails
        assert "TLS handshake" in str(exc)
    else:  # TLS 1.3: the refusal arrives after the handshake, as a closed connection
        assert not pub.connected and "client certificate" in pub.state
        pub.stop(flush_timeout=0.1)


def test_insecure_skips_only_the_hostname_check(mosquitto_factory, tmp_path):
    broker = mosquitto_factory(tls=True, server_names="DNS:broker.plant.example")
    base = {"broker": "external", "host": "127.0.0.1", "port": broker.port}
    strict = MqttConfig(**base, tls={"ca": broker.tls["ca"]}, outbox={"path": tmp_path / "a.sqlite"})
    with pytest.raises(MqttConnectError, match="does not name this host|mismatch"):
        EventPublisher(strict, STATION, MODEL_INFO).start()
    insecure = MqttConfig(
        **base, tls={"ca": broker.tls["ca"], "insecure": True}, outbox={"path": tmp_path / "b.sqlite"}
    )
    pub = EventPublisher(insecure, STATION, MODEL_INFO).start()
    assert pub.connected
    pub.stop(flush_timeout=1)
    # The chain is still verified: another CA's certificate is refused even with insecure.
    from tests.mqtt_broker import make_test_ca

    other = MqttConfig(
        **base,
        tls={"ca": make_test_ca(tmp_path / "o")["ca"], "insecure": True},
        outbox={"path": tmp_path / "c.sqlite"},
    )
    with pytest.raises(MqttConnectError, match="not trusted"):
        EventPublisher(other, STATION, MODEL_INFO).start()
