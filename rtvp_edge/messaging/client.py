"""The paho client built from the ``mqtt:`` section (credentials, TLS, back-off), and the error for a
broker that refused us. Used by the publisher, the PLC part-id subscription and ``rtvp-edge listen``.

paho-mqtt >= 2 as its docs recommend: ``CallbackAPIVersion.VERSION2``, MQTT 3.1.1, ``reconnect_delay_set()``.
"""

from __future__ import annotations

import ssl

import paho.mqtt.client as paho

from rtvp_edge.messaging.config import MqttConfig

__all__ = ["MqttConnectError", "build_client", "tls_hint"]


class MqttConnectError(RuntimeError):
    """The broker refused us (CONNACK: bad user name or password / not authorized) or TLS failed.

    Not raised for a broker that is merely unreachable: events then wait in the outbox.
    """


def build_client(config: MqttConfig, client_id: str, clean_session: bool = True) -> paho.Client:
    """A paho client (MQTT 3.1.1, VERSION2 callbacks) with the configured credentials, TLS and back-off.

    Not connected. Raises ``MqttConfigError`` for missing TLS files or password variables.
    """
    config.check_files()
    password = config.password()
    client = paho.Client(
        paho.CallbackAPIVersion.VERSION2,
        client_id=client_id,
        clean_session=clean_session,
        protocol=paho.MQTTv311,  # amqtt (embedded) speaks 3.1.1 only; every site broker does too
    )
    if config.username is not None:
        client.username_pw_set(config.username, password)
    if config.tls is not None:
        context = ssl.create_default_context(cafile=str(config.tls.ca) if config.tls.ca else None)
        if config.tls.cert is not None:
            context.load_cert_chain(str(config.tls.cert), str(config.tls.key))
        if config.tls.insecure:
            context.check_hostname = False
        client.tls_set_context(context)
    client.reconnect_delay_set(min_delay=config.reconnect_min_s, max_delay=config.reconnect_max_s)
    return client


def tls_hint(exc: ssl.SSLError) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return "the broker's certificate is not trusted or does not name this host (check mqtt.tls.ca / mqtt.host)"
    return "is the broker port a TLS listener, and mqtt.tls.cert/key accepted by it?"
