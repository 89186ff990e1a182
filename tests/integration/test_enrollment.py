"""Enrollment and per-agent credentials, end to end: a real collector process, the real
``vigil-collector enroll-secret``/``agent`` and ``vigil-agent enroll`` commands, and real
agent processes. Plain HTTP on 127.0.0.1 (TLS is tested elsewhere)."""

from __future__ import annotations

import contextlib
import gzip
import json
import shutil
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.procs import (
    read_line,
    read_metrics,
    spawn_agent,
    start_collector,
    stop,
    wait_for,
)
from vigil import wire

ADMIN_TOKEN = "enroll-admin-token-0123456789abcdef0123456789abcdef"
SHARED_TOKEN = "enroll-shared-token-0123456789abcdef0123456789abcdef"


# --------------------------------------------------------------------------- helpers


def write_collector_config(folder: Path, *, shared: bool = False, extra: str = "") -> Path:
    tokens = f"agent_tokens: [{SHARED_TOKEN}], " if shared else ""
    config = folder / "collector.yaml"
    config.write_text(
        "listen: {host: 127.0.0.1, port: 0}\n"
        # record_event_ids: collector_event_ids reads the ids the collector applied from
        # ``seen``, which sequenced agents leave empty unless asked (an audit trail).
        "storage: {sqlite_path: collector.db, record_event_ids: true}\n"
        f"auth: {{{tokens}admin_tokens: [{ADMIN_TOKEN}]}}\n" + extra
    )
    return config


@contextlib.contextmanager
def collector(folder: Path, **kwargs: Any) -> Iterator[str]:
    config = write_collector_config(folder, **kwargs)
    proc, url = start_collector(config, folder / "collector.log")
    try:
        yield url
    finally:
        assert stop(proc) == 0, (folder / "collector.log").read_text()


def admin_cli(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``vigil-collector --config folder/collector.yaml ARGS``: the admin's commands."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "vigil.collector",
            "--config",
            str(folder / "collector.yaml"),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )


def new_secret(folder: Path, name: str, *args: str) -> Path:
    """Create an enrollment secret with the CLI, written to ``folder/name``; its path."""
    out = folder / name
    if not (folder / "collector.yaml").exists():
        write_collector_config(folder)
    result = admin_cli(folder, "enroll-secret", "create", "--out", str(out), *args)
    assert result.returncode == 0, result.stderr
    assert out.stat().st_mode & 0o777 == 0o600
    return out


def secret_id(folder: Path, labels: dict[str, str]) -> str:
    rows = json.loads(admin_cli(folder, "enroll-secret", "list").stdout)
    return next(r["id"] for r in rows if r["labels"] == labels)


def agent_config(folder: Path, url: str, *, token: str | None = None) -> Path:
    """An agent in ``folder`` (state in ``folder/state``) claiming ``role: laptop``."""
    folder.mkdir(parents=True, exist_ok=True)
    shared = f", token: {token}" if token else ""
    config = folder / "agent.yaml"
    config.write_text(
        f"""\
agent:
  state_dir: state
  hostname: {folder.name}
  labels: {{role: laptop, department: claimed}}
collector: {{url: "{url}"{shared}}}
intervals: {{sample: 300ms, report: 300ms, heartbeat: 1s, metrics: 5s}}
shipping: {{start_jitter: 0s, backoff_base: 100ms, backoff_cap: 500ms}}
sampler: {{disk_mounts: []}}
checks: []
"""
    )
    return config


def agent_cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vigil.agent", "--config", str(config), *args],
        capture_output=True,
        text=True,
        timeout=30,
    )


