"""``vigil-collector``: run the collector until SIGINT/SIGTERM; ``vigil-collector
operator ...`` manages operator accounts instead (``collector/identity/operator_cli.py``),
``vigil-collector policy ...`` central policy (``collector/policy/cli.py``).

Once listening it prints exactly one line to stdout,
``vigil-collector listening on http://HOST:PORT`` (``https://`` with ``listen.tls``;
the real port when ``--port 0`` asked for an ephemeral one); tests and the demo parse
it. Logs go to stderr. SIGHUP reloads the TLS certificate files.

Exit status: 0 clean shutdown; 1 cannot start (port taken, database unreadable);
2 bad config or usage.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import gc
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from vigil import __version__
from vigil.collector import eventloop
from vigil.collector.config import CollectorConfig, is_loopback, load_collector_config
from vigil.collector.identity import cli as identity_cli
from vigil.collector.storage.records import StorageError
from vigil.configio import CONFIG_EXIT_CODE, ConfigError, setup_logging

PROG = "vigil-collector"
DEFAULT_CONFIG = Path("/etc/vigil/collector.yaml")
START_FAILED_EXIT_CODE = 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Vigil collector: ingests agent reports, runs incidents, serves the "
        "REST API and /metrics.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    parser.add_argument(
        "--config",
        type=Path,
        default=DEFAULT_CONFIG,
        help=f"collector config file (default: {DEFAULT_CONFIG})",
    )
    parser.add_argument("--host", help="listen address, overriding listen.host")
    parser.add_argument(
        "--port",
        type=_port,
        help="listen port, overriding listen.port (0 picks a free one)",
    )
    parser.add_argument(
        "--process-port",
        type=_port,
        help="also serve this process alone on this port of the listen address (no"
        " SO_REUSEPORT): with listen.reuse_port, the address Prometheus scrapes each"
        " process at (docs/deployment.md)",
    )
    parser.add_argument(
        "--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"]
    )
    identity_cli.add_parsers(parser)  # enroll-secret, agent (docs/security.md)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the collector; returns the process exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["operator"]:  # vigil-collector operator add|list|rotate|remove
        from vigil.collector.identity.operator_cli import main as operator_main

        return operator_main(argv[1:])
    if argv[:1] == ["policy"]:  # vigil-collector policy keygen|sign|publish|... (docs/policy.md)
        from vigil.collector.policy.cli import main as policy_main

        return policy_main(argv[1:])
    if argv[:1] == ["release"]:  # vigil-collector release sign|publish|... (docs/install.md)
        from vigil.collector.policy.release_cli import main as release_main

        return release_main(argv[1:])
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level)
    try:
        config = load_collector_config(args.config)
    except ConfigError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return CONFIG_EXIT_CODE
    if args.command in identity_cli.COMMANDS:
        return identity_cli.main(args, config)
    overrides = {"host": args.host, "port": args.port}
    config = dataclasses.replace(config, **{k: v for k, v in overrides.items() if v is not None})
    if config.auth.open_read and not is_loopback(config.host):
        print(
            f"{PROG}: --host {config.host}: auth.open_read needs a loopback address",
            file=sys.stderr,
        )
        return CONFIG_EXIT_CODE
    try:
        return eventloop.run(_serve(config, process_port=args.process_port), config.event_loop)
    except eventloop.EventLoopUnavailable as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return CONFIG_EXIT_CODE
    except (OSError, StorageError) as exc:
        print(f"{PROG}: cannot start: {exc}", file=sys.stderr)
        return START_FAILED_EXIT_CODE
    except KeyboardInterrupt:  # Ctrl+C where signal handlers are unavailable (Windows)
        return 0


async def _serve(config: CollectorConfig, *, process_port: int | None = None) -> int:
    from aiohttp import web  # heavy imports only when serving

    from vigil.collector.app import create_app
    from vigil.collector.listen import (
        GuardedTCPSite,
        effective_max_connections,
        quiet_malformed_requests,
        raise_open_files_limit,
        server_options,
    )
    from vigil.collector.tls import create_server_context, reload_context

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        # Windows has no add_signal_handler: Ctrl+C arrives as KeyboardInterrupt instead.
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    tls, ssl_context = config.tls, None
    if tls is not None:
        ssl_context = create_server_context(tls)
        # SIGHUP: new certificate files, same listening socket (see collector/tls.py).
        with contextlib.suppress(NotImplementedError, RuntimeError, AttributeError):
            loop.add_signal_handler(signal.SIGHUP, reload_context, ssl_context, tls)

    max_connections = effective_max_connections(config.max_connections, raise_open_files_limit())
    quiet_malformed_requests()
    # aiohttp logs every request at INFO unless told otherwise: off unless configured.
    access_log = logging.getLogger("aiohttp.access") if config.access_log else None
    runner = web.AppRunner(
        create_app(config), access_log=access_log, **server_options(config.idle_timeout_s)
    )
    try:
        await runner.setup()  # opens the storage
        # What start-up loaded (the per-host aggregates: ~50,000 tracked objects at
        # 100,000 hosts) lives as long as the process: out of the collector's sight, a
        # full collection no longer walks it (~40 ms each, a pause every request in
        # flight would wait out). Objects made later are collected as before.
        gc.freeze()
        site: web.BaseSite
        if config.ingest_front == "lean":
            from vigil.collector.api.reports import post_report
            from vigil.collector.front import IngestFrontSite

            site = IngestFrontSite(
                runner,
                config.host,
                config.port,
                handler=post_report,
                max_connections=max_connections,
                max_body_bytes=config.limits.max_body_bytes,
                idle_timeout_s=config.idle_timeout_s,
                access_log=config.access_log,
                ssl_context=ssl_context,
                reuse_port=config.reuse_port,
            )
        else:
            site = GuardedTCPSite(
                runner,
                config.host,
                config.port,
                max_connections=max_connections,
                ssl_context=ssl_context,
                reuse_port=config.reuse_port,
            )
        await site.start()
        port = runner.addresses[0][1]
        if process_port is not None:
            # This process's own address, beside the shared port: the shared one lands
            # on any process, so /metrics of one given process needs its own.
            own = GuardedTCPSite(
                runner,
                config.host,
                process_port,
                max_connections=max_connections,
                ssl_context=ssl_context,
            )
            await own.start()
            logging.getLogger(__name__).info(
                "this process alone on port %d", runner.addresses[-1][1]
            )
        host = f"[{config.host}]" if ":" in config.host else config.host
        scheme = "https" if ssl_context is not None else "http"
        print(f"{PROG} listening on {scheme}://{host}:{port}", flush=True)
        await stop.wait()
        logging.getLogger(__name__).info("shutting down")
    finally:
        await runner.cleanup()  # closes the storage after in-flight requests finish
    return 0


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port must be 0-65535, got {port}")
    return port
