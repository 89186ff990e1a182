"""The series that trigger clock-resync, print-queue-clear, dns-flush and service-restart:
pure parsing over fake data, and the sources through the sampler with fake programs."""

from __future__ import annotations

import asyncio
import os
import struct
import subprocess
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.support.fake_psutil import FakeClock, FakePs
from vigil.agent.config import CheckSpec, ClockSpec, PrintSpec, SamplerConfig, ServiceFallback
from vigil.agent.measure import Measurer
from vigil.agent.sampling import dns_query
from vigil.agent.sampling.clock_offset import (
    ClockError,
    parse_chrony,
    parse_timedatectl,
    sntp_offset,
    sntp_request,
    to_ntp,
)
from vigil.agent.sampling.printing import parse_jobs, parse_queues, queue_items
from vigil.agent.sampling.sampler import Sampler
from vigil.agent.sampling.service_fallback import fallback_state
from vigil.agent.sampling.services import Services
from vigil.agent.svc import ServiceState

# ------------------------------------------------------------------ clock offset (pure)


def server_reply(
    request: bytes, t2: float, t3: float, *, stratum: int = 2, first: int = 0x24
) -> bytes:
    """A server's SNTP reply to ``request`` stamped with receive ``t2`` and transmit ``t3``."""
    return bytes([first, stratum]) + bytes(22) + request[40:48] + to_ntp(t2) + to_ntp(t3)


def test_sntp_offset_is_server_minus_local_with_the_round_trip_removed() -> None:
    """Local clock 5 s behind, 0.2 s each way: the offset is +5 s, not 5.2 s."""
    request = sntp_request(1000.0)
    reply = server_reply(request, 1005.2, 1005.3)
    assert sntp_offset(request, reply, 1000.5) == pytest.approx(5.0, abs=1e-6)


@pytest.mark.parametrize(
    ("mangle", "why"),
    [
        pytest.param(lambda r: r[:40], "short", id="short reply"),
        pytest.param(lambda r: bytes([0x23]) + r[1:], "mode 3", id="a client's packet"),
        pytest.param(lambda r: r[:24] + bytes(8) + r[32:], "does not answer", id="wrong origin"),
        pytest.param(
            lambda r: r[:1] + bytes([0]) + r[2:12] + b"RATE" + r[16:], "kiss code RATE", id="kiss"
        ),
        pytest.param(lambda r: bytes([0xE4]) + r[1:], "not synchronised", id="unsynchronised"),
    ],
)
def test_a_reply_that_cannot_be_trusted_gives_no_offset(mangle: Any, why: str) -> None:
    request = sntp_request(1000.0)
    with pytest.raises(ClockError, match=why):
        sntp_offset(request, mangle(server_reply(request, 1000.0, 1000.0)), 1000.0)


def test_chrony_tracking_csv_gives_the_system_time_offset() -> None:
    text = (
        "A29FC87B,time.example.com,3,1765000000.1,0.250000000,0.1,0.01,-5.1,"
        "0.0,0.01,0.02,0.001,64.2,Normal\n"
    )
    assert parse_chrony(text) == pytest.approx(0.25)


@pytest.mark.parametrize(
    ("line", "seconds"),
    [
        ("Offset: +1.5ms", 0.0015),
        ("Offset: -250us", -0.00025),
        ("Offset: +2.000s", 2.0),
        ("Offset: -1min", -60.0),
    ],
    ids=str,
)
def test_timedatectl_offset_units(line: str, seconds: float) -> None:
    text = f"       Server: 10.0.0.1 (ntp.example.com)\n  Poll interval: 32s\n       {line}\n"
    assert parse_timedatectl(text) == pytest.approx(seconds)


def test_unsynchronised_timedatectl_is_no_offset() -> None:
    with pytest.raises(ClockError, match="no offset"):
        parse_timedatectl("       Server: n/a\n")


# ------------------------------------------------------------------ clock source


