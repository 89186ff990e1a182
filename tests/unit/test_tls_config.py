"""TLS settings fail fast at config load, naming file, key and value (exit 2 upstream):
the collector's ``listen.tls`` and the agent's ``collector.ca_file`` and client cert."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.tls import Pki, make_pki
from vigil.agent.config import load_agent_config
from vigil.collector.config import load_collector_config
from vigil.configio import ConfigError

TOKEN = "t" * 40


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def collector(tmp_path: Path, tls: str) -> Path:
    path = tmp_path / "collector.yaml"
    path.write_text(f"listen: {{host: 127.0.0.1, tls: {tls}}}\nauth: {{agent_tokens: [{TOKEN}]}}\n")
    return path


def agent(tmp_path: Path, collector_keys: str, url: str = "https://127.0.0.1:9750") -> Path:
    path = tmp_path / "agent.yaml"
    path.write_text(f'collector: {{url: "{url}", token: {TOKEN}{collector_keys}}}\n')
    return path


def test_a_collector_certificate_and_key_load(tmp_path: Path, pki: Pki) -> None:
    config = load_collector_config(
        collector(tmp_path, f"{{cert_file: {pki.server_cert}, key_file: {pki.server_key}}}")
    )
    assert config.tls is not None and config.tls.client_ca_file is None


@pytest.mark.parametrize(
    ("tls", "key", "words"),
    [
        ("{cert_file: nowhere.pem, key_file: nowhere.key}", "listen.tls.cert_file", "no such"),
        ("{cert_file: CERT}", "listen.tls.key_file", ""),
        ("{cert_file: CERT, key_file: OTHERKEY}", "listen.tls.cert_file", "cannot load"),
        ("{cert_file: CERT, key_file: KEY, client_ca: CA}", "listen.tls.client_ca", "unknown"),
    ],
    ids=["missing file", "no key", "key of another certificate", "typo"],
)
def test_bad_collector_tls_names_the_key(tmp_path: Path, pki: Pki, tls, key, words) -> None:
    tls = (
        tls.replace("OTHERKEY", str(pki.client_key))
        .replace("CERT", str(pki.server_cert))
        .replace("KEY", str(pki.server_key))
        .replace("CA", str(pki.ca))
    )
    with pytest.raises(ConfigError) as error:
        load_collector_config(collector(tmp_path, tls))
    assert key in str(error.value) and words in str(error.value)


def test_an_agent_ca_file_and_client_certificate_load(tmp_path: Path, pki: Pki) -> None:
    keys = (
        f", ca_file: {pki.ca}, client_cert_file: {pki.client_cert},"
        f" client_key_file: {pki.client_key}"
    )
    target = load_agent_config(agent(tmp_path, keys)).collector
    assert (target.ca_file, target.client_cert_file) == (pki.ca, pki.client_cert)


@pytest.mark.parametrize(
    ("keys", "url", "key", "words"),
    [
        (", ca_file: CA", "http://127.0.0.1:9750", "collector.ca_file", "https://"),
        (", ca_file: missing.pem", None, "collector.ca_file", "no such file"),
        (", client_key_file: KEY", None, "collector.client_key_file", "client_cert_file"),
        (", ca_file: KEY", None, "collector.ca_file", "cannot load"),
    ],
    ids=["plain http", "missing file", "key without certificate", "not a CA"],
)
def test_bad_agent_tls_names_the_key(tmp_path: Path, pki: Pki, keys, url, key, words) -> None:
    keys = keys.replace("CA", str(pki.ca)).replace("KEY", str(pki.client_key))
    path = agent(tmp_path, keys) if url is None else agent(tmp_path, keys, url)
    with pytest.raises(ConfigError) as error:
        load_agent_config(path)
    assert key in str(error.value) and words in str(error.value)
