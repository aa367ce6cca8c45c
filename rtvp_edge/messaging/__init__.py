"""The messaging wing: everything that talks to the plant's systems over the network.

::

    config.py     the line file's ``mqtt:`` section (schema only: the line-file schema imports it)
    client.py     the paho client built from that section (credentials, TLS, back-off)
    publisher.py  ``EventPublisher``: verdicts -> durable outbox -> broker, status and metrics
    events.py     payloads and topics (what PLC/MES subscribers rely on; JSON Schema in schemas/)
    outbox.py     the durable SQLite outbox (at least once, in order)
    part_ids.py   ``PlcPartIds``: part ids the PLC publishes per gate trigger (``assembly.part_id: plc``)
    listen.py     ``rtvp-edge listen``: a station's events as a person reads them
    broker.py     the embedded amqtt broker (``mqtt.broker: embedded``, the demo)
    plc/          the PLC servers (OPC UA, Modbus TCP) with the reject handshake and deadlines

The part logic (``assembler``, ``verdict``, the ``Pipeline`` core) and the line-file schema
(``rtvp_edge.config``) import no network client: ``build_pipeline`` imports the publisher and the PLC
subscription only when a line uses them, and a test imports those modules with paho blocked. A new PLC
protocol is a server module under ``plc/`` registered in ``plc.build_plc_station``. This package imports
nothing itself, so ``import rtvp_edge.messaging.config`` stays free of paho.
"""