class FakeRun:
    """``subprocess.run`` stand-in: the output per program name, or an exception."""

    def __init__(self, outputs: dict[str, Any]) -> None:
        self.outputs = outputs
        self.calls: list[list[str]] = []

    def __call__(self, argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        self.calls.append(argv)
        out = self.outputs[Path(argv[0]).name + " " + argv[1]]
        if isinstance(out, BaseException):
            raise out
        code, stdout, stderr = out
        return subprocess.CompletedProcess(argv, code, stdout, stderr)


def which_only(*names: str) -> Any:
    return lambda name, **_: f"/usr/bin/{name}" if name in names else None


def clock_sampler(run: FakeRun, *programs: str, clock: FakeClock | None = None) -> Sampler:
    config = SamplerConfig(clock=ClockSpec(interval_s=60.0), slow_s=60.0)
    seams = {"which": which_only(*programs), "run": run}
    return Sampler(config, ps=FakePs(), clock=clock or FakeClock(), clock_seams=seams)


def test_clock_offset_from_chrony_is_absolute_with_the_sign_apart() -> None:
    run = FakeRun({"chronyc -c": (0, "A,b,3,1.0,-2.5,0,0,0,0,0,0,0,64,Normal\n", "")})
    values = clock_sampler(run, "chronyc", "timedatectl").sample(["clock"])
    assert values["clock.offset_s"] == 2.5
    assert values["clock.offset_signed_s"] == -2.5


def test_clock_falls_back_to_timedatectl_without_chrony() -> None:
    run = FakeRun({"timedatectl timesync-status": (0, "  Offset: -3ms\n", "")})
    values = clock_sampler(run, "timedatectl").sample(["clock"])
    assert values["clock.offset_s"] == pytest.approx(0.003)


def test_no_time_source_leaves_the_offset_unknown_with_the_reason() -> None:
    """Never a silent ok: the series is missing and reason_for says why."""
    s = clock_sampler(FakeRun({}))
    assert "clock.offset_s" not in s.sample(["clock"])
    assert "no time source" in s.reason_for("clock.offset_s")


def test_a_hung_time_program_is_unknown_not_a_stuck_sample() -> None:
    run = FakeRun({"chronyc -c": subprocess.TimeoutExpired("chronyc", 2.0)})
    s = clock_sampler(run, "chronyc")
    assert "clock.offset_s" not in s.sample(["clock"])
    assert "timed out" in s.reason_for("clock.offset_s")


def test_clock_is_read_once_per_interval_and_blocking_only_when_due() -> None:
    clock = FakeClock()
    run = FakeRun({"chronyc -c": (0, "A,b,3,1.0,0.5,0,0,0,0,0,0,0,64,Normal\n", "")})
    s = clock_sampler(run, "chronyc", clock=clock)
    assert s.blocking(["clock"])
    s.sample(["clock"])
    assert not s.blocking(["clock"])
    clock.now += 30
    assert s.sample(["clock"])["clock.offset_s"] == 0.5  # the cached reading
    assert len(run.calls) == 1
    clock.now += 31
    assert s.blocking(["clock"])
    s.sample(["clock"])
    assert len(run.calls) == 2


def test_without_a_clock_config_there_is_no_clock_series_and_no_program_runs() -> None:
    run = FakeRun({})
    s = Sampler(
        SamplerConfig(), ps=FakePs(), clock_seams={"which": which_only("chronyc"), "run": run}
    )
    assert not [k for k in s.sample() if k.startswith("clock.")]
    assert run.calls == []


# ------------------------------------------------------------------ print queues (pure)

LPSTAT_O = """\
stuck-1                 root              1024   Sun Dec  6 00:04:31 2026
stuck-2                 alice             2048   Sun Dec  6 00:34:31 2026
office-12               bob               1024   Sat Dec  5 23:59:59 2026
"""
LPSTAT_P = """\
printer office is idle.  enabled since Sun Dec  6 00:00:00 2026
printer stuck disabled since Sun Dec  6 00:04:31 2026 -
\tPaused
printer spare now printing spare-3.  enabled since Sun Dec  6 00:00:00 2026
"""


def local(text: str) -> float:
    return time.mktime(time.strptime(text, "%a %b %d %H:%M:%S %Y"))


def test_lpstat_jobs_are_parsed_with_queue_and_local_submission_time() -> None:
    jobs = parse_jobs(LPSTAT_O)
    assert [j.queue for j in jobs] == ["stuck", "stuck", "office"]
    assert jobs[0].submitted == local("Sun Dec 6 00:04:31 2026")


def test_a_queue_name_with_dashes_keeps_them() -> None:
    assert (
        parse_jobs("hp-laser-2-7  root  1024  Sun Dec  6 00:04:31 2026\n")[0].queue == "hp-laser-2"
    )


def test_lpstat_queues_tell_disabled_from_enabled() -> None:
    assert parse_queues(LPSTAT_P) == {"office": False, "stuck": True, "spare": False}


def test_queue_series_total_oldest_age_and_per_queue() -> None:
    now = local("Sun Dec 6 01:04:31 2026")
    items = dict(queue_items(parse_jobs(LPSTAT_O), parse_queues(LPSTAT_P), now))
    assert items["print.queue_jobs"] == 3
    assert items["print.oldest_job_age_s"] == pytest.approx(3600 + 4 * 60 + 32)
    assert items["print.queues_disabled"] == 1
    assert items["print.queue_jobs[stuck]"] == 2
    assert items["print.oldest_job_age_s[stuck]"] == pytest.approx(3600)
    assert items["print.queue_disabled[stuck]"] == 1.0
    assert items["print.queue_jobs[spare]"] == 0  # listed, empty: 0, not missing
    assert items["print.oldest_job_age_s[spare]"] == 0.0


def test_an_unreadable_date_still_counts_the_job() -> None:
    items = dict(queue_items(parse_jobs("q-1 root 10 sometime\n"), {}, 0.0))
    assert items["print.queue_jobs"] == 1
    assert items["print.oldest_job_age_s"] == 0.0


# ------------------------------------------------------------------ print source


def print_sampler(run: FakeRun, *programs: str) -> Sampler:
    config = SamplerConfig(printing=PrintSpec(server="127.0.0.1:631"), slow_s=1.0)
    seams = {"which": which_only(*programs), "run": run}
    return Sampler(config, ps=FakePs(), clock=FakeClock(), print_seams=seams)


def test_print_source_reads_lpstat_against_the_configured_server() -> None:
    run = FakeRun({"lpstat -o": (0, LPSTAT_O, ""), "lpstat -p": (0, LPSTAT_P, "")})
    values = print_sampler(run, "lpstat").sample(["print"])
    assert values["print.queue_jobs"] == 3
    assert values["print.queues_disabled"] == 1


def test_a_scheduler_with_no_queues_is_zero_jobs() -> None:
    run = FakeRun(
        {"lpstat -o": (0, "", ""), "lpstat -p": (1, "", "lpstat: No destinations added.\n")}
    )
    values = print_sampler(run, "lpstat").sample(["print"])
    assert values["print.queue_jobs"] == 0 and values["print.queues_disabled"] == 0


@pytest.mark.parametrize(
    ("outputs", "programs", "why"),
    [
        pytest.param({}, (), "lpstat not found", id="no CUPS client"),
        pytest.param(
            {"lpstat -o": (1, "", "lpstat: Scheduler is not running.\n")},
            ("lpstat",),
            "Scheduler is not running",
            id="scheduler down",
        ),
        pytest.param(
            {"lpstat -o": subprocess.TimeoutExpired("lpstat", 5.0)},
            ("lpstat",),
            "timed out",
            id="hung",
        ),
    ],
)
def test_unreadable_queues_are_unknown_never_ok(
    outputs: dict[str, Any], programs: tuple[str, ...], why: str
) -> None:
    s = print_sampler(FakeRun(outputs), *programs)
    assert not [k for k in s.sample(["print"]) if k.startswith("print.")]
    assert why in s.reason_for("print.queue_jobs")


# ------------------------------------------------------------------ DNS (pure)


def dns_reply(query: bytes, *, rcode: int = 0, answers: list[bytes] = ()) -> bytes:  # type: ignore[assignment]
    header = struct.pack(
        "!HHHHHH", struct.unpack("!H", query[:2])[0], 0x8180 | rcode, 1, len(answers), 0, 0
    )
    records = b"".join(
        b"\xc0\x0c" + struct.pack("!HHIH", 1 if len(a) == 4 else 28, 1, 60, len(a)) + a
        for a in answers
    )
    return header + query[12:] + records


def test_dns_answer_addresses_are_decoded_through_name_compression() -> None:
    query = dns_query.encode_query(7, "intranet.example.com", dns_query.TYPE_A)
    reply = dns_reply(query, answers=[bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])])
    assert dns_query.decode_answer(query, reply) == ["10.0.0.1", "10.0.0.2"]


