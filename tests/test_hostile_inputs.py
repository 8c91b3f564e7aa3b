"""The bad-input table (issue 10): hostile inputs at every surface certd reads, each handled
cleanly. One parametrized table per surface:

- the config file (certd.config.parse / load, and `certd check-config` as a process): a
  ConfigError naming the key path, bounded and printable, never another exception;
- the REST API beyond alias names (bodies, query strings, path parameters, headers, methods):
  a problem+json 4xx, never a 5xx, never a byte of the request echoed back;
- the tokens file: a ConfigError that never quotes a token;
- the CLI: exit 1 or 2 with a clear, printable line, no traceback, no side effect;
- what a node sends back (salt-api answers, command output, TLS peers): a failed result with a
  bounded message, never an exception.

Listener-level raw HTTP, alias names, CA bodies, preflight and the deployers' layout have their
own tables next to their fixes.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import gc
import gzip
import hashlib
import json
import os
import re
import shlex
import ssl
import sys
import time
import tracemalloc
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import TestServer
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from certd import cli, verify
from certd import config as configuration
from certd.api import app as api
from certd.api import tokens as api_tokens
from certd.app import open_certd, start_site
from certd.config import SaltDeployerConfig
from certd.deployers import local, salt
from certd.deployers.base import DeployResult, Target, placements
from certd.errors import ConfigError
from certd.model import Alias, ProbeTarget, utcnow
from certd.monitor import checks, probe
from tests.certd_api import api_config_data
from tests.certd_lab import run_certd
from tests.lab.procs import free_port

MARK = "ZZMARK<script>"  # put into hostile inputs; must never come back


def assert_no_marker(*texts: Any) -> None:
    """No trace of MARK (any case, raw or JSON/percent-escaped) in what certd answered."""
    for text in texts:
        if isinstance(text, (bytes, bytearray)):
            text = bytes(text).decode("latin-1")
        assert "zzmark" not in str(text).lower(), f"input echoed: {str(text)[:300]!r}"


def assert_clean_line(text: str, limit: int = 2000) -> None:
    """A message an operator reads: bounded, printable (no escape sequences, no bidi)."""
    assert len(text) <= limit, f"{len(text)} characters: {text[:200]!r}..."
    for line in text.splitlines():
        assert line.isprintable(), f"unprintable: {line[:200]!r}"


# ------------------------------------------------------------------------------------------
# 1. the config file
# ------------------------------------------------------------------------------------------

FRONTEND = {"nodes": [{"name": "fe1", "address": "127.0.0.2"}],
            "deployer": {"type": "file", "path": "/srv/certs/{node}/{certificate}"}}
CERT = {"name": "portal", "domains": ["portal.example.org"], "frontends": ["web"]}
PATH = "frontends.web.deployer.path"
NOTIFIER = "alerts.notifiers"
EMAIL = {"type": "email", "host": "smtp.example.org", "from": "certd@example.org",
         "to": ["ops@example.org"]}
SSH = {"type": "ssh", "path": "/x/{certificate}", "key_file": "/k", "known_hosts": "/kh"}
SALT = {"type": "salt", "path": "/x/{certificate}", "url": "http://salt.example:8000",
        "username": "certd", "password_file": "/p", "mode": "push"}
HMAC = "c2VjcmV0LWtleS0xMjM0NTY3ODkw"
TOP = object()  # the case replaces the whole document


def base_config() -> dict:
    return {"state_dir": "/var/lib/certd-test",
            "frontends": {"web": json.loads(json.dumps(FRONTEND))},
            "certificates": [dict(CERT)]}


def _set(data: dict, path: str, value: Any) -> None:
    parts = [int(i) if i else k for k, i in re.findall(r"([^.\[\]]+)|\[(\d+)\]", path)]
    for part in parts[:-1]:
        data = data[part] if not isinstance(part, str) or part in data else data.setdefault(
            part, {})
    data[parts[-1]] = value


# (id, key path, hostile value, the problem's key path prefix; None: the key path itself)
CONFIG_CASES: list[tuple[str, Any, Any, str | None]] = [
    # durations
    ("duration-1e999s", "acme.timeout", "1e999s", None),
    ("duration-negative", "renewal.before_expiry", "-1d", None),
    ("duration-overflow", "monitor.interval", "99999999999d", None),
    ("duration-float-inf", "acme.order_timeout", float("inf"), None),
    ("duration-float-nan", "challenge.ttl", float("nan"), None),
    ("duration-nan-text", "alerts.repeat", "NaN", None),
    ("duration-5000-digits", "monitor.timeout", "9" * 5000 + "s", None),
    ("duration-bool", "renewal.jitter", True, None),
    ("duration-in-list", "renewal.backoff", ["1m", "soon"], "renewal.backoff[1]:"),
    ("duration-list-empty", "renewal.backoff", [], None),
    ("duration-two-units", "events.retention", "30d5h", None),
    ("duration-hex", "retention.previous_keys", "0x10s", None),
    ("duration-negative-number", "frontends.web.command_timeout", -5, None),
    ("duration-mapping", "frontends.web.verify_timeout", {"s": 1}, None),
    ("duration-zero-sweep", "renewal.sweep_interval", "0s", None),
    ("duration-escape-sequence", "monitor.jitter", "5m\x1b[2J", None),
    ("duration-header-timeout-list", "api.limits.header_timeout", ["10s"], None),
    # numbers
    ("port-zero", "frontends.web.tls_port", 0, None),
    ("port-huge", "frontends.web.http_port", 10**30, None),
    ("port-float", "frontends.web.nodes[0].ssh_port", 22.5, None),
    ("port-word", "domains.validation_port", "eighty", None),
    ("port-negative", "monitor.endpoints",
     [{"address": "x.example", "port": -1, "names": ["a.example.org"]}],
     "monitor.endpoints[0].port:"),
    ("max-parallel-zero", "frontends.web.deployer.max_parallel", 0, None),
    ("max-parallel-huge", "frontends.web.deployer.max_parallel", 10**9, None),
    ("concurrency-nan", "monitor.concurrency", float("nan"), None),
    ("retries-negative", "alerts.retries", -1, None),
    ("budget-zero", "renewal.budget.orders_per_3h", 0, None),
    ("max-connections-huge", "api.limits.max_connections", 10**12, None),
    ("per-token-negative", "domains.per_token_per_hour", -5, None),
    # wrong types
    ("acme-not-mapping", "acme", "letsencrypt", None),
    ("frontends-list", "frontends", ["web"], None),
    ("certificates-mapping", "certificates", {"portal": {}}, None),
    ("log-level-unknown", "log_level", "trace", None),
    ("storage-postgres", "storage", "postgresql://u:p@h/db", None),
    ("state-dir-list", "state_dir", ["/a"], None),
    ("metrics-auth-word", "api.metrics_auth", "maybe", None),
    ("key-type-dsa", "acme.key_type", "dsa-1024", None),
    ("cert-key-type-weak", "certificates[0].key_type", "rsa-512", None),
    ("caa-not-list", "acme.caa_identities", "letsencrypt.org", None),
    ("strategy-unknown", "frontends.web.deployer.strategy", "yolo", None),
    ("min-severity-unknown", NOTIFIER, [{"type": "log", "min_severity": "panic"}],
     "alerts.notifiers[0].min_severity:"),
    ("ca-bundle-list", "acme.ca_bundle", ["/a"], None),
    # NUL bytes: no path, name or command can hold one
    ("nul-state-dir", "state_dir", "/var/lib/\x00certd", None),
    ("nul-deployer-path", PATH, "/srv/\x00/{node}", None),
    ("nul-reload", "frontends.web.reload", "systemctl reload nginx\x00; rm -rf /", None),
    ("nul-tokens-file", "api.tokens_file", "/etc/certd/tok\x00ens", None),
    ("nul-in-key", "acme", {"directory\x00": "https://ca.example/dir"}, "acme."),
    ("nul-password-file", "frontends.web.deployer", {**SALT, "password_file": "/p\x00"},
     "frontends.web.deployer.password_file:"),
    # templates: three bare placeholders, nothing else
    ("template-positional", PATH, "/srv/{0}/{certificate}", None),
    ("template-attribute", PATH, "/srv/{node.__class__}/x", None),
    ("template-conversion", PATH, "/srv/{certificate!r}", None),
    ("template-format-spec-huge", "frontends.web.reload", "echo {node:>999999999}",
     "frontends.web.reload:"),
    ("template-nested-spec", "frontends.web.check", "echo {node:{certificate}}", None),
    ("template-index", PATH, "/srv/{node[0]}", None),
    ("template-unclosed", PATH, "/srv/{node", None),
    ("template-stray-brace", "frontends.web.reload", "echo }", None),
    ("template-empty-field", PATH, "/srv/{}", None),
    ("template-unknown-field", "frontends.web.check", "{password}", None),
    ("template-empty-path", PATH, "", None),
    # listen addresses
    ("listen-garbage", "challenge.listen", "garbage", None),
    ("listen-no-host", "challenge.listen", ":8402", None),
    ("listen-port-zero", "api.listen", "127.0.0.1:0", None),
    ("listen-port-65536", "api.listen", "127.0.0.1:65536", None),
    ("listen-superscript-port", "api.listen", "127.0.0.1:\u00b2", None),
    ("listen-space-in-host", "challenge.listen", "exa mple:80", None),
    ("listen-crlf", "api.listen", "127.0.0.1:80\r\n", None),
    ("listen-10kb", "challenge.listen", "a" * 10000 + ":80", None),
    ("listen-number", "api.listen", 8403, None),
    ("resolver-no-port", "domains.resolver", "8.8.8.8", None),
    # names with control characters, bidi, whitespace
    ("frontend-key-bidi", "frontends", {"web\u202e": FRONTEND}, "frontends."),
    ("frontend-key-space", "frontends", {"web frontend": FRONTEND}, "frontends."),
    ("frontend-key-escape", "frontends", {"web\x1b[31m": FRONTEND}, "frontends."),
    ("node-name-escape", "frontends.web.nodes[0].name", "fe1\x1b[2J", None),
    ("node-name-whitespace", "frontends.web.nodes[0].name", " fe1 ", None),
    ("node-name-unicode", "frontends.web.nodes[0].name", "f\u00e91", None),
    ("node-name-twice", "frontends.web.nodes",
     [{"name": "fe1", "address": "a"}, {"name": "fe1", "address": "b"}], None),
    ("nodes-empty", "frontends.web.nodes", [], None),
    ("node-address-shell", "frontends.web.nodes[0].address", "127.0.0.2; rm -rf /", None),
    ("node-address-option", "frontends.web.nodes[0].address", "-oProxyCommand=sh", None),
    ("node-address-empty", "frontends.web.nodes[0].address", "", None),
    ("node-address-bidi", "frontends.web.nodes[0].address", "127.0.0.2\u202e", None),
    ("cert-name-traversal", "certificates[0].name", "../../etc", None),
    ("cert-name-upper", "certificates[0].name", "Portal", None),
    ("cert-name-empty", "certificates[0].name", "", None),
    ("cert-name-bidi", "certificates[0].name", "portal\u202egpj.exe", None),
    ("cert-name-twice", "certificates", [CERT, CERT], "certificates[1].name:"),
    ("domain-space", "certificates[0].domains", ["exa mple.com"], "certificates[0].domains[0]:"),
    ("domain-escape", "certificates[0].domains", ["example.com\x1b[2J"],
     "certificates[0].domains[0]:"),
    ("domain-bidi", "certificates[0].domains", ["\u202eexample.com"],
     "certificates[0].domains[0]:"),
    ("domain-leading-space", "certificates[0].domains", [" example.com"],
     "certificates[0].domains[0]:"),
    ("domain-300-chars", "certificates[0].domains", ["a" * 300 + ".com"],
     "certificates[0].domains[0]:"),
    ("domain-double-wildcard", "certificates[0].domains", ["*.*.example.com"],
     "certificates[0].domains[0]:"),
    ("domain-ip", "certificates[0].domains", ["192.0.2.1"], "certificates[0].domains[0]:"),
    ("domains-empty", "certificates[0].domains", [], None),
    ("domains-101", "certificates[0].domains", [f"n{i}.example.com" for i in range(101)], None),
    ("domains-string", "certificates[0].domains", "portal.example.org", None),
    ("allowed-suffix-star", "domains.allowed_suffixes", ["*"], "domains.allowed_suffixes[0]:"),
    ("denied-number", "domains.denied", [5], "domains.denied[0]:"),
    ("special-use-path", "domains.allow_special_use", ["../etc"], None),
    ("allow-networks-host-bits", "domains.preflight_allow_networks", ["10.0.0.1/8"], None),
    ("allow-networks-garbage", "domains.preflight_allow_networks", [MARK], None),
    ("allow-networks-string", "domains.preflight_allow_networks", "10.0.0.0/8", None),
    # cross references
    ("cert-frontend-unknown", "certificates[0].frontends", ["ghost"],
     "certificates[0].frontends[0]:"),
    ("cert-frontends-string", "certificates[0].frontends", "web", None),
    ("default-frontend-unknown", "domains.default_frontends", ["ghost"],
     "domains.default_frontends[0]:"),
    ("cert-frontend-10kb", "certificates[0].frontends", ["g" * 10000],
     "certificates[0].frontends[0]:"),
    # deployers
    ("deployer-no-type", "frontends.web.deployer", {"path": "/x"},
     "frontends.web.deployer.type:"),
    ("deployer-type-unknown", "frontends.web.deployer.type", "ftp", None),
    ("deployer-type-number", "frontends.web.deployer.type", 5, None),
    ("deployer-type-10kb", "frontends.web.deployer.type", "x" * 10000, None),
    ("deployer-key-typo", "frontends.web.deployer.paht", "/x", None),
    ("ssh-user-shell", "frontends.web.deployer", {**SSH, "user": "root; id"},
     "frontends.web.deployer.user:"),
    ("ssh-no-known-hosts", "frontends.web.deployer",
     {k: v for k, v in SSH.items() if k != "known_hosts"}, "frontends.web.deployer.known_hosts:"),
    ("ssh-port-zero", "frontends.web.deployer", {**SSH, "port": 0},
     "frontends.web.deployer.port:"),
    ("salt-url-crlf", "frontends.web.deployer",
     {**SALT, "url": "http://salt.example:8000/\r\nX-Evil: 1"}, "frontends.web.deployer.url:"),
    ("salt-url-file", "frontends.web.deployer", {**SALT, "url": "file:///etc/passwd"},
     "frontends.web.deployer.url:"),
    ("salt-username-empty", "frontends.web.deployer", {**SALT, "username": ""},
     "frontends.web.deployer.username:"),
    # pull is the default mode: without pull_url, the message says both ways out
    ("salt-pull-without-url", "frontends.web.deployer",
     {k: v for k, v in SALT.items() if k != "mode"},
     "frontends.web.deployer: the salt deployer pulls by default"),
    ("salt-pull-url-quote", "frontends.web.deployer",
     {**SALT, "mode": "pull", "pull_url": "http://certd'.example"},
     "frontends.web.deployer.pull_url:"),
    ("salt-pull-ttl-week", "frontends.web.deployer",
     {**SALT, "mode": "pull", "pull_url": "https://certd.example", "pull_token_ttl": "7d"},
     "frontends.web.deployer: pull_token_ttl must be between"),
    # acme, EAB
    ("directory-ftp", "acme.directory", "ftp://ca.example/dir", None),
    ("directory-javascript", "acme.directory", "javascript:alert(1)", None),
    ("directory-crlf", "acme.directory", "https://ca.example/dir\r\nHost: evil", None),
    ("directory-space", "acme.directory", "https://ca.example/a b", None),
    ("email-crlf-header", "acme.email", "ops@example.org\r\nBcc: x@evil.example", None),
    ("email-trailing-newline", "acme.email", "ops@example.org\n", None),
    ("email-two-addresses", "acme.email", "a@example.org,b@example.org", None),
    ("email-no-at", "acme.email", "not-an-address", None),
    ("eab-empty", "acme.eab", {"kid": "", "hmac_key": ""}, "acme.eab.kid:"),
    ("eab-hmac-not-base64", "acme.eab", {"kid": "k", "hmac_key": MARK + "secret!!"},
     "acme.eab.hmac_key:"),
    ("eab-hmac-crlf", "acme.eab", {"kid": "k", "hmac_key": "abcd\r\nZZMARK"},
     "acme.eab.hmac_key:"),
    ("eab-kid-escape", "acme.eab", {"kid": "k\x1b[2J", "hmac_key": HMAC}, "acme.eab.kid:"),
    ("eab-string", "acme.eab", "kid:secret", None),
    ("eab-extra-key", "acme.eab", {"kid": "k", "hmac_key": HMAC, "mac": "x"}, "acme.eab.mac:"),
    ("eab-key-and-file", "acme.eab", {"kid": "k", "hmac_key": HMAC, "hmac_key_file": "/k"},
     "acme.eab: give the key as hmac_key or hmac_key_file"),
    # secret files as systemd credentials: $CREDENTIALS_DIRECTORY/NAME, NAME one file name
    ("credential-dotdot", "api.tokens_file", "$CREDENTIALS_DIRECTORY/../../etc/shadow",
     "api.tokens_file: '../../etc/shadow': not a credential name"),
    ("credential-subdirectory", "acme.eab",
     {"kid": "k", "hmac_key_file": "${CREDENTIALS_DIRECTORY}/a/b"}, "acme.eab.hmac_key_file:"),
    ("credential-escape", "frontends.web.deployer",
     {**SSH, "key_file": "$CREDENTIALS_DIRECTORY/k\x1b[2J"}, "frontends.web.deployer.key_file:"),
    ("credential-huge-name", "frontends.web.deployer",
     {**SALT, "password_file": "$CREDENTIALS_DIRECTORY/" + "a" * 5000},
     "frontends.web.deployer.password_file:"),
    ("credential-other-variable", NOTIFIER,
     [{**EMAIL, "username": "u", "password_file": "$HOME/pw"}],
     "alerts.notifiers[0].password_file: only $CREDENTIALS_DIRECTORY/NAME is expanded"),
    # notifiers
    ("notifier-type-unknown", NOTIFIER, [{"type": "pager"}], "alerts.notifiers[0].type:"),
    ("notifier-no-type", NOTIFIER, [{}], "alerts.notifiers[0].type:"),
    ("notifiers-mapping", NOTIFIER, {"type": "log"}, None),
    ("webhook-url-crlf", NOTIFIER,
     [{"type": "webhook", "url": "https://hooks.example/x\r\nX-Evil: 1"}],
     "alerts.notifiers[0].url:"),
    ("webhook-url-file", NOTIFIER, [{"type": "webhook", "url": "file:///etc/passwd"}],
     "alerts.notifiers[0].url:"),
    ("webhook-url-space-host", NOTIFIER, [{"type": "webhook", "url": "https:// evil"}],
     "alerts.notifiers[0].url:"),
    ("webhook-header-name-crlf", NOTIFIER,
     [{"type": "webhook", "url": "https://h.example/", "headers": {"X-A\r\nX-Evil": "1"}}],
     "alerts.notifiers[0].headers:"),
    ("webhook-header-value-crlf", NOTIFIER,
     [{"type": "webhook", "url": "https://h.example/", "headers": {"X-T": "a\r\nX-Evil: 1"}}],
     "alerts.notifiers[0].headers:"),
    ("webhook-header-value-number", NOTIFIER,
     [{"type": "webhook", "url": "https://h.example/", "headers": {"X-T": 5}}],
     "alerts.notifiers[0].headers.X-T:"),
    ("email-to-crlf", NOTIFIER,
     [{**EMAIL, "to": ["ops@example.org\r\nBcc: x@evil.example"]}], "alerts.notifiers[0].to:"),
    ("email-from-crlf", NOTIFIER,
     [{**EMAIL, "from": "certd@example.org\r\nBcc: x@evil.example"}],
     "alerts.notifiers[0].from:"),
    ("email-to-two-in-one", NOTIFIER, [{**EMAIL, "to": ["a@example.org, b@evil.example"]}],
     "alerts.notifiers[0].to:"),
    ("email-to-display-name", NOTIFIER, [{**EMAIL, "to": ["Ops <ops@example.org>"]}],
     "alerts.notifiers[0].to:"),
    ("email-to-empty", NOTIFIER, [{**EMAIL, "to": []}], "alerts.notifiers[0].to:"),
    ("email-tls-and-starttls", NOTIFIER, [{**EMAIL, "tls": True}], "alerts.notifiers[0]:"),
    ("email-username-alone", NOTIFIER, [{**EMAIL, "username": "u"}], "alerts.notifiers[0]:"),
    ("email-port-zero", NOTIFIER, [{**EMAIL, "port": 0}], "alerts.notifiers[0].port:"),
    # monitor
    ("critical-over-warn", "monitor.critical_before", "60d", "monitor:"),
    ("endpoint-names-empty", "monitor.endpoints", [{"address": "x.example", "names": []}],
     "monitor.endpoints[0].names:"),
    ("endpoint-name-space", "monitor.endpoints", [{"address": "x", "names": ["bad name"]}],
     "monitor.endpoints[0].names[0]:"),
    # unknown keys
    ("unknown-top-key", "acmee", {}, None),
    ("unknown-nested-key", "acme.directroy", "x", None),
    ("unknown-node-key", "frontends.web.nodes[0].port", 22, None),
    ("unknown-key-escape", TOP, {"\x1b[2Jevil": 1}, "'\\x1b[2Jevil':"),
    ("unknown-key-10kb", "k" * 10000, 1, "'kkkk"),
    ("unknown-key-bidi", "acme\u202e", 1, "'acme\\u202e':"),
    # the document itself
    ("top-list", TOP, ["a"], "top level:"),
    ("top-string", TOP, "acme", "top level:"),
    ("top-number", TOP, 5, "top level:"),
]


def check_config_error(exc: ConfigError, expected: str) -> None:
    assert any(p.startswith(expected) for p in exc.problems), exc.problems
    assert_clean_line(str(exc))


@pytest.mark.parametrize("path,value,expected", [c[1:] for c in CONFIG_CASES],
                         ids=[c[0] for c in CONFIG_CASES])
def test_config_values(path, value, expected):
    if path is TOP:
        data = value
    else:
        data = base_config()
        _set(data, path, value)
    with pytest.raises(ConfigError) as caught:
        configuration.parse(data)
    check_config_error(caught.value, expected or f"{path}:")
    if "hmac_key" in str(expected):  # a secret is never quoted
        assert_no_marker(str(caught.value))
        assert "secret!!" not in str(caught.value)


def _bomb(levels: int = 9) -> list[str]:
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 10) + "]")
    return lines


def _indented(lines: list[str]) -> str:
    return "\n".join("  " + line for line in lines) + "\n"


BOMB = _indented(_bomb())

# (id, file bytes, a substring of one problem)
LOAD_CASES: list[tuple[str, bytes, str]] = [
    ("tab-indent", b"acme:\n\tdirectory: https://ca.example/dir\n", "invalid YAML"),
    ("billion-laughs-unknown-key", ("x_bomb:\n" + BOMB).encode(), "x_bomb: unknown key"),
    ("billion-laughs-certificates", ("x:\n" + BOMB + "certificates: *a8\n").encode(),
     "certificates[0]"),
    ("billion-laughs-caa", ("x:\n" + BOMB + "acme: {caa_identities: *a8}\n").encode(),
     "acme.caa_identities[0]"),
    ("billion-laughs-merge", ("x:\n" + BOMB + "acme: {<<: {email: *a8}}\n").encode(),
     "acme.email"),
    ("recursive-list", b"acme:\n  caa_identities: &a [*a]\n", "acme.caa_identities"),
    ("recursive-mapping", b"frontends: &f {web: *f}\n", "frontends.web"),
    ("duplicate-top-key", b"log_level: info\nlog_level: debug\n", "appears twice"),
    ("duplicate-nested-key", b"acme:\n  email: a@example.org\n  email: b@example.org\n",
     "line 3"),
    ("duplicate-flow-key", b"acme: {timeout: 1s, timeout: 2s}\n", "appears twice"),
    ("duplicate-section", b"acme: {}\nfrontends: {}\nacme: {email: x@example.org}\n",
     "appears twice"),
    ("non-utf8", b"acme:\n  email: \xff\xfe@example.org\n", "cannot read"),
    ("utf16", "acme: {}\n".encode("utf-16"), "cannot read"),
    ("latin1", "state_dir: /var/lib/c\xe9rtd\n".encode("latin-1"), "cannot read"),
    ("nul-byte", b"state_dir: /var\x00/lib\n", "invalid YAML"),
    ("escape-byte", b"log_level: \x1b[2Jinfo\n", "invalid YAML"),
    ("python-object-tag", b"state_dir: !!python/object/apply:os.system ['id']\n",
     "invalid YAML"),
    ("python-name-tag", b"x: !!python/name:os.system\n", "invalid YAML"),
    ("unknown-tag", b"state_dir: !secret x\n", "invalid YAML"),
    ("binary-tag", b"state_dir: !!binary aGVsbG8=\n", "state_dir"),
    ("timestamp-as-duration", b"acme:\n  timeout: 2001-12-14\n", "acme.timeout"),
    ("int-5000-digits", b"alerts: {retries: 1" + b"0" * 5000 + b"}\n", "too long"),
    ("hex-5000-digits", b"alerts: {retries: 0x" + b"f" * 5000 + b"}\n", "alerts.retries"),
    ("float-overflow", b"alerts: {retries: 1" + b"0" * 400 + b".5}\n", "alerts.retries"),
    ("yaml-inf-duration", b"acme: {timeout: .inf}\n", "acme.timeout"),
    ("yaml-nan-count", b"api: {limits: {max_connections: .nan}}\n",
     "api.limits.max_connections"),
    ("deep-flow-100k", b"x: " + b"[" * 100_000 + b"]" * 100_000 + b"\n", "nested too deeply"),
    ("deep-flow-mapping", b"x: " + b"{a: " * 20_000 + b"1" + b"}" * 20_000 + b"\n",
     "nested too deeply"),
    ("deep-block", "".join(" " * i + "a:\n" for i in range(1100)).encode() + b" " * 1100 + b"b\n",
     "nested too deeply"),
    ("deep-under-certificates", b"certificates: " + b"[" * 5000 + b"]" * 5000 + b"\n",
     "nested too deeply"),
    ("two-documents", b"log_level: info\n---\nlog_level: debug\n", "invalid YAML"),
    ("undefined-alias", b"acme: *nope\n", "invalid YAML"),
    ("alias-100kb-name", b"acme: *" + b"a" * 100_000 + b"\n", "invalid YAML"),
    ("unhashable-key", b"? [a, b]\n: 1\n", "invalid YAML"),
    ("null-key", b"~: 1\n", ""),
    ("int-key", b"5: x\n", ""),
    ("top-scalar", b"just a string\n", "top level"),
    ("top-list", b"- a\n- b\n", "top level"),
    ("unterminated-quote", b'state_dir: "/var/lib\n', "invalid YAML"),
    ("bad-escape", b'state_dir: "\\xZZ"\n', "invalid YAML"),
    ("crlf-key", b'"acme\\r\\nx": 1\n', "unknown key"),
    ("bidi-frontend-key", "frontends:\n  \u202eweb: {}\n".encode(), "frontends."),
    ("10mb-value", b"acme:\n  email: " + b"a" * (10 << 20) + b"\n", "larger than 1024 KiB"),
    ("1mb-value", b"acme:\n  email: " + b"a" * (1 << 19) + b"\n", "acme.email"),
    ("10k-unknown-keys", "".join(f"x{i}: 1\n" for i in range(10_000)).encode(),
     "and 9,950 more problems"),
]


@pytest.mark.parametrize("text,expected", [c[1:] for c in LOAD_CASES],
                         ids=[c[0] for c in LOAD_CASES])
def test_config_files(tmp_path, request, text, expected):
    path = tmp_path / "config.yaml"
    path.write_bytes(text)
    # anchors and aliases: measure that nothing is expanded (tracing slows the big ones)
    measure = any(w in request.node.callspec.id for w in ("laughs", "recursive"))
    if measure:
        tracemalloc.start()
    started = time.monotonic()
    try:
        with pytest.raises(ConfigError) as caught:
            configuration.load(path)
        peak = tracemalloc.get_traced_memory()[1] if measure else 0
    finally:
        tracemalloc.stop()
    assert any(expected in p for p in caught.value.problems), caught.value.problems
    assert_clean_line(str(caught.value))
    assert peak < 16 << 20, f"{peak >> 20} MB"  # 10**9 'lol's would be gigabytes
    assert time.monotonic() - started < 30


@pytest.mark.parametrize("make_path,expected", [
    (lambda tmp: tmp, "cannot read"),
    (lambda tmp: tmp / "missing.yaml", "file not found"),
    (lambda tmp: tmp / "a\x00b.yaml", "cannot read"),
    (lambda tmp: tmp / ("x" * 5000), "cannot read"),
    (lambda tmp: Path("/dev/zero"), "larger than 1024 KiB"),
], ids=["directory", "missing", "nul-in-path", "name-too-long", "dev-zero"])
def test_config_paths(tmp_path, make_path, expected):
    with pytest.raises(ConfigError) as caught:
        configuration.load(make_path(tmp_path))
    assert any(expected in p for p in caught.value.problems), caught.value.problems


CLI_CONFIG_CASES = [
    ("tab-indent", b"acme:\n\tdirectory: x\n"),
    ("deep-nesting", b"x: " + b"[" * 100_000 + b"]" * 100_000 + b"\n"),
    ("duplicate-key", b"log_level: info\nlog_level: debug\n"),
    ("template-format-spec", yaml.safe_dump({**base_config(), "frontends": {"web": {
        **FRONTEND, "reload": "echo {node:>99999999}"}}}).encode()),
    ("huge-int", b"alerts: {retries: 1" + b"0" * 5000 + b"}\n"),
    ("non-utf8", b"state_dir: /var/\xff\n"),
    ("escape-in-key", b'"\\e[2Jevil": 1\n'),
]


@pytest.mark.parametrize("text", [c[1] for c in CLI_CONFIG_CASES],
                         ids=[c[0] for c in CLI_CONFIG_CASES])
def test_check_config_process(tmp_path, text):
    path = tmp_path / "config.yaml"
    path.write_bytes(text)
    proc = run_certd(path, "check-config", cwd=tmp_path)
    stderr = proc.stderr
    assert proc.returncode == 2, stderr
    assert "Traceback" not in stderr
    assert_clean_line(stderr)


# ------------------------------------------------------------------------------------------
# 2. the REST API beyond names
# ------------------------------------------------------------------------------------------

TOKEN = "hostile-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
JSON_CT = {"Content-Type": "application/json"}


def api_config(tmp_path: Path, api_port: int | None = None) -> dict:
    return api_config_data(
        tmp_path,
        api={"listen": f"127.0.0.1:{api_port or free_port()}",
             "tokens_file": str(tmp_path / "tokens")},
        domains={"default_frontends": ["web"], "preflight": False},
        certificates=[{"name": "portal.example.org", "domains": ["portal.example.org"],
                       "frontends": ["web"]}])


SEEDED = "seeded.example.com"


@pytest.fixture
async def client(tmp_path):
    """The API app behind certd's own listener (as the daemon serves it), one alias already
    stored (SEEDED); `request` as aiohttp's, relative to the listener."""
    port = free_port()
    raw = api_config(tmp_path, port)
    (tmp_path / "tokens").write_text(f"ops {TOKEN}\n")
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(raw))
    cfg = configuration.parse(raw)
    async with open_certd(cfg) as certd:
        await certd.add_alias(Alias(SEEDED, ("web",), "ops", utcnow()))
        app = api.build_app(certd, api_tokens.parse(f"ops {TOKEN}\n", "tokens"))
        runner = await start_site(app, cfg.api.listen, "api", cfg.api.limits)
        try:
            async with aiohttp.ClientSession(f"http://127.0.0.1:{port}") as session:
                yield SimpleNamespace(request=session.request, port=port, certd=certd,
                                      config_path=tmp_path / "config.yaml")
        finally:
            await runner.cleanup()


