"""A stand-in freedesktop notification server for tests, on the session bus it is
started in (a private ``dbus-run-session`` bus, never the desktop's).

``python -m tests.support.notify_server OUT``: owns ``org.freedesktop.Notifications``,
answers ``GetServerInformation``/``GetCapabilities``, and appends each ``Notify`` call's
arguments to OUT as one JSON line; prints ``ready`` once it owns the name. Stops on
SIGTERM or after 60 s (bounded, whatever the test does).
"""

from __future__ import annotations

import json
import sys
import time

from jeepney import HeaderFields, MessageType, new_method_return
from jeepney.bus_messages import message_bus
from jeepney.io.blocking import open_dbus_connection

NAME = "org.freedesktop.Notifications"
LIFETIME_S = 60.0


def main(out: str) -> None:
    conn = open_dbus_connection(bus="SESSION")
    conn.send_and_get_reply(message_bus.RequestName(NAME))
    print("ready", flush=True)
    deadline = time.monotonic() + LIFETIME_S
    notified = 0
    while time.monotonic() < deadline:
        try:
            msg = conn.receive(timeout=max(0.1, deadline - time.monotonic()))
        except TimeoutError:
            break
        if msg.header.message_type != MessageType.method_call:
            continue
        member = msg.header.fields.get(HeaderFields.member)
        if member == "GetServerInformation":
            conn.send(new_method_return(msg, "ssss", ("vigil-test", "vigil", "1", "1.2")))
        elif member == "GetCapabilities":
            conn.send(new_method_return(msg, "as", (["body"],)))
        elif member == "Notify":
            app, _replaces, _icon, summary, body, _actions, _hints, _timeout = msg.body
            with open(out, "a") as f:
                f.write(json.dumps({"app": app, "summary": summary, "body": body}) + "\n")
            notified += 1
            conn.send(new_method_return(msg, "u", (notified,)))


if __name__ == "__main__":
    main(sys.argv[1])
