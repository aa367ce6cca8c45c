"""Embedded MQTT broker (amqtt) for ``mqtt.broker: embedded``: the demo runs on a fresh machine with
nothing else installed. Listens on localhost only, anonymous, no TLS: a site with PLC/MES consumers
runs a real broker (Mosquitto, EMQX, ...) and sets ``broker: external``.

The broker runs in a background thread with its own asyncio event loop, so the (threaded) runtime
does not need to be async.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rtvp_edge.messaging.config import MqttConfig

log = logging.getLogger(__name__)


class BrokerError(RuntimeError):
    """The embedded broker could not start (e.g. the port is taken)."""


class EmbeddedBroker:
    """amqtt broker on ``host:port`` in a background thread. Use as a context manager or start()/stop().

    Args:
        host: address to bind, localhost by default (never expose this demo broker to a network).
        port: TCP port.
        start_timeout: seconds to wait for the listener.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 1883, start_timeout: float = 10.0) -> None:
        self.host = host
        self.port = port
        self.start_timeout = start_timeout
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._broker = None
        self._started = threading.Event()
        self._start_error: BaseException | None = None

    def start(self) -> EmbeddedBroker:
        """Start listening; raises ``BrokerError`` naming the address when it cannot."""
        if self._thread is not None:
            return self
        try:
            import amqtt  # noqa: F401  (the demo extra; a line with a site broker never needs it)
        except ModuleNotFoundError:
            raise BrokerError(
                "mqtt.broker: embedded needs the 'demo' extra (amqtt is not installed): scripts/bootstrap.sh "
                "demo (or: pip install 'rtvp-edge[demo]'), or set mqtt.broker: external"
            ) from None
        # Check the port first: amqtt logs a traceback and its error does not name the address.
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((self.host, self.port))
            except OSError as exc:
                raise BrokerError(
                    f"embedded MQTT broker cannot listen on {self.host}:{self.port}: {exc} "
                    "(another broker running? set mqtt.port or use broker: external)"
                ) from exc
        # amqtt and its state machine library log every session transition at INFO: too chatty for
        # the runtime's log. Only quieten loggers nobody configured explicitly.
        for name in ("amqtt", "transitions"):
            logger = logging.getLogger(name)
            if logger.level == logging.NOTSET:
                logger.setLevel(logging.WARNING)
        self._thread = threading.Thread(target=self._run, name="embedded-mqtt-broker", daemon=True)
        self._thread.start()
        if not self._started.wait(self.start_timeout):
            raise BrokerError(
                f"embedded MQTT broker on {self.host}:{self.port} did not start in {self.start_timeout} s"
            )
        if self._start_error is not None:
            self._thread.join(timeout=5)
            self._thread = None
            raise BrokerError(
                f"embedded MQTT broker cannot listen on {self.host}:{self.port}: {self._start_error}"
            ) from self._start_error
        log.info("embedded MQTT broker (amqtt) listening on %s:%s", self.host, self.port)
        return self

    def _run(self) -> None:
        from amqtt.broker import Broker  # imported here: only `broker: embedded` needs amqtt

        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        config = {
            "listeners": {
                "default": {"type": "tcp", "bind": f"{self.host}:{self.port}", "max_connections": 64}
            },
            # No $SYS publishing and no packet logging: a quiet, minimal demo broker.
            "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
        }
        try:
            self._broker = Broker(config, loop=loop)
            loop.run_until_complete(self._broker.start())
        except BaseException as exc:  # noqa: BLE001 - reported to start() in the caller's thread
            self._start_error = exc
            self._started.set()
            loop.close()
            return
        self._started.set()
        try:
            loop.run_forever()
        finally:
            loop.close()

    def stop(self, timeout: float = 10.0) -> None:
        """Shut the broker down (clients are disconnected) and join its thread. Safe to call twice."""
        if self._thread is None or self._loop is None:
            return
        loop = self._loop
        if self._broker is not None and not loop.is_closed():
            future = asyncio.run_coroutine_threadsafe(self._broker.shutdown(), loop)
            with contextlib.suppress(Exception):
                future.result(timeout)
            loop.call_soon_threadsafe(loop.stop)
        self._thread.join(timeout)
        self._thread = None
        self._loop = None

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def broker_for(config: MqttConfig) -> contextlib.AbstractContextManager:
    """``EmbeddedBroker(config.host, config.port)`` for ``broker: embedded``, else a no-op context.

    Usage: ``with broker_for(cfg.mqtt): ...run the line...``
    """
    if config.broker == "embedded":
        return EmbeddedBroker(config.host, config.port)
    return contextlib.nullcontext()