def enroll(config: Path, secret: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return agent_cli(config, "enroll", "--secret-file", str(secret), *args)


def agent_id_of(agent_folder: Path) -> str:
    return (agent_folder / "state" / "agent-id").read_text().strip()


def credential_of(agent_folder: Path) -> dict[str, Any]:
    return json.loads((agent_folder / "state" / "credential.json").read_text())


def post(url: str, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, Any]:
    request = urllib.request.Request(url + path, data=body, method="POST", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc)


def post_enroll(url: str, secret: str, agent_id: str, **extra: Any) -> tuple[int, Any]:
    body = {"secret": secret, "agent_id": agent_id, "hostname": "h-" + agent_id[:6], **extra}
    return post(
        url, "/api/v1/enroll", json.dumps(body).encode(), {"Content-Type": "application/json"}
    )


def post_report(url: str, token: str, agent_id: str, hostname: str = "spoofed") -> tuple[int, Any]:
    report = wire.Report(
        schema_version=wire.SCHEMA_VERSION,
        agent_id=agent_id,
        hostname=hostname,
        labels={"role": "server"},
        batch_id=uuid.uuid4().hex,
        sent_at=time.time(),
        agent_version="test",
        events=(),
    )
    headers = {
        "Authorization": f"Bearer {token}",
        "Content-Type": "application/json",
        "Content-Encoding": "gzip",
    }
    return post(url, "/api/v1/reports", gzip.compress(wire.encode_report(report)), headers)


def hosts(url: str) -> dict[str, dict[str, Any]]:
    request = urllib.request.Request(
        url + "/api/v1/hosts", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        body = json.load(response)
    rows = body["hosts"] if isinstance(body, dict) else body
    return {h["agent_id"]: h for h in rows}


def audit(url: str) -> list[tuple[str, str, str]]:
    """``(actor, action, target)`` of the audit log, newest first."""
    request = urllib.request.Request(
        url + "/api/v1/audit?limit=100", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return [(r["actor"], r["action"], r["target"]) for r in json.load(response)["records"]]


def metric(url: str, name: str, **labels: str) -> float:
    metrics = read_metrics(url + "/metrics", ADMIN_TOKEN)
    return metrics.get((name, tuple(sorted(labels.items()))), 0.0)


def outbox_event_ids(agent_folder: Path) -> set[str]:
    """The event ids waiting in the agent's outbox (read beside the running agent)."""
    with contextlib.closing(sqlite3.connect(agent_folder / "state" / "outbox.db")) as db:
        return {json.loads(p)["event_id"] for (p,) in db.execute("SELECT payload FROM events")}


def collector_event_ids(folder: Path, agent_id: str) -> set[str]:
    """Event ids the collector committed for ``agent_id`` (its dedup table)."""
    with contextlib.closing(sqlite3.connect(folder / "collector.db")) as db:
        rows = db.execute("SELECT id FROM seen WHERE host = ? AND kind = 1", (agent_id,))
        return {r[0] for r in rows}


# --------------------------------------------------------------------------- tests


def test_an_enrolled_agent_reports_with_its_own_credential_and_granted_labels(
    tmp_path: Path,
) -> None:
    """No shared token anywhere: the agent enrolls, its credential file is 0600, and its
    host's routing labels are the secret's, the agent's claims kept as ``agent:*``."""
    secret = new_secret(tmp_path, "s.txt", "--label", "role=server", "--label", "department=it")
    with collector(tmp_path) as url:
        config = agent_config(tmp_path / "laptop1", url)
        result = enroll(config, secret)
        assert result.returncode == 0, result.stderr
        cred = tmp_path / "laptop1" / "state" / "credential.json"
        assert cred.stat().st_mode & 0o777 == 0o600
        agent_id = agent_id_of(tmp_path / "laptop1")
        assert credential_of(tmp_path / "laptop1")["agent_id"] == agent_id
        # Only the hash is stored on the collector.
        token = credential_of(tmp_path / "laptop1")["token"]
        assert token.encode() not in (tmp_path / "collector.db").read_bytes()

        agent = spawn_agent(config, tmp_path / "agent.log", cwd=tmp_path / "laptop1")
        try:
            host = wait_for("the enrolled host", lambda: hosts(url).get(agent_id))
        finally:
            assert stop(agent) == 0
        assert host["labels"] == {
            "role": "server",
            "department": "it",
            "agent:role": "laptop",
            "agent:department": "claimed",
        }
        assert metric(url, "vigil_enrollments_total", outcome="enrolled") == 1


def test_unusable_secrets_are_refused_with_4xx_counted_and_logged(tmp_path: Path) -> None:
    one_use = new_secret(tmp_path, "one.txt", "--label", "g=one", "--uses", "1").read_text()
    short = new_secret(tmp_path, "short.txt", "--label", "g=short", "--expires", "1s").read_text()
    gone = new_secret(tmp_path, "gone.txt", "--label", "g=gone").read_text()
    assert (
        admin_cli(
            tmp_path, "enroll-secret", "revoke", secret_id(tmp_path, {"g": "gone"})
        ).returncode
        == 0
    )
    time.sleep(1.1)  # the short secret expires
    with collector(tmp_path) as url:
        assert post_enroll(url, one_use.strip(), "a1")[0] == 201
        status, body = post_enroll(url, one_use.strip(), "a2")
        assert (status, body["field"]) == (403, "secret") and "no uses left" in body["error"]
        status, body = post_enroll(url, short.strip(), "a3")
        assert status == 403 and "expired" in body["error"]
        status, body = post_enroll(url, gone.strip(), "a4")
        assert status == 403 and "revoked" in body["error"]
        status, body = post_enroll(url, "vge_wrong", "a5")
        assert (status, body["field"]) == (401, "secret")
        status, body = post_enroll(url, one_use.strip(), "bad id!")
        assert (status, body["field"]) == (400, "agent_id")
        for outcome in ("used_up", "expired", "revoked", "wrong_secret", "invalid"):
            assert metric(url, "vigil_enrollments_total", outcome=outcome) == 1, outcome
        # The agent's own command says why, and exits 1.
        config = agent_config(tmp_path / "late", url)
        result = enroll(config, tmp_path / "one.txt")
        assert result.returncode == 1 and "no uses left" in result.stderr
        assert not (tmp_path / "late" / "state" / "credential.json").exists()
        # Every write and every refusal is in the audit log with its actor; the CLI's is
        # the login that ran it.
        records = audit(url)
        refused = [(a, t) for a, action, t in records if action == "agent.enroll_refused"]
        # The four refusals above, plus the late agent's own (its id is generated).
        named = [(f"agent:{i}", f"agent:{i}") for i in ("a2", "a3", "a4", "a5")]
        assert sorted(r for r in refused if r in named) == named
        assert len(refused) == 5, refused
        cli = {(action, actor.startswith("cli:")) for actor, action, _ in records}
        assert {("enroll_secret.create", True), ("enroll_secret.revoke", True)} <= cli
        assert ("agent:a1", "agent.enroll", "agent:a1") in records
    log = (tmp_path / "collector.log").read_text()
    assert "identity used_up" in log and "identity wrong_secret" in log


def test_a_credential_cannot_write_as_another_agent(tmp_path: Path) -> None:
    """Agent A's credential posting as agent B is 403 and changes nothing; a shared token
    cannot speak for an enrolled agent either."""
    secret = new_secret(tmp_path, "s.txt", "--label", "role=laptop", "--uses", "2").read_text()
    with collector(tmp_path, shared=True) as url:
        status, a = post_enroll(url, secret.strip(), "agent-a")
        assert status == 201
        assert post_enroll(url, secret.strip(), "agent-b")[0] == 201
        assert post_report(url, a["credential"], "agent-a", "a-host")[0] == 200

        status, body = post_report(url, a["credential"], "agent-b")
        assert (status, body["field"]) == (403, "agent_id")
        status, body = post_report(url, SHARED_TOKEN, "agent-a", "renamed")
        assert (status, body["field"]) == (403, "agent_id")
        known = hosts(url)
        assert "agent-b" not in known and known["agent-a"]["hostname"] == "a-host"
        assert metric(url, "vigil_reports_rejected_total", reason="forbidden") == 2
        # A not-enrolled agent id still works with the shared token (migration).
        assert post_report(url, SHARED_TOKEN, "legacy-agent")[0] == 200


def test_a_revoked_agent_keeps_its_reports_and_delivers_them_after_re_enrolling(
    tmp_path: Path,
) -> None:
    first = new_secret(tmp_path, "first.txt", "--label", "role=laptop")
    second = new_secret(tmp_path, "second.txt", "--label", "role=laptop2")
    with collector(tmp_path) as url:
        folder = tmp_path / "laptop"
        config = agent_config(folder, url)
        assert enroll(config, first).returncode == 0
        agent_id = agent_id_of(folder)
        agent = spawn_agent(config, tmp_path / "agent.log", cwd=folder, unbuffered=True)
        try:
            wait_for("first delivery", lambda: hosts(url).get(agent_id))
            result = admin_cli(tmp_path, "agent", "revoke", agent_id)
            assert result.returncode == 0, result.stderr
            wait_for(
                "a refused report",
                lambda: metric(url, "vigil_reports_rejected_total", reason="unauthorized") >= 1,
            )
            queued = wait_for("queued events", lambda: outbox_event_ids(folder) or None)
            assert not queued & collector_event_ids(tmp_path, agent_id)

            assert enroll(config, second).returncode == 0
            wait_for(
                "the queued events delivered",
                lambda: queued <= collector_event_ids(tmp_path, agent_id),
            )
        finally:
            assert stop(agent) == 0
        assert hosts(url)[agent_id]["labels"]["role"] == "laptop2"
    assert "REJECTED" in (tmp_path / "agent.log").read_text()


def test_revoking_a_secret_revokes_the_credentials_issued_through_it(tmp_path: Path) -> None:
    secret = new_secret(tmp_path, "s.txt", "--label", "role=kiosk", "--uses", "5").read_text()
    with collector(tmp_path) as url:
        status, a = post_enroll(url, secret.strip(), "kiosk-1")
        assert status == 201 and post_report(url, a["credential"], "kiosk-1")[0] == 200
        result = admin_cli(
            tmp_path, "enroll-secret", "revoke", secret_id(tmp_path, {"role": "kiosk"})
        )
        assert result.returncode == 0 and "1 credential" in result.stdout
        wait_for(
            "the revocation to reach the collector",
            lambda: post_report(url, a["credential"], "kiosk-1")[0] == 401,
            timeout_s=10,
        )
        assert post_enroll(url, secret.strip(), "kiosk-2")[0] == 403


def test_rotation_before_expiry_loses_nothing(tmp_path: Path) -> None:
    """Credentials live 6 s; the agent rotates in the last quarter (collector grants from
    the second half) and keeps delivering: no refusal, every event committed."""
    secret = new_secret(tmp_path, "s.txt", "--label", "role=laptop")
    with collector(tmp_path, extra="enrollment: {credential_ttl: 6s}\n") as url:
        folder = tmp_path / "laptop"
        config = agent_config(folder, url)
        assert enroll(config, secret).returncode == 0
        agent_id = agent_id_of(folder)
        tokens = {credential_of(folder)["token"]}
        agent = spawn_agent(config, tmp_path / "agent.log", cwd=folder, unbuffered=True)
        try:
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                tokens.add(credential_of(folder)["token"])
                time.sleep(0.2)
            queued = outbox_event_ids(folder)
            wait_for(
                "the queued events delivered",
                lambda: queued <= collector_event_ids(tmp_path, agent_id),
            )
        finally:
            assert stop(agent) == 0
        assert len(tokens) >= 3  # rotated at least twice
        assert metric(url, "vigil_reports_rejected_total", reason="unauthorized") == 0
        assert metric(url, "vigil_enrollments_total", outcome="rotated") >= 2
        # Old credentials stop working once the new one was used. The agent may have
        # stopped holding a rotation it had not used yet (its predecessor then still
        # valid, by design): use the current one first, as the agent's next report would.
        current = credential_of(folder)["token"]
        assert post_report(url, current, agent_id)[0] == 200
        old = sorted(tokens - {current})  # the current one may be newer than all we saw
        assert [post_report(url, token, agent_id)[0] for token in old] == [401] * len(old)
    assert "REJECTED" not in (tmp_path / "agent.log").read_text()


def test_a_clone_is_refused_until_it_takes_a_new_id_and_a_re_image_replaces(
    tmp_path: Path,
) -> None:
    secret = new_secret(tmp_path, "s.txt", "--label", "role=laptop", "--uses", "5")
    with collector(tmp_path) as url:
        original = tmp_path / "original"
        config = agent_config(original, url)
        assert enroll(config, secret).returncode == 0
        old_token = credential_of(original)["token"]
        agent_id = agent_id_of(original)

        clone = tmp_path / "clone"
        shutil.copytree(original, clone)
        (clone / "state" / "credential.json").unlink()
        clone_config = agent_config(clone, url)
        result = enroll(clone_config, secret)
        assert result.returncode == 1 and "--new-id" in result.stderr
        assert post_report(url, old_token, agent_id)[0] == 200  # the original is untouched

        result = enroll(clone_config, secret, "--new-id")
        assert result.returncode == 0, result.stderr
        assert agent_id_of(clone) != agent_id
        assert credential_of(clone)["agent_id"] == agent_id_of(clone)

        reimaged = tmp_path / "reimaged"
        reimaged.mkdir()
        (reimaged / "state").mkdir()
        (reimaged / "state" / "agent-id").write_text(agent_id + "\n")
        result = enroll(agent_config(reimaged, url), secret, "--replace")
        assert result.returncode == 0, result.stderr
        assert post_report(url, old_token, agent_id)[0] == 401
        assert post_report(url, credential_of(reimaged)["token"], agent_id)[0] == 200
        assert metric(url, "vigil_enrollments_total", outcome="conflict") == 1
        assert metric(url, "vigil_enrollments_total", outcome="replaced") == 1


def test_migrating_from_the_shared_token_loses_no_queued_report(tmp_path: Path) -> None:
    """Today's config (shared token) with reports queued on the agent; the admin enrolls
    the running agent, then drops the shared token: every queued event arrives."""
    folder = tmp_path / "laptop"
    config = write_collector_config(tmp_path, shared=True)
    proc, url = start_collector(config, tmp_path / "collector.log")
    port = url.rsplit(":", 1)[1]
    # A fixed port from here on, so the agent (configured with this URL) finds it again.
    write_collector_config(tmp_path, shared=True)
    cfg = tmp_path / "collector.yaml"
    cfg.write_text(cfg.read_text().replace("port: 0", f"port: {port}"))
    acfg = agent_config(folder, url, token=SHARED_TOKEN)
    agent = spawn_agent(acfg, tmp_path / "agent.log", cwd=folder, unbuffered=True)
    try:
        agent_id = wait_for(
            "the agent's id",
            lambda: (folder / "state" / "agent-id").exists() and agent_id_of(folder),
        )
        wait_for("delivery with the shared token", lambda: hosts(url).get(agent_id))
        assert stop(proc) == 0
        queued = wait_for(
            "events queued while the collector is down", lambda: outbox_event_ids(folder) or None
        )

        proc, _ = _restart(cfg, tmp_path, port)
        secret = new_secret(tmp_path, "s.txt", "--label", "role=laptop")
        assert enroll(acfg, secret).returncode == 0
        wait_for(
            "queued events delivered", lambda: queued <= collector_event_ids(tmp_path, agent_id)
        )
        assert stop(proc) == 0

        # Shared token removed from the collector: the enrolled agent does not notice.
        write_collector_config(tmp_path)
        cfg.write_text(cfg.read_text().replace("port: 0", f"port: {port}"))
        queued = wait_for("events queued meanwhile", lambda: outbox_event_ids(folder) or None)
        proc, _ = _restart(cfg, tmp_path, port)
        wait_for(
            "delivered with the credential only",
            lambda: queued <= collector_event_ids(tmp_path, agent_id),
        )
        assert metric(url, "vigil_reports_rejected_total", reason="unauthorized") == 0
    finally:
        assert stop(agent) == 0
        stop(proc)
    assert "REJECTED" not in (tmp_path / "agent.log").read_text()


def _restart(config: Path, folder: Path, port: str) -> tuple[subprocess.Popen[str], str]:
    args = [sys.executable, "-m", "vigil.collector", "--config", str(config)]
    log = (folder / "collector.log").open("a")
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=log, text=True)
    line = read_line(proc, 20)
    if f":{port}" not in line:
        stop(proc)
        pytest.fail(f"collector did not restart on port {port}: {line!r}")
    return proc, line.split("listening on ", 1)[1].strip()
