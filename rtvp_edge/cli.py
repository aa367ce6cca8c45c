"""``rtvp-edge``: run a line, check a line file or a bundle, listen to a line's events.

Exit codes: 0 success (also after a clean SIGINT/SIGTERM stop), 2 invalid configuration, refused bundle or
unusable outbox (the message names the file, the line and the key), 1 a runtime failure (among them: the
outbox was full with ``when_full: refuse``, so the line stopped; the message gives what was refused).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import signal
import sys
import threading
from pathlib import Path

from rtvp_edge import __version__
from rtvp_edge.broker import BrokerError
from rtvp_edge.bundle import BundleError, load_manifest
from rtvp_edge.config import ConfigError, load_line_config
from rtvp_edge.mqtt import MqttConfigError, MqttConnectError
from rtvp_edge.outbox import OutboxError

log = logging.getLogger("rtvp_edge")

EXIT_OK, EXIT_FAILURE, EXIT_CONFIG = 0, 1, 2


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="rtvp-edge",
        description="RTVPNet-S edge runtime: run a line, check a line file or a bundle, listen to a line's events.",
        epilog="Exit codes: 0 done, 2 invalid line file / bundle / MQTT settings, 1 runtime failure.",
    )
    p.add_argument("--version", action="version", version=f"rtvp-edge {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="run a line: cameras -> verdicts -> MQTT")
    r.add_argument("--line", required=True, type=Path, help="line configuration (YAML)")
    r.add_argument("--parts", type=int, default=None, help="stop after judging this many parts")
    r.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    r.add_argument("--no-live", action="store_true", help="no live status line")
    r.add_argument(
        "--no-mqtt",
        action="store_true",
        help="judge parts without publishing (bench runs; verdicts still logged)",
    )
    r.add_argument(
        "--jsonl", type=Path, default=None, help="also append every verdict as one JSON line to FILE"
    )
    r.add_argument("--log-level", default=None, help="override runtime.log_level")

    c = sub.add_parser(
        "check", help="validate a line file (and its bundle) or a bundle alone, without running"
    )
    g = c.add_mutually_exclusive_group(required=True)
    g.add_argument("--line", type=Path, help="line configuration (YAML)")
    g.add_argument("--bundle", type=Path, help="bundle directory")
    c.add_argument("--backend", default=None, help="with --bundle: backend to self-test (default: openvino)")
    c.add_argument(
        "--public-key", type=Path, default=None, help="with --bundle: require a signature by this Ed25519 key"
    )

    pr = sub.add_parser(
        "predict", help="detect defects in a folder of images or a video: annotated images + COCO results"
    )
    pr.add_argument("--bundle", type=Path, default=None, help="bundle directory")
    pr.add_argument("--line", type=Path, default=None, help="or a line file: its bundle, backend, filters")
    pr.add_argument("--source", type=Path, required=True, help="folder of images or a video file")
    pr.add_argument("--out", type=Path, required=True, help="output folder")
    pr.add_argument("--backend", default="openvino", help="with --bundle: openvino | onnxruntime | tensorrt")
    pr.add_argument("--device", default="CPU", help="with --bundle: backend device")
    pr.add_argument("--score", type=float, default=None, help="with --bundle: minimum score for every class")

    en = sub.add_parser(
        "enroll",
        help="add a defect type to an input-mode bundle from 1-10 example boxes (no retraining)",
        description="Add a defect type to a bundle's vocabulary from example boxes on line images: its "
        "embedding is the prototype of the model's region embeddings inside the boxes. The bundle is "
        "rewritten (golden outputs, hashes), verified and replaced atomically; a signature is dropped.",
    )
    en.add_argument("--bundle", required=True, type=Path, help="bundle directory (vocabulary mode input)")
    en.add_argument("--name", required=True, help="the new class name, as defect events will carry it")
    en.add_argument(
        "--examples",
        required=True,
        type=Path,
        help="COCO json (images + boxes) or YAML/JSON list of {image, box: [x1, y1, x2, y2]}",
    )
    en.add_argument(
        "--images",
        type=Path,
        default=None,
        help="folder of the examples' images (default: the file's folder)",
    )
    en.add_argument("--prompt", default=None, help="text recorded as the class's prompt")
    en.add_argument("--out", type=Path, default=None, help="write the new bundle here (default: in place)")
    en.add_argument("--backend", default=None, help="backend to compute with (default: the bundle's first)")

    li = sub.add_parser("listen", help="subscribe to a line's events and print them as a person reads them")
    li.add_argument("--line", required=True, type=Path, help="line configuration (YAML)")
    li.add_argument("--max", type=int, default=None, help="exit after this many messages")
    li.add_argument("--timeout", type=float, default=None, help="exit after this many seconds")
    li.add_argument("--defects", action="store_true", help="also print one line per defect event")
    li.add_argument(
        "--show",
        type=int,
        default=3,
        metavar="N",
        help="list a verdict's N highest-scored defects on its line and count the rest (default 3; 0: none listed)",
    )
    li.add_argument(
        "--min-score",
        type=float,
        default=0.0,
        metavar="S",
        help="count, do not list, defects scored under S (default 0: list what the line reported)",
    )
    li.add_argument(
        "--wait-broker",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="wait this long for the broker to come up, e.g. before the demo starts (default 300; 0: fail at once)",
    )
    li.add_argument(
        "--follow",
        action="store_true",
        help="keep listening after the station's clean stop (default: exit after its OFFLINE status)",
    )
    return p


def _fail(msg: str, code: int) -> int:
    print(f"rtvp-edge: error: {msg}", file=sys.stderr)
    return code


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def cmd_check(args: argparse.Namespace) -> int:
    from rtvp_edge.pipeline import (
        build_detection_filter,
        build_verdict_rules,
        load_and_check_bundle,
        load_model,
    )

    if args.bundle is not None:
        manifest = load_manifest(args.bundle, public_key=args.public_key)
        backend_name = args.backend or "openvino"
        _, backend = load_and_check_bundle(
            args.bundle, backend_name, selftest=False, public_key=args.public_key
        )
        try:
            from rtvp_edge.selftest import run_golden_selftest

            n = run_golden_selftest(args.bundle, manifest, backend)
        finally:
            backend.close()
        print(
            f"{args.bundle}: OK: {len(manifest.files)} files match their sha256; golden self-test passed on "
            f"{n} image(s) with {backend_name}; model {manifest.model.name} {manifest.model.version}, "
            f"classes {[c.name for c in manifest.vocabulary.classes]}"
        )
        print(_describe_input(manifest))
        return EXIT_OK
    config = load_line_config(args.line)
    m = config.model
    loaded = load_model(config)
    manifest = loaded.manifest
    try:
        detection_filter = build_detection_filter(config, manifest)
        build_verdict_rules(config, manifest)  # its rules name classes of the bundle
    finally:
        loaded.backend.close()
    config.mqtt.check_files()  # TLS files exist
    config.mqtt.password()  # the password variable is set (its value is never printed)
    kinds = ", ".join(f"{c.id}={c.kind}" for c in config.cameras)
    selftest = (
        "golden self-test passed" if m.selftest else "golden self-test DISABLED (model.selftest: false)"
    )
    print(
        f"{args.line}: OK: line {config.line.site}/{config.line.line}/{config.line.station}, "
        f"{len(config.cameras)} cameras ({kinds}), bundle {m.bundle} verified, {m.backend} on {m.device} "
        f"loaded, {selftest}"
    )
    print("score thresholds: " + ", ".join(detection_filter.describe_thresholds()))
    print(_describe_input(manifest, {c.id: c.crop for c in config.cameras}))
    print(loaded.choice.describe())
    print(capacity_line(loaded.capacity))
    return EXIT_OK


def _describe_input(manifest, crops: dict | None = None) -> str:
    """What the model sees: input size, the region of each camera image, the general encoder."""
    pre = manifest.preprocess
    h, w = pre.input_size
    default = f"region {list(pre.crop)}" if pre.crop is not None else "the whole image"
    text = f"model input {h}x{w} (h x w) from {default}"
    if crops:
        own = {cam: list(c) for cam, c in crops.items() if c is not None}
        text += "; " + (
            ", ".join(f"{cam}: {c}" for cam, c in own.items()) if own else "every camera: the bundle's"
        )
    enc = manifest.model.encoder
    if enc:
        text += f"; general encoder {enc.get('encoder', '?')} ({enc.get('source', enc.get('weights', '?'))})"
    return text


def capacity_line(capacity) -> str:
    """What ``check --line`` and the start of ``run`` print: parts/s this box sustains next to the line
    rate, with a WARNING when the line is faster."""
    text = f"capacity: {capacity.describe()}"
    if capacity.overloaded:
        text += (
            "\nWARNING: the line is faster than this box: a real line drops frames and its parts become "
            "INCOMPLETE; a simulated line is paced to what the box sustains"
        )
    return text


def cmd_run(args: argparse.Namespace) -> int:
    from rtvp_edge.broker import broker_for
    from rtvp_edge.live import LiveLine
    from rtvp_edge.pipeline import build_pipeline
    from rtvp_edge.verdict import verdict_record

    config = load_line_config(args.line)
    _setup_logging(args.log_level or config.runtime.log_level)
    if args.parts is not None and args.parts < 1:
        return _fail(f"--parts must be >= 1, got {args.parts}", EXIT_CONFIG)
    if args.duration is not None and args.duration <= 0:
        return _fail(f"--duration must be > 0, got {args.duration}", EXIT_CONFIG)

    stop = threading.Event()

    def on_signal(signum, _frame):  # only sets a flag: the run loop stops the line cleanly
        log.warning(
            "%s received: stopping (in-flight parts finish, outbox flushed or kept)",
            signal.Signals(signum).name,
        )
        stop.set()

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        with contextlib.ExitStack() as stack:
            if not args.no_mqtt:
                stack.enter_context(broker_for(config.mqtt))  # embedded: a localhost broker for the demo
            live = None if args.no_live else LiveLine()
            sinks = []
            if args.jsonl is not None:
                jsonl = stack.enter_context(
                    open(args.jsonl, "a", buffering=1)
                )  # line-buffered: a kill loses nothing

                def write_jsonl(verdict, frames):
                    jsonl.write(json.dumps(verdict_record(verdict, frames)) + "\n")

                sinks.append(write_jsonl)
            pipeline = build_pipeline(config, part_sinks=sinks, use_mqtt=not args.no_mqtt)
            stack.callback(pipeline.close)
            print(capacity_line(pipeline.capacity), file=sys.stderr)
            if pipeline.paced_rate_hz is not None:
                print(f"the simulated line is paced to {pipeline.paced_rate_hz:.2f} parts/s", file=sys.stderr)
            if pipeline.publisher is not None:
                pipeline.publisher.start()  # MqttConnectError: refused login / TLS -> exit 2

            def tick(p):
                if live is not None:
                    live.update(p.snapshot(), p.broker_state())

            summary = pipeline.run(args.parts, args.duration, stop, on_tick=tick)
            if live is not None:
                live.close(summary.metrics, pipeline.broker_state())
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    v = summary.verdicts
    print(
        f"done: {summary.parts} parts in {summary.duration_s:.1f} s: OK {v.get('OK', 0)}, NG {v.get('NG', 0)}, "
        f"INCOMPLETE {v.get('INCOMPLETE', 0)}",
        file=sys.stderr,
    )
    if pipeline.fatal:
        return _fail(f"stopped: {pipeline.fatal}", EXIT_FAILURE)
    return EXIT_OK


def cmd_predict(args: argparse.Namespace) -> int:
    from rtvp_edge.api import Detector, predict_folder
    from rtvp_edge.config import DetectionConfig

    if (args.bundle is None) == (args.line is None):
        return _fail("predict: give exactly one of --bundle or --line", EXIT_CONFIG)
    if not args.source.exists():
        return _fail(f"--source: no such folder or video: {args.source}", EXIT_CONFIG)
    if args.score is not None and not 0 <= args.score <= 1:
        return _fail(f"--score must be within [0, 1], got {args.score}", EXIT_CONFIG)
    if args.line is not None:
        detector = Detector.from_line(args.line)
    else:
        detector = Detector(
            args.bundle, args.backend, args.device, detection=DetectionConfig(score_threshold=args.score)
        )
    with detector:
        try:
            done = predict_folder(detector, args.source, args.out)
        except ValueError as e:
            return _fail(f"--source: {e}", EXIT_CONFIG)
    print(f"{done['images']} images, {done['detections']} detections: {args.out} ({done['results']})")
    return EXIT_OK


def cmd_enroll(args: argparse.Namespace) -> int:
    from rtvp_edge.enrolment import enroll

    done = enroll(
        args.bundle,
        args.name,
        args.examples,
        prompt=args.prompt,
        out=args.out,
        images_dir=args.images,
        backend=args.backend,
    )
    m = done.result.manifest
    print(
        f"enrolled {done.name!r} from {done.examples} example boxes into {done.result.bundle}: "
        f"{len(m.vocabulary.classes)} classes, score threshold {done.threshold:g} "
        f"(exemplar scores {', '.join(f'{s:.3f}' for s in done.exemplar_scores)}); bundle verified"
    )
    if done.result.signature_dropped:
        print(
            "warning: the bundle was signed; the signature no longer matches and was removed: sign it "
            "again (rtvp-export sign) before a line that checks signatures loads it",
            file=sys.stderr,
        )
    return EXIT_OK


def cmd_listen(args: argparse.Namespace) -> int:
    from rtvp_edge.listen import run_listen
    from rtvp_edge.pipeline import station_ids

    if args.show < 0:
        return _fail(f"--show must be >= 0, got {args.show}", EXIT_CONFIG)
    if not 0.0 <= args.min_score <= 1.0:
        return _fail(f"--min-score must be between 0 and 1, got {args.min_score}", EXIT_CONFIG)
    config = load_line_config(args.line)
    root = config.mqtt.station_root(station_ids(config))
    run_listen(
        config.mqtt,
        root,
        out=sys.stdout,
        max_messages=args.max,
        timeout=args.timeout,
        show_defects=args.defects,
        wait_for_broker=args.wait_broker,
        until_offline=not args.follow,
        max_defects=args.show,
        min_score=args.min_score,
    )
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "check":
            return cmd_check(args)
        if args.command == "run":
            return cmd_run(args)
        if args.command == "predict":
            return cmd_predict(args)
        if args.command == "enroll":
            return cmd_enroll(args)
        return cmd_listen(args)
    except (ConfigError, BundleError, MqttConfigError, MqttConnectError, OutboxError, BrokerError) as e:
        return _fail(str(e), EXIT_CONFIG)
    except KeyboardInterrupt:
        return EXIT_OK
    except Exception as e:  # a clear line for the operator; the traceback only at debug level
        log.debug("unexpected failure", exc_info=True)
        return _fail(f"{type(e).__name__}: {e}", EXIT_FAILURE)


if __name__ == "__main__":
    sys.exit(main())