async def raw_request(client, data: bytes) -> tuple[int, bytes, bytes]:
    """Send bytes as they are; (status, head, body)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
    try:
        writer.write(data)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(1 << 20), 10)
        while chunk := await asyncio.wait_for(reader.read(1 << 20), 10):
            answer += chunk
    finally:
        writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/") else 0
    return status, head, body


def _body(obj: Any) -> bytes:
    return json.dumps(obj).encode()


D = "/api/v1/domains"
GZIP_BOMB = gzip.compress(b" " * (10 << 20))

# (id, method, path, headers, body, allowed statuses)
API_CASES: list[tuple[str, str, str, dict, bytes | None, set[int]]] = [
    # JSON bodies
    ("body-not-json", "POST", D, JSON_CT, MARK.encode() + b"{", {400}),
    ("body-empty", "POST", D, JSON_CT, b"", {400}),
    ("body-array-10k-deep", "POST", D, JSON_CT, b"[" * 10_000, {400}),
    ("body-object-5k-deep", "POST", D, JSON_CT, b'{"a":' * 3000, {400}),
    ("body-100k-deep", "POST", D, JSON_CT, b"[" * 100_000, {413}),
    ("body-1e999", "POST", D, JSON_CT, b'{"domain": 1e999}', {422}),
    ("body-nan", "POST", D, JSON_CT, b'{"domain": NaN}', {422}),
    ("body-frontends-infinity", "POST", D, JSON_CT,
     b'{"domain": "ok.example.com", "frontends": -Infinity}', {422}),
    ("body-int-5000-digits", "POST", D, JSON_CT, b'{"domain": 1' + b"0" * 5000 + b"}", {400}),
    ("body-duplicate-keys", "POST", D, JSON_CT,
     b'{"domain": "' + MARK.encode() + b'", "domain": "dup.example.com"}', {400}),
    ("domain-null", "POST", D, JSON_CT, _body({"domain": None}), {422}),
    ("domain-number", "POST", D, JSON_CT, _body({"domain": 5}), {422}),
    ("domain-bool", "POST", D, JSON_CT, _body({"domain": True}), {422}),
    ("domain-list", "POST", D, JSON_CT, _body({"domain": [MARK]}), {422}),
    ("domain-object", "POST", D, JSON_CT, _body({"domain": {MARK: 1}}), {422}),
    ("domain-empty", "POST", D, JSON_CT, _body({"domain": ""}), {422}),
    ("domain-missing", "POST", D, JSON_CT, _body({}), {422}),
    ("domain-marker", "POST", D, JSON_CT, _body({"domain": MARK + ".example.com"}), {422}),
    ("domain-10kb", "POST", D, JSON_CT, _body({"domain": "zzmark" + "a" * 10000}), {422}),
    ("domain-crlf", "POST", D, JSON_CT, _body({"domain": "a.example.com\r\nX-Zzmark: 1"}),
     {422}),
    ("domain-nul-escaped", "POST", D, JSON_CT, b'{"domain": "a\\u0000.example.com"}', {422}),
    ("domain-nul-raw", "POST", D, JSON_CT, b'{"domain": "a\x00.example.com"}', {400}),
    ("domain-lone-surrogate", "POST", D, JSON_CT, b'{"domain": "\\ud800.example.com"}', {422}),
    ("domain-bidi-marker", "POST", D, JSON_CT, _body({"domain": "ZZMARK\u202e.example.com"}),
     {422}),
    ("frontends-string", "POST", D, JSON_CT, _body({"domain": "ok.example.com",
                                                     "frontends": "web"}), {422}),
    ("frontends-number-items", "POST", D, JSON_CT,
     _body({"domain": "ok.example.com", "frontends": [5]}), {422}),
    ("frontends-empty", "POST", D, JSON_CT,
     _body({"domain": "ok.example.com", "frontends": []}), {422}),
    ("frontends-object", "POST", D, JSON_CT,
     _body({"domain": "ok.example.com", "frontends": {"web": 1}}), {422}),
    ("frontends-marker", "POST", D, JSON_CT,
     _body({"domain": "ok.example.com", "frontends": [MARK]}), {422}),
    ("frontends-null-item", "POST", D, JSON_CT,
     _body({"domain": "ok.example.com", "frontends": [None]}), {422}),
    ("unknown-field-marker", "POST", D, JSON_CT, _body({"domain": "ok.example.com", MARK: 1}),
     {400}),
    ("unknown-field-only", "POST", D, JSON_CT, _body({MARK: "x"}), {400}),
    ("body-10mb", "POST", D, JSON_CT, b'{"domain": "' + b"a" * (10 << 20) + b'"}', {413}),
    ("body-17kb-whitespace", "POST", D, JSON_CT, b" " * 17_000 + b'{"domain": "a.example.com"}',
     {413}),
    ("content-type-text", "POST", D, {"Content-Type": "text/plain"},
     _body({"domain": "ok.example.com"}), {415}),
    ("content-type-marker", "POST", D, {"Content-Type": MARK},
     _body({"domain": "ok.example.com"}), {415}),
    ("content-type-missing", "POST", D, {}, _body({"domain": "ok.example.com"}), {415}),
    ("charset-garbage", "POST", D, {"Content-Type": "application/json; charset=ZZMARK"},
     _body({"domain": "ok.example.com"}), {400}),
    ("charset-utf7", "POST", D, {"Content-Type": "application/json; charset=utf-7"},
     b'{"domain": "+ADw-script+AD4-.example.com"}', {400, 415, 422}),
    ("utf16-body-no-charset", "POST", D, JSON_CT,
     '{"domain": "ZZMARK.example.com"}'.encode("utf-16"), {400}),
    ("invalid-utf8-body", "POST", D, JSON_CT, b'{"domain": "\xff\xfeZZMARK"}', {400}),
    ("body-array", "POST", D, JSON_CT, b"[]", {400}),
    ("body-string", "POST", D, JSON_CT, _body(MARK), {400}),
    ("body-null", "POST", D, JSON_CT, b"null", {400}),
    ("body-number", "POST", D, JSON_CT, b"5", {400}),
    ("gzip-bomb", "POST", D, {**JSON_CT, "Content-Encoding": "gzip"}, GZIP_BOMB,
     {400, 413, 415}),
    ("content-encoding-marker", "POST", D, {**JSON_CT, "Content-Encoding": MARK},
     _body({"domain": "ok.example.com"}), {400, 415, 422}),
    ("renew-with-body-garbage", "POST", "/api/v1/certificates/ghost/renew", JSON_CT,
     MARK.encode(), {404}),
    # query strings
    ("limit-negative", "GET", D + "?limit=-1", {}, None, {400}),
    ("limit-zero", "GET", D + "?limit=0", {}, None, {400}),
    ("limit-501", "GET", D + "?limit=501", {}, None, {400}),
    ("limit-1e9", "GET", D + "?limit=1e9", {}, None, {400}),
    ("limit-word", "GET", D + "?limit=ZZMARK%3Cscript%3E", {}, None, {400}),
    ("limit-nan", "GET", D + "?limit=NaN", {}, None, {400}),
    ("limit-empty", "GET", D + "?limit=", {}, None, {400}),
    ("limit-5000-digits", "GET", D + "?limit=" + "9" * 5000, {}, None, {400}),
    ("limit-nul", "GET", D + "?limit=%00", {}, None, {400}),
    ("limit-repeated", "GET", D + "?limit=1&limit=ZZMARK", {}, None, {200, 400}),
    ("status-marker", "GET", D + "?status=ZZMARK%3Cscript%3E", {}, None, {400}),
    ("status-nul", "GET", D + "?status=%00", {}, None, {400}),
    ("status-empty", "GET", D + "?status=", {}, None, {400}),
    ("status-repeated", "GET", D + "?status=failed&status=ZZMARK", {}, None, {200, 400}),
    ("cursor-nul", "GET", D + "?cursor=%00", {}, None, {200, 400}),
    ("cursor-traversal", "GET", D + "?cursor=../../etc/passwd", {}, None, {200, 400}),
    ("cursor-marker-6kb", "GET", D + "?cursor=" + "ZZMARK" * 1000, {}, None, {200, 400}),
    ("cursor-invalid-utf8", "GET", D + "?cursor=%ff%fe", {}, None, {200, 400}),
    ("min-severity-marker", "GET", "/api/v1/alerts?min_severity=ZZMARK", {}, None, {400}),
    ("revoke-marker", "DELETE", f"{D}/{SEEDED}?revoke=ZZMARK%3Cscript%3E", {}, None, {400}),
    ("revoke-nul", "DELETE", f"{D}/{SEEDED}?revoke=%00", {}, None, {400}),
    ("revoke-empty", "DELETE", f"{D}/{SEEDED}?revoke=", {}, None, {400}),
    # documented: any value but 0/false/no means true (the default)
    ("force-marker", "POST", "/api/v1/certificates/portal.example.org/renew?force=ZZMARK", {},
     None, {202}),
    # path parameters
    ("domain-path-nul", "GET", D + "/%00", {}, None, {404}),
    ("domain-path-traversal", "GET", D + "/..%2f..%2fetc%2fpasswd", {}, None, {404}),
    ("domain-path-traversal-api", "GET", D + "/..%2F..%2Fcertificates%2Fportal.example.org", {},
     None, {404}),
    ("domain-path-7kb", "GET", D + "/" + "zzmark" * 1200, {}, None, {404}),
    ("domain-path-unicode", "GET", D + "/%D0%BF%D1%80%D0%B8%D0%BC%D0%B5%D1%80.%D1%80%D1%84", {},
     None, {404}),
    ("domain-path-invalid-utf8", "GET", D + "/%ff", {}, None, {404}),
    ("domain-path-marker", "GET", D + "/ZZMARK%3Cscript%3E", {}, None, {404}),
    ("domain-path-bidi", "GET", D + "/%E2%80%AEZZMARK.example.com", {}, None, {404}),
    ("domain-path-crlf", "GET", D + "/x.example.com%0d%0aX-Zzmark:%201", {}, None, {404}),
    ("domain-path-slash", "GET", D + "/a%2Fb", {}, None, {404}),
    ("delete-path-nul", "DELETE", D + "/%00", {}, None, {404}),
    ("delete-path-wildcard", "DELETE", D + "/*.example.com", {}, None, {404}),
    ("certificate-path-nul", "GET", "/api/v1/certificates/%00", {}, None, {404}),
    ("certificate-path-marker", "GET", "/api/v1/certificates/ZZMARK%3Cscript%3E", {}, None,
     {404}),
    ("renew-path-traversal", "POST", "/api/v1/certificates/..%2f..%2f/renew", {}, None, {404}),
    ("deploy-path-nul", "POST", "/api/v1/certificates/%00/deploy", {}, None, {404}),
    ("unknown-api-route", "GET", "/api/v1/ZZMARK", {}, None, {404}),
    ("unknown-route-no-auth", "GET", "/ZZMARK%3Cscript%3E", {}, None, {404}),
    ("double-slash", "GET", "/api//v1/domains", {}, None, {404}),
    # headers
    ("auth-missing", "GET", "/api/v1/certificates", {"Authorization": None}, None, {401}),
    ("auth-bearer-alone", "GET", "/api/v1/certificates", {"Authorization": "Bearer"}, None,
     {401}),
    ("auth-bearer-space", "GET", "/api/v1/certificates", {"Authorization": "Bearer "}, None,
     {401}),
    ("auth-two-tokens", "GET", "/api/v1/certificates",
     {"Authorization": f"Bearer {TOKEN} {TOKEN}"}, None, {401}),
    ("auth-marker", "GET", "/api/v1/certificates", {"Authorization": f"Bearer {MARK}"}, None,
     {401}),
    ("auth-7kb-token", "GET", "/api/v1/certificates",
     {"Authorization": "Bearer " + "zzmark" * 1200}, None, {401}),
    ("auth-basic", "GET", "/api/v1/certificates", {"Authorization": "Basic b3BzOnNlY3JldA=="},
     None, {401}),
    ("auth-token-scheme", "GET", "/api/v1/certificates", {"Authorization": f"Token {TOKEN}"},
     None, {401}),
    ("auth-lowercase-bearer", "GET", "/api/v1/certificates",
     {"Authorization": f"bearer {TOKEN}"}, None, {200}),
    ("auth-uppercase-bearer", "GET", "/api/v1/certificates",
     {"Authorization": f"BEARER {TOKEN}"}, None, {200}),
    ("auth-tab-separator", "GET", "/api/v1/certificates",
     {"Authorization": f"Bearer\t{TOKEN}"}, None, {200, 401}),
    ("auth-token-prefix", "GET", "/api/v1/certificates",
     {"Authorization": f"Bearer {TOKEN[:-1]}"}, None, {401}),
    ("auth-token-suffix", "GET", "/api/v1/certificates",
     {"Authorization": f"Bearer {TOKEN}x"}, None, {401}),
    ("auth-sha256-of-token", "GET", "/api/v1/certificates",
     {"Authorization": "Bearer sha256:" + hashlib.sha256(TOKEN.encode()).hexdigest()}, None,
     {401}),
    ("metrics-no-auth", "GET", "/metrics", {"Authorization": None}, None, {401}),
    ("host-marker", "GET", D + "/unknown.example.com", {"Host": MARK}, None, {404}),
    ("post-content-type-json-get", "GET", "/api/v1/certificates", JSON_CT, MARK.encode(),
     {200}),
]

ROUTES = ["/healthz", "/api/v1/certificates", "/api/v1/certificates/portal.example.org",
          "/api/v1/certificates/portal.example.org/renew",
          "/api/v1/certificates/portal.example.org/deploy", D, f"{D}/{SEEDED}",
          "/api/v1/openapi.json", "/api/v1/alerts", "/metrics"]
API_CASES += [(f"method-{m.lower()}-{r.strip('/').replace('/', '-') or 'root'}", m, r, {}, None,
               {405}) for r in ROUTES for m in ("TRACE", "OPTIONS", "PATCH")]
API_CASES += [("method-put-domains", "PUT", D, JSON_CT, _body({"domain": "a.example.com"}),
               {405})]


@pytest.mark.parametrize("method,path,headers,body,allowed", [c[1:] for c in API_CASES],
                         ids=[c[0] for c in API_CASES])
async def test_api(client, method, path, headers, body, allowed):
    sent = {**AUTH, **headers}
    sent = {k: v for k, v in sent.items() if v is not None}
    skip = ["Content-Type"] if "Content-Type" not in sent else []
    resp = await client.request(method, path, headers=sent, data=body,
                                skip_auto_headers=skip)
    answer = await resp.read()
    assert resp.status in allowed, (resp.status, answer[:300])
    assert resp.status < 500
    if resp.status >= 400:
        assert resp.content_type == "application/problem+json", resp.content_type
        doc = json.loads(answer)
        assert doc["status"] == resp.status and doc["type"].startswith("urn:certd:problem:")
        if resp.status == 405:
            assert resp.headers.get("Allow")
    assert_no_marker(answer, "\n".join(f"{k}: {v}" for k, v in resp.headers.items()))
    if path.startswith(f"{D}/{SEEDED}") and resp.status >= 400:  # a refused DELETE did nothing
        alias = await client.certd.store.get_alias(SEEDED)
        assert alias is not None and not alias.removing


def _raw(headers: bytes = b"", path: bytes = b"/api/v1/certificates",
         method: bytes = b"GET") -> bytes:
    return (method + b" " + path + b" HTTP/1.1\r\nHost: x\r\n" + headers
            + b"Connection: close\r\n\r\n")


BEARER = b"Authorization: Bearer " + TOKEN.encode() + b"\r\n"

# raw requests the aiohttp client will not send as such
RAW_CASES: list[tuple[str, bytes, set[int]]] = [
    ("auth-utf8-token", _raw("Authorization: Bearer t\u00f6k\u00e9n-ZZMARK\r\n".encode()),
     {400, 401}),
    ("auth-latin1-byte", _raw(b"Authorization: Bearer \xff\xfeZZMARK-0123456789\r\n"),
     {400, 401}),
    ("auth-del-byte", _raw(BEARER[:-2] + b"\x7f\r\n"), {400, 401}),
    ("auth-twice", _raw(BEARER + b"Authorization: Bearer ZZMARK\r\n"), {200, 400, 401}),
    ("auth-10kb-token", _raw(b"Authorization: Bearer " + b"ZZMARK" * 1700 + b"\r\n"),
     {400, 401, 431}),
    ("domain-path-10kb", _raw(BEARER, b"/api/v1/domains/" + b"ZZMARK" * 1700),
     {400, 404, 414}),
    ("method-marker", _raw(BEARER, b"/api/v1/domains", b"ZZMARK"), {400, 405}),
    ("method-lowercase", _raw(BEARER, b"/api/v1/domains", b"get"), {400, 401, 405}),
    ("path-raw-utf8", _raw(BEARER, "/api/v1/domains/\u043f\u0440\u0438\u043c\u0435\u0440."
                                   "\u0440\u0444".encode()), {400, 404}),
]


@pytest.mark.parametrize("data,allowed", [c[1:] for c in RAW_CASES],
                         ids=[c[0] for c in RAW_CASES])
async def test_api_raw(client, data, allowed):
    status, head, body = await raw_request(client, data)
    assert status in allowed, (status, head[:300], body[:300])
    assert_no_marker(head, body)
    if status in (401, 404):  # answered by certd itself: its problem document
        assert b"application/problem+json" in head.lower()


# ------------------------------------------------------------------------------------------
# 3. the tokens file
# ------------------------------------------------------------------------------------------

SECRET = "zzmark-secret-token-0123456789"

TOKEN_CASES: list[tuple[str, str]] = [
    ("too-many-words", f"ops {SECRET} admin extra junk"),
    ("scope-marker", f"ops {SECRET} {MARK}"),
    ("name-twice", f"ops {SECRET}\nops {SECRET}x"),
    ("name-unicode", f"op\u00e9 {SECRET}"),
    ("name-escape", f"op\x1b[2J {SECRET}"),
    ("name-bidi", f"op\u202e {SECRET}"),
    ("name-65-chars", f"{'n' * 65} {SECRET}"),
    ("name-1mb", f"{'n' * 1_000_000} {SECRET}"),
    ("name-bom", f"\ufeffops {SECRET}"),
    ("name-nul", f"o\x00ps {SECRET}"),
    ("name-marker", f"{MARK} {SECRET}"),
    ("short-token", "ops zzmark-short"),
    ("short-token-alone", "ZZMARK"),
    ("sha256-63-hex", "ops sha256:" + "a" * 63),
    ("sha256-65-hex", "ops sha256:" + "a" * 65),
    ("sha256-non-hex", "ops sha256:" + "g" * 64),
    ("sha256-empty", "ops sha256:"),
    ("sha256-marker", "ops sha256:ZZMARK" + "0" * 58),
    ("sha256-space", "ops sha256: " + "a" * 64),
    ("token-with-spaces", f"ops {SECRET} with spaces"),
    ("line-separator", f"ops zzmark\u2028{SECRET}"),
    ("garbage-line-1mb", "ZZMARK " * 150_000),
    ("tab-separated", f"ops\t{SECRET}\tx\ty"),
    ("one-good-one-bad", f"ci {SECRET}x\nops {MARK}"),
    ("token-escape", f"ops zzmark\x1b[2J{SECRET}"),
    ("token-nul", f"ops zzmark\x00{SECRET}"),
    ("token-non-ascii", f"ops zzmark\u00e9{SECRET}"),
    ("token-bidi", f"ops zzmark\u202e{SECRET}"),
]


def _assert_token_error(exc: ConfigError) -> None:
    text = str(exc)
    assert_no_marker(text)
    assert SECRET.lower() not in text.lower()
    assert_clean_line(text)


@pytest.mark.parametrize("text", [c[1] for c in TOKEN_CASES], ids=[c[0] for c in TOKEN_CASES])
def test_tokens(text):
    with pytest.raises(ConfigError) as caught:
        api_tokens.parse(text, "tokens")
    _assert_token_error(caught.value)


@pytest.mark.parametrize("data", [
    b"ops \xff\xfezzmark-secret-token-0123456789\n",
    "ops zzmark-secret-token-0123456789\n".encode("utf-16"),
    "op\u00e9 zzmark-secret-token-0123456789\n".encode("latin-1"),
], ids=["invalid-utf8", "utf16", "latin1-name"])
def test_tokens_file_bytes(tmp_path, data):
    path = tmp_path / "tokens"
    path.write_bytes(data)
    path.chmod(0o600)
    with pytest.raises(ConfigError) as caught:
        api_tokens.load_or_create(path)
    _assert_token_error(caught.value)


# ------------------------------------------------------------------------------------------
# 4. the CLI
# ------------------------------------------------------------------------------------------

CLI_CASES: list[tuple[str, list[str], int]] = [
    ("unknown-command", ["frobnicate"], 2),
    ("unknown-command-escape", ["\x1b[2Jfrob"], 2),
    ("no-command", [], 2),
    ("renew-unknown", ["renew", "ghost"], 1),
    ("renew-escape-name", ["renew", "gh\x1b[2Jost"], 1),
    ("renew-bidi-name", ["renew", "gh\u202eost"], 1),
    ("renew-newline-name", ["renew", "ghost\ncertd: all good"], 1),
    ("renew-nothing", ["renew"], 1),
    ("renew-all-and-names", ["renew", "--all", "portal.example.org"], 1),
    ("renew-10k-names", ["renew", *[f"ghost{i:05d}" + "x" * 90 for i in range(10_000)]], 1),
    ("renew-1mb-name", ["renew", "x" * 1_000_000], 1),
    ("renew-empty-name", ["renew", ""], 1),
    ("renew-option-as-name", ["renew", "--", "--all"], 1),
    ("deploy-no-names", ["deploy"], 2),
    ("deploy-unknown", ["deploy", "ghost"], 1),
    ("check-unknown", ["check", "ghost\x1b[2J"], 1),
    ("log-level-garbage", ["--log-level", "trace", "status"], 2),
    ("domains-no-action", ["domains"], 2),
    ("domains-unknown-action", ["domains", "frobnicate"], 2),
]


def _run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    try:
        code = cli.main(argv)
    except SystemExit as exc:  # argparse
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("argv,code", [c[1:] for c in CLI_CASES], ids=[c[0] for c in CLI_CASES])
def test_cli(tmp_path, capsys, argv, code):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(api_config(tmp_path)))
    got, out, err = _run_cli(["-c", str(path), *argv], capsys)
    assert got == code, (got, out[-300:], err[-300:])
    assert "Traceback" not in err
    assert_clean_line(err.strip() if code == 1 else err.strip().splitlines()[-1] if err else "")
    if code == 1:
        assert err.strip(), "a failure says why"
        assert err.strip().startswith("certd:") or ": " in err


# `certd domains ...` against the API in-process (the CLI runs in a worker thread)
DOMAINS_CLI_CASES: list[tuple[str, list[str]]] = [
    ("add-marker", ["add", MARK]),
    ("add-escape", ["add", "a\x1b[2J.example.com"]),
    ("add-10kb", ["add", "zzmark" * 1700]),
    ("add-frontends-garbage", ["add", "ok.example.com", "--frontends", "ZZMARK,,"]),
    ("show-traversal", ["show", "../certificates/portal.example.org"]),
    ("show-encoded-traversal", ["show", "%2e%2e%2fcertificates%2fportal.example.org"]),
    ("show-query", ["show", "x.example.com?limit=1"]),
    ("show-nul", ["show", "a\x00b.example.com"]),
    ("show-unicode", ["show", "\u043f\u0440\u0438\u043c\u0435\u0440.\u0440\u0444"]),
    ("remove-query-injection", ["remove", f"{SEEDED}?revoke=true"]),
    ("remove-fragment", ["remove", f"{SEEDED}#x"]),
    ("remove-traversal", ["remove", f"../domains/{SEEDED}/../{SEEDED}x"]),
]


@pytest.mark.parametrize("argv", [c[1] for c in DOMAINS_CLI_CASES],
                         ids=[c[0] for c in DOMAINS_CLI_CASES])
async def test_cli_domains(client, capsys, monkeypatch, argv):
    monkeypatch.setenv("CERTD_API_TOKEN", TOKEN)
    code, out, err = await asyncio.to_thread(
        _run_cli, ["-c", str(client.config_path), "domains", *argv], capsys)
    assert code == 1, (code, out[-300:], err[-300:])
    assert "Traceback" not in err
    assert_clean_line(err.strip())
    assert_no_marker(out)
    alias = await client.certd.store.get_alias(SEEDED)  # nothing reached another resource
    assert alias is not None and not alias.removing


# ------------------------------------------------------------------------------------------
# 5. what a node sends back
# ------------------------------------------------------------------------------------------

TARGET = Target(frontend="web", node="fe1", address="127.0.0.2", certificate="portal",
                path="/srv/certs/portal", check=None, reload="true", timeout=5.0)
CERT_STUB = SimpleNamespace(serial="0abc", cert_pem="C\n", chain_pem="I\n", key_pem="K\n",
                            fullchain_pem="C\nI\n")
BIG = "x" * (10 << 20)


def sid(step: str) -> str:
    return f"cmd_|-certd-portal-{step}_|-script_|-run"


def ok_state(**extra) -> dict:
    return {"result": True, "comment": "done", "changes": {}, **extra}


def good_states() -> dict:
    return {"file_|-certd-portal-privkey.pem_|-/srv_|-managed": ok_state(),
            sid("switch"): ok_state(), sid("reload"): ok_state()}


SALT_ANSWERS: list[tuple[str, Any]] = [
    ("none", None),
    ("string", "ZZMARK minion says no"),
    ("number", 5),
    ("list", []),
    ("ret-null", {"ret": None, "retcode": 0}),
    ("ret-10mb-string", {"ret": BIG, "retcode": 0}),
    ("ret-list", {"ret": [], "retcode": 0}),
    ("ret-empty-retcode-0", {"ret": {}, "retcode": 0}),
    ("ret-junk-states-retcode-0", {"ret": {"junk": "string", "x": 5}, "retcode": 0}),
    ("retcode-string", {"ret": good_states(), "retcode": "0"}),
    ("retcode-null", {"ret": good_states(), "retcode": None}),
    ("retcode-inf", {"ret": good_states(), "retcode": float("inf")}),
    ("retcode-true", {"ret": good_states(), "retcode": True}),
    ("retcode-list", {"ret": good_states(), "retcode": [0]}),
    ("retcode-missing", {"ret": good_states()}),
    ("result-string-true", {"ret": {**good_states(), sid("switch"): ok_state(result="True")},
                            "retcode": 1}),
    ("result-null", {"ret": {**good_states(), sid("reload"): ok_state(result=None)},
                     "retcode": 1}),
    ("comment-10mb", {"ret": {sid("switch"): {"result": False, "comment": BIG}}, "retcode": 1}),
    ("comment-escapes", {"ret": {sid("switch"): {"result": False,
                                                 "comment": "\x1b[2J\x07\u202eevil\r"}},
                         "retcode": 1}),
    ("comment-list", {"ret": {sid("check"): {"result": False, "comment": ["a", {"b": 1}]}},
                      "retcode": 2}),
    ("comment-null", {"ret": {sid("check"): {"result": False, "comment": None}}, "retcode": 2}),
    ("changes-string", {"ret": {sid("switch"): {"result": False, "changes": "garbage"}},
                        "retcode": 1}),
    ("changes-list", {"ret": {sid("switch"): {"result": False, "changes": [1, 2]}},
                      "retcode": 1}),
    ("changes-stdout-10mb", {"ret": {**good_states(), sid("reload"): ok_state(
        changes={"stdout": BIG})}, "retcode": 1}),
    ("changes-stdout-list", {"ret": {sid("reload"): {"result": False,
                                                     "changes": {"stdout": [BIG[:10]]}}},
                             "retcode": 1}),
    ("100k-failed-states", {"ret": {f"file_|-s{i}_|-x_|-managed": {"result": False,
                                                                  "comment": "no"}
                                    for i in range(100_000)}, "retcode": 1}),
    ("state-not-dict", {"ret": {sid("switch"): ["result", True]}, "retcode": 1}),
    ("rollback-only", {"ret": {sid("rollback"): {"result": "yes", "changes": {"x": 1}}},
                       "retcode": 1}),
    ("state-id-10kb", {"ret": {sid("switch" + "x" * 10_000): {"result": False}}, "retcode": 1}),
    ("file-state-failed", {"ret": {**good_states(), "file_|-certd-portal-cert.pem_|-/x_|-managed":
                                   {"result": False, "comment": "disk full"}}, "retcode": 0}),
]


def assert_bounded_result(result: DeployResult) -> None:
    assert isinstance(result, DeployResult)
    assert not result.ok
    assert_clean_line(result.message, limit=600)
    assert len(result.output) <= 64 * 1024


@pytest.mark.parametrize("answer", [c[1] for c in SALT_ANSWERS], ids=[c[0] for c in SALT_ANSWERS])
def test_salt_state_result(answer):
    assert_bounded_result(salt._state_result(TARGET, answer, CERT_STUB))


SALT_LOGINS: list[tuple[str, Any]] = [
    ("none", None), ("string", "token"), ("list", []), ("empty", {}),
    ("return-empty", {"return": []}), ("return-empty-object", {"return": [{}]}),
    ("token-number", {"return": [{"token": 5}]}), ("token-empty", {"return": [{"token": ""}]}),
    ("return-string", {"return": "abc"}), ("return-mapping", {"return": {"0": {"token": "x"}}}),
    ("token-crlf", {"return": [{"token": "abc\r\nX-Evil: 1"}]}),
    ("token-10mb", {"return": [{"token": BIG}]}),
    ("token-non-ascii", {"return": [{"token": "t\u00f6k\u00e9n"}]}),
    ("token-list", {"return": [{"token": ["a"]}]}),
    ("return-nested-list", {"return": [["token"]]}),
    ("token-space", {"return": [{"token": "abc def"}]}),
]


@pytest.mark.parametrize("doc", [c[1] for c in SALT_LOGINS], ids=[c[0] for c in SALT_LOGINS])
def test_salt_login_token(doc):
    assert salt._token(doc) is None


def _fake_salt(login: Any, run: Any, *, status: int = 200) -> web.Application:
    """salt-api answering /login with `login` and / with `run` (bytes go out as they are)."""

    def answer(doc: Any, code: int = 200) -> web.Response:
        body = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
        return web.Response(body=body, status=code, content_type="application/json")

    async def do_login(request):
        return answer(login)

    async def do_run(request):
        return answer(run, status)

    app = web.Application()
    app.router.add_post("/login", do_login)
    app.router.add_post("/", do_run)
    return app


GOOD_LOGIN = {"return": [{"token": "salt-token-0123"}]}
SALT_HTTP_CASES: list[tuple[str, str, Any, Any, int]] = [
    ("login-not-json", "deploy", b"<html>ZZMARK</html>", None, 200),
    ("login-token-crlf", "deploy", {"return": [{"token": "abc\r\nX-Evil: 1"}]}, None, 200),
    ("login-token-10mb", "deploy", {"return": [{"token": "t" * (1 << 20)}]}, None, 200),
    ("login-deep-json", "deploy", b"[" * 100_000, None, 200),
    ("run-not-json", "deploy", GOOD_LOGIN, b"ZZMARK<html>", 200),
    ("run-string", "deploy", GOOD_LOGIN, "ZZMARK", 200),
    ("run-return-string", "deploy", GOOD_LOGIN, {"return": "x"}, 200),
    ("run-return-empty", "deploy", GOOD_LOGIN, {"return": []}, 200),
    ("run-return-list-in-list", "deploy", GOOD_LOGIN, {"return": [[]]}, 200),
    ("run-minion-string", "deploy", GOOD_LOGIN, {"return": [{"fe1": "ZZMARK"}]}, 200),
    ("run-minion-empty-ok", "deploy", GOOD_LOGIN, {"return": [{"fe1": {"ret": {},
                                                                       "retcode": 0}}]}, 200),
    ("run-deep-json", "deploy", GOOD_LOGIN, b"[" * 100_000, 200),
    ("run-17mb", "deploy", GOOD_LOGIN, b'"' + b"x" * (17 << 20) + b'"', 200),
    ("run-http-500", "deploy", GOOD_LOGIN, "ZZMARK traceback", 500),
    ("run-http-401-always", "deploy", GOOD_LOGIN, None, 401),
    ("rollback-stderr-null", "roll_back", GOOD_LOGIN,
     {"return": [{"fe1": {"ret": {"retcode": 1, "stderr": None, "stdout": None}}}]}, 200),
    ("rollback-stderr-list", "roll_back", GOOD_LOGIN,
     {"return": [{"fe1": {"ret": {"retcode": 1, "stderr": ["x"], "stdout": 5}}}]}, 200),
    ("rollback-stdout-10mb", "roll_back", GOOD_LOGIN,
     {"return": [{"fe1": {"ret": {"retcode": 1, "stderr": "\x1b[2J" + BIG, "stdout": BIG}}}]},
     200),
    ("rollback-retcode-string", "roll_back", GOOD_LOGIN,
     {"return": [{"fe1": {"ret": {"retcode": "0"}}}]}, 200),
]


@pytest.mark.parametrize("call,login,run,status", [c[1:] for c in SALT_HTTP_CASES],
                         ids=[c[0] for c in SALT_HTTP_CASES])
async def test_salt_api_answers(tmp_path, call, login, run, status):
    server = TestServer(_fake_salt(login, run, status=status))
    await server.start_server()
    (tmp_path / "password").write_text("pw\n")
    deployer = salt.SaltDeployer(SaltDeployerConfig(
        type="salt", path="/srv/certs/{certificate}", url=f"http://127.0.0.1:{server.port}",
        username="certd", password_file=tmp_path / "password", timeout="5s", mode="push"))
    target = Target(**{**TARGET.__dict__, "minion": "fe1"})
    try:
        if call == "deploy":
            results = await deployer.deploy(placements([target], CERT_STUB))
        else:
            results = await deployer.roll_back([target])
    finally:
        await deployer.close()
        await server.close()
    assert len(results) == 1
    assert_bounded_result(results[0])


def _py(code: str) -> str:
    return shlex.join([sys.executable, "-c", code])


COMMAND_CASES: list[tuple[str, str, float]] = [
    ("nul-bytes", _py("import sys; sys.stdout.buffer.write(b'a\\x00b' * 5000)"), 10),
    ("invalid-utf8", _py("import sys; sys.stdout.buffer.write(b'\\xff\\xfe\\xfd' * 5000)"), 10),
    ("20mb-output", _py("import sys; sys.stdout.write('x' * (20 << 20))"), 20),
    ("one-10mb-line-and-exit-1", _py("import sys; sys.stdout.write('y' * (10 << 20)); "
                                     "sys.exit(1)"), 20),
    ("escape-sequences", _py("print('\\x1b[2J\\x1b]0;pwned\\x07\\u202eevil')"), 10),
    ("exit-255", _py("import sys; print('ZZMARK'); sys.exit(255)"), 10),
    ("killed-by-signal", _py("import os, signal; os.kill(os.getpid(), signal.SIGKILL)"), 10),
    ("nul-in-command", "echo a\x00b", 10),
    ("unbalanced-quote", "echo 'unterminated", 10),
    ("empty", "   ", 10),
    ("missing-binary", "/nonexistent/zzmark-binary --flag", 10),
    ("directory", "/", 10),
    ("argument-200kb", "echo " + "a" * 200_000, 10),
    ("timeout", _py("import time; time.sleep(30)"), 0.5),
    ("grandchild-keeps-pipe", _py("import subprocess, sys; subprocess.Popen([sys.executable, "
                                  "'-c', 'import time; time.sleep(30)']); print('parent done')"),
     1.5),
]


@pytest.mark.parametrize("command,timeout", [c[1:] for c in COMMAND_CASES],
                         ids=[c[0] for c in COMMAND_CASES])
async def test_command_output(command, timeout):
    started = time.monotonic()
    result = await local.run_command(command, timeout)
    assert isinstance(result, local.CommandResult)
    assert len(result.output) <= local.OUTPUT_LIMIT
    assert len(result.describe()) <= len(command) + local.OUTPUT_LIMIT + 100
    assert time.monotonic() - started < timeout + 10
    gc.collect()  # a timed-out child's pipe transports: closed while this loop still runs


async def test_command_output_is_not_held_in_memory():
    """A node command printing 50 MB costs certd its first 8 KiB, not 50 MB."""
    tracemalloc.start()
    try:
        result = await local.run_command(
            _py("import sys; sys.stdout.write('x' * (50 << 20))"), 30)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert result.ok and len(result.output) == local.OUTPUT_LIMIT
    assert peak < 4 << 20, f"{peak >> 20} MB"


# TLS peers that are not what they should be
async def _serve(handler) -> tuple[asyncio.AbstractServer, int]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


def _garbage(data: bytes, *, read_first: bool = False, close: bool = True):
    async def handler(reader, writer):
        try:
            if read_first:
                await reader.read(4096)
            writer.write(data)
            await writer.drain()
            if not close:
                await asyncio.sleep(30)
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()
    return handler


def _silent():
    async def handler(reader, writer):
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            pass
        finally:
            writer.close()
    return handler


GARBAGE_PEERS: list[tuple[str, Any]] = [
    ("garbage-first", _garbage(MARK.encode() * 100)),
    ("close-at-once", _garbage(b"")),
    ("half-server-hello", _garbage(b"\x16\x03\x03\x00\x50\x02\x00\x00", read_first=True)),
    ("silent", _silent()),
    ("http-answer", _garbage(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 6\r\n\r\nZZMARK",
                             read_first=True)),
    ("tls-alert", _garbage(b"\x15\x03\x03\x00\x02\x02\x28", read_first=True)),
    ("huge-record-length", _garbage(b"\x16\x03\x03\xff\xff" + b"ZZMARK" * 1000,
                                    read_first=True, close=False)),
    ("1mb-garbage", _garbage(os.urandom(1 << 20), read_first=True)),
]


@pytest.mark.parametrize("handler", [c[1] for c in GARBAGE_PEERS],
                         ids=[c[0] for c in GARBAGE_PEERS])
async def test_tls_peer_garbage(handler):
    server, port = await _serve(handler)
    try:
        result = await probe.probe(ProbeTarget("a.example.org", "127.0.0.1", port, "web/fe1"),
                                   timeout=1.0, protocols=True, hsts=True)
        ok, seen = await verify.wait_serving("127.0.0.1", port, "a.example.org", "0abc", 0.6)
    finally:
        server.close()
    assert result.error is not None and result.chain == ()
    assert_clean_line(result.error, limit=500)
    assert_no_marker(result.error, seen)
    assert not ok
    assert_clean_line(seen, limit=500)
    findings = checks.evaluate(result, expected=None, thresholds=_thresholds(), trust=None,
                               now=utcnow())
    assert [f.check for f in findings] == ["unreachable"]


def _thresholds() -> checks.Thresholds:
    return checks.Thresholds(dt.timedelta(days=28), dt.timedelta(days=7),
                             dt.timedelta(minutes=15), dt.timedelta(days=180))


def _odd_certificate(kind: str) -> tuple[bytes, bytes]:
    """(cert PEM, key PEM) of a self-signed certificate with something odd about it."""
    from cryptography.hazmat.primitives import serialization
    key = ec.generate_private_key(ec.SECP256R1())
    names = ["a.example.org"]
    not_before = dt.datetime(2020, 1, 1, tzinfo=dt.UTC)
    not_after = dt.datetime(2100, 1, 1, tzinfo=dt.UTC)
    if kind == "5000-sans":
        names += [f"n{i}.zzmark.example.org" for i in range(5000)]
    elif kind == "long-label-sans":
        names += ["l" * 63 + f".n{i}." + "m" * 63 + ".example.org" for i in range(200)]
    elif kind == "expired-in-1950":
        not_before = dt.datetime(1950, 1, 1, tzinfo=dt.UTC)
        not_after = dt.datetime(1950, 1, 2, tzinfo=dt.UTC)
    elif kind == "year-9999":
        not_after = dt.datetime(9999, 12, 31, tzinfo=dt.UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "\u202eZZMARK\x1b[2J")])
    builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(not_before).not_valid_after(not_after)
               .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]),
                              critical=False))
    cert = builder.sign(key, hashes.SHA256())
    return (cert.public_bytes(serialization.Encoding.PEM),
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()))


def _tls_server_context(tmp_path: Path, kind: str) -> ssl.SSLContext:
    cert, key = _odd_certificate(kind)
    (tmp_path / "cert.pem").write_bytes(cert)
    (tmp_path / "key.pem").write_bytes(key)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    return ctx


# what each odd-certificate server answers to the HSTS check's GET /
HSTS_ANSWERS = {
    "5000-sans": b"\x00\xff" * 10000,  # a ~150 kB certificate: OpenSSL may refuse it
    "long-label-sans": b"HTTP/1.1 200 OK\r\n" + b"X-Zzmark: " + b"z" * (1 << 20) + b"\r\n\r\n",
    "expired-in-1950": b"HTTP/1.1 200 OK\r\nStrict-Transport-Security: max-age=\xd9\xa3\r\n\r\n",
    "year-9999": b"HTTP/1.1 200 OK\r\nStrict-Transport-Security: max-age=" + b"9" * 5000
                 + b"\r\n\r\n",
}


@pytest.mark.parametrize("kind", list(HSTS_ANSWERS))
async def test_tls_peer_odd_certificate(tmp_path, kind):
    ctx = _tls_server_context(tmp_path, kind)

    async def handler(reader, writer):
        try:
            await reader.read(4096)
            writer.write(HSTS_ANSWERS[kind])
            await writer.drain()
        except (ConnectionError, ssl.SSLError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handler, "127.0.0.1", 0, ssl=ctx)
    port = server.sockets[0].getsockname()[1]
    try:
        result = await probe.probe(ProbeTarget("a.example.org", "127.0.0.1", port, "web/fe1"),
                                   timeout=5.0, protocols=False, hsts=True)
        ok, seen = await verify.wait_serving("127.0.0.1", port, "a.example.org", "0abc", 1.0)
    finally:
        server.close()
    # read as served, or refused by the TLS client as too large: either way a result
    assert result.chain or result.error
    if result.error:
        assert_clean_line(result.error, limit=500)
    assert not ok
    assert_clean_line(seen, limit=500)
    findings = checks.evaluate(result, expected=checks.Expected("0abc", None),
                               thresholds=_thresholds(), trust=checks.load_trust_store(None),
                               now=utcnow())
    assert findings  # self-signed, stale or unreachable: something to say, nothing raised
    for f in findings:
        assert len(f.message) <= 2000