def test_nxdomain_is_an_answer_of_its_own() -> None:
    query = dns_query.encode_query(7, "gone.example.com", dns_query.TYPE_A)
    with pytest.raises(dns_query.NoSuchName):
        dns_query.decode_answer(query, dns_reply(query, rcode=3))


@pytest.mark.parametrize(
    "mangle",
    [
        pytest.param(lambda q, r: r[:20], id="truncated"),
        pytest.param(lambda q, r: dns_reply(q, rcode=2), id="servfail"),
        pytest.param(lambda q, r: r[:-2], id="record cut short"),
    ],
)
def test_a_bad_dns_reply_is_an_error_not_an_answer(mangle: Any) -> None:
    query = dns_query.encode_query(7, "intranet.example.com", dns_query.TYPE_A)
    reply = dns_reply(query, answers=[bytes([10, 0, 0, 1])])
    with pytest.raises(dns_query.DnsError) as exc:
        dns_query.decode_answer(query, mangle(query, reply))
    assert not isinstance(exc.value, dns_query.NoSuchName)


# ------------------------------------------------------------------ service fallbacks


def test_pidfile_fallback_reads_a_live_pid_as_running(tmp_path: Path) -> None:
    pidfile = tmp_path / "d.pid"
    pidfile.write_text(f"{os.getpid()}\n")
    assert fallback_state(ServiceFallback("d", pidfile=pidfile)).active is True


