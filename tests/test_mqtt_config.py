"""MqttConfig: the line configuration's ``mqtt:`` section is validated strictly, errors name the key."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from rtvp_edge.messaging.config import MqttConfig, MqttConfigError


def test_defaults_are_the_demo():
    cfg = MqttConfig()
    assert cfg.broker == "embedded" and cfg.qos == 1 and cfg.topic_root == "rtvp/{site}/{line}/{station}"
    assert cfg.outbox.when_full == "drop_oldest" and cfg.outbox.synchronous == "FULL"
    assert cfg.password() is None


@pytest.mark.parametrize(
    ("section", "fragment"),
    [
        ({"brokr": "external"}, "brokr"),
        ({"broker": "cloud"}, "broker"),
        ({"port": 70000}, "port"),
        ({"qos": 3}, "qos"),
        ({"outbox": {"path": "x.db", "when_full": "ignore"}}, "when_full"),
        ({"outbox": {"max_events": 0}}, "max_events"),
        (
            {"broker": "external", "username": "u", "password_env": "my password"},
            "NAME of an environment variable",
        ),
        ({"broker": "external", "password_env": "PW"}, "username is not"),
        ({"broker": "embedded", "username": "u"}, "embedded"),
        ({"broker": "embedded", "host": "10.0.0.5"}, "localhost only"),
        ({"topic_root": "rtvp/{plant}/{station}"}, "placeholders"),
        ({"topic_root": "rtvp/#"}, "wildcards"),
        ({"broker": "external", "tls": {"cert": "c.pem"}}, "both 'cert' and 'key'"),
        ({"broker": "external", "tls": {"ca": "ca.pem", "verify": False}}, "verify"),
        ({"reconnect_min_s": 5, "reconnect_max_s": 1}, "reconnect_max_s"),
    ],
)
def test_bad_sections_name_the_key(section, fragment):
    with pytest.raises(ValidationError, match=fragment):
        MqttConfig.model_validate(section)


def test_password_comes_from_the_named_variable(monkeypatch):
    cfg = MqttConfig(broker="external", username="line7", password_env="RTVP_MQTT_PASSWORD")
    monkeypatch.delenv("RTVP_MQTT_PASSWORD", raising=False)
    with pytest.raises(MqttConfigError, match="RTVP_MQTT_PASSWORD is not set"):
        cfg.password()
    monkeypatch.setenv("RTVP_MQTT_PASSWORD", "pw")
    assert cfg.password() == "pw"


def test_relative_paths_resolve_against_the_config_dir(tmp_path):
    cfg = MqttConfig(broker="external", tls={"ca": "certs/ca.pem"}, outbox={"path": "var/o.sqlite"})
    resolved = cfg.resolve_paths(tmp_path)
    assert resolved.outbox.path == tmp_path / "var/o.sqlite"
    assert resolved.tls.ca == tmp_path / "certs/ca.pem"
    with pytest.raises(MqttConfigError, match=r"mqtt\.tls\.ca: file .*ca\.pem not found"):
        resolved.check_files()
    absolute = MqttConfig(outbox={"path": "/var/lib/rtvp/o.sqlite"}).resolve_paths(tmp_path)
    assert absolute.outbox.path == Path("/var/lib/rtvp/o.sqlite")


def test_loader_context_resolves_relative_paths(tmp_path):
    """The line-config loader validates with context={"base_dir": <line file dir>}."""
    section = {"broker": "external", "tls": {"ca": "certs/ca.pem"}, "outbox": {"path": "var/o.sqlite"}}
    cfg = MqttConfig.model_validate(section, context={"base_dir": tmp_path})
    assert cfg.outbox.path == tmp_path / "var/o.sqlite" and cfg.tls.ca == tmp_path / "certs/ca.pem"
    assert MqttConfig.model_validate(section).outbox.path == Path("var/o.sqlite")


def test_station_root():
    from rtvp_edge.messaging.events import StationIds

    assert MqttConfig().station_root(StationIds("p", "l", "s")) == "rtvp/p/l/s"
