"""Finding the real peer programs (Debian packages) that integration tests drive.

Locally a missing binary skips the test with a clear reason; under ``CI=true`` it fails,
because ``.ci/run`` installs every peer and a skip there would hide a broken install.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
from typing import NoReturn

import pytest

# Debian package that provides each binary, named in the skip/fail message.
PACKAGES = {
    "prometheus": "prometheus",
    "promtool": "prometheus",
    "prometheus-alertmanager": "prometheus-alertmanager",
    "amtool": "prometheus-alertmanager",
    "prometheus-node-exporter": "prometheus-node-exporter",
    "prometheus-pushgateway": "prometheus-pushgateway",
    "monit": "monit",
    "cupsd": "cups",
    "lpstat": "cups-client",
    "lpadmin": "cups-client",
    "lp": "cups-client",
    "cupsenable": "cups-client",
    "cupsdisable": "cups-client",
    "cancel": "cups-client",
    "dnsmasq": "dnsmasq",
    "notify-send": "libnotify-bin",
    "dbus-run-session": "dbus",
}
NAGIOS_PLUGINS = "/usr/lib/nagios/plugins"
# What pip and build print when the package index cannot be reached or has nothing
# suitable; anything else going wrong is a packaging bug and fails the test everywhere.
INDEX_TROUBLE = re.compile(
    r"No matching distribution found|Could not find a version that satisfies"
    r"|Failed to establish a new connection|Temporary failure in name resolution"
    r"|Name or service not known|Network is unreachable|Max retries exceeded"
    r"|ConnectTimeoutError|ReadTimeoutError"
)


_EXTRA_PATH = os.pathsep.join(["/usr/local/sbin", "/usr/sbin", "/sbin", NAGIOS_PLUGINS])


def require_binary(name: str) -> str:
    """Absolute path of ``name`` (on PATH, in the sbin folders, or a Nagios plugin), else
    skip / fail on CI. The sbin folders are searched because a non-root PATH often lacks
    them, while daemons such as dnsmasq and cupsd live there."""
    path = shutil.which(name) or shutil.which(name, path=_EXTRA_PATH)
    if path:
        return path
    package = PACKAGES.get(name, "monitoring-plugins-basic" if name.startswith("check_") else name)
    unavailable(f"{name} not found: install the Debian package {package} (.ci/run does)")


def unavailable(reason: str) -> NoReturn:
    """A peer the test needs is missing: skip locally, fail under ``CI=true``."""
    if os.environ.get("CI") == "true":
        pytest.fail(reason)
    pytest.skip(reason)


def free_port() -> int:
    """A currently free TCP port on 127.0.0.1, for peers that cannot bind port 0 themselves."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