def test_pidfile_fallback_reads_a_missing_file_or_dead_pid_as_stopped(tmp_path: Path) -> None:
    assert fallback_state(ServiceFallback("d", pidfile=tmp_path / "none.pid")).active is False
    dead = subprocess.Popen(["true"])
    dead.wait()
    pidfile = tmp_path / "d.pid"
    pidfile.write_text(str(dead.pid))
    assert fallback_state(ServiceFallback("d", pidfile=pidfile)).active is False


def test_pidfile_with_garbage_is_unknown(tmp_path: Path) -> None:
    pidfile = tmp_path / "d.pid"
    pidfile.write_text("not a pid")
    state = fallback_state(ServiceFallback("d", pidfile=pidfile))
    assert state.active is None and "no pid" in state.detail


def test_process_name_fallback() -> None:
    me = psutil.Process().name()
    assert fallback_state(ServiceFallback("x", process=me)).active is True
    assert fallback_state(ServiceFallback("x", process="no-such-process-vigil")).active is False


@pytest.mark.parametrize(("code", "active"), [(0, True), (3, False), (4, None)])
def test_sysv_fallback_follows_the_lsb_status_codes(code: int, active: bool | None) -> None:
    def run(argv: list[str], **_: Any) -> subprocess.CompletedProcess[bytes]:
        assert argv[1:] == ["cups", "status"]
        return subprocess.CompletedProcess(argv, code, b"", b"")

    state = fallback_state(ServiceFallback("cups", sysv=True), which=which_only("service"), run=run)
    assert state.active is active


def test_the_fallback_is_asked_only_when_the_service_manager_cannot_tell() -> None:
    asked: list[str] = []

    def states(names: Any) -> dict[str, ServiceState]:
        return {
            "managed": ServiceState(False, "inactive"),
            "legacy": ServiceState(None, "systemctl not found (not a systemd system)"),
        }

    def fallback(fb: ServiceFallback) -> ServiceState:
        asked.append(fb.name)
        return ServiceState(True, "running (pid 42)")

    config = SamplerConfig(
        services=("managed", "legacy"),
        service_fallbacks=(
            ServiceFallback("managed", process="m"),
            ServiceFallback("legacy", process="l"),
        ),
    )
    source = Services(
        config.services,
        states=states,
        reasons={},
        fallbacks=config.service_fallbacks,
        fallback=fallback,
    )
    values = dict(source.read())
    assert values == {"service.active[managed]": 0.0, "service.active[legacy]": 1.0}
    assert asked == ["legacy"]


def test_a_verification_reads_the_clock_anew_despite_the_interval() -> None:
    """After a fix the agent re-measures; a cached reading would be the one that
    triggered the fix, so measure() refreshes the source first."""
    run = FakeRun({"chronyc -c": (0, "A,b,3,1.0,5.0,0,0,0,0,0,0,0,64,Normal\n", "")})
    s = clock_sampler(run, "chronyc")
    assert s.sample(["clock"])["clock.offset_s"] == 5.0
    run.outputs["chronyc -c"] = (0, "A,b,3,1.0,0.001,0,0,0,0,0,0,0,64,Normal\n", "")
    spec = CheckSpec(id="clock.offset", metric="clock.offset_s", critical=1.0)

    value, _ = asyncio.run(Measurer(s).measure(spec))

    assert value == 0.001
    assert len(run.calls) == 2
