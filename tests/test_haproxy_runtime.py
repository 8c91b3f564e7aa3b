"""certd/deployers/haproxy.py without a haproxy: the config option, the parsers, the cleaning
of answers (the lab test, tests/test_haproxy_runtime_lab.py, runs the real thing)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from certd.config import FileDeployerConfig, SshDeployerConfig
from certd.deployers.haproxy import (
    HAProxyRuntime,
    _payload,
    clean,
    parse_show_crt_list,
    parse_show_ssl_cert,
)

SSH = {"type": "ssh", "key_file": "/k", "known_hosts": "/h"}


@pytest.mark.parametrize("model,extra", [(FileDeployerConfig, {"type": "file"}),
                                         (SshDeployerConfig, SSH)])
def test_runtime_options_of_both_deployers(model, extra):
    assert model(path="/p", runtime_api="/run/h.sock", **extra).runtime_api == "/run/h.sock"
    with pytest.raises(ValidationError, match="runtime_crt_list needs runtime_api"):
        model(path="/p", runtime_crt_list="/l", **extra)
    with pytest.raises(ValidationError, match="runtime_timeout"):
        model(path="/p", runtime_api="/s", runtime_timeout="soon", **extra)


def test_runtime_options():
    c = FileDeployerConfig(type="file", path="/etc/haproxy/certs/{certificate}",
                           runtime_api="/run/haproxy/{node}.sock",
                           runtime_crt_list="/etc/haproxy/certd.crt-list", runtime_timeout="5s")
    assert c.runtime_timeout.total_seconds() == 5
    assert FileDeployerConfig(type="file", path="/p").runtime_api is None
    with pytest.raises(ValidationError, match="runtime_crt_list needs runtime_api"):
        FileDeployerConfig(type="file", path="/p", runtime_crt_list="/l")
    with pytest.raises(ValidationError):
        FileDeployerConfig(type="file", path="/p", runtime_api="/run/{nodes}.sock")


def test_the_name_haproxy_knows_is_combined_pem_under_the_stable_path():
    assert HAProxyRuntime.file_of("/etc/haproxy/certs/portal/") == \
        "/etc/haproxy/certs/portal/combined.pem"


def test_parsers():
    loaded = parse_show_ssl_cert("# transaction\n*/c/x.pem\n# filename\n/c/a.pem\n/c/x.pem\n\n")
    assert loaded.transaction == "/c/x.pem" and loaded.files == {"/c/a.pem", "/c/x.pem"}
    assert parse_show_ssl_cert("# filename\n/c/a.pem\n\n").transaction is None
    assert parse_show_crt_list("# /l\n/c/a.pem [alpn h2] a.test\n/c/b.pem\n\n") == {
        "/c/a.pem", "/c/b.pem"}


def test_answers_are_cleaned_and_bounded():
    shown = clean("line one\n\x1b[31mred\x00\n" + "x" * 1000)
    assert shown.startswith("line one / ?[31mred?")
    assert len(shown) == 200 and shown.endswith("...")
    assert clean("\n\n") == "(empty answer)"


def test_payload_has_no_empty_line_inside():
    assert _payload("A\n\nB\r\n  C  \n\n") == "A\nB\nC"
    with pytest.raises(ValueError):
        _payload("A\x1bB")
