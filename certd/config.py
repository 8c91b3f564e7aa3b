"""YAML -> typed, validated configuration. Every error names its key path.

Knows nothing of I/O beyond reading the one file, and nothing of aiohttp.
"""

from __future__ import annotations

import ipaddress
import os
import re
import string
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

from certd import names
from certd.errors import ConfigError
from certd.issuance import profiles
from certd.store import sqlite_path, storage_problem, storage_takes_password
from certd.text import one_line

DEFAULT_PATH = Path("/etc/certd/config.yaml")
TEMPLATE_FIELDS = frozenset({"node", "address", "certificate"})
KEY_TYPES = ("ec-p256", "ec-p384", "rsa-2048", "rsa-3072", "rsa-4096")

_DURATION = re.compile(r"^\s*(\d+)\s*([dhms])\s*$")
_UNIT_SECONDS = {"d": 86400, "h": 3600, "m": 60, "s": 1}
_SLUG = re.compile(r"^[a-z0-9](?:[a-z0-9._-]{0,62})$")
_URL = re.compile(r"https?://[^\s/\x00-\x1f\x7f]+[^\s\x00-\x1f\x7f]*")
# a bare address, as the SMTP envelope and the ACME account take it: no display name, no
# whitespace, no second address (so no header or recipient injection)
_ATOM = r"[^@\s<>,;:\"\x00-\x1f\x7f]+"
_MAILBOX = re.compile(rf"{_ATOM}@{_ATOM}")  # e-mail notifier: root@localhost will do
_EMAIL = re.compile(rf"{_ATOM}@{_ATOM}\.{_ATOM}")  # ACME account: a domain with a dot


def _show(value: Any, limit: int = 60) -> str:
    """A bad value as an error message quotes it: repr (control and bidi characters escaped),
    cut to `limit` characters so a hostile or huge value never floods the message."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def parse_duration(value: Any) -> timedelta:
    """'30d', '6h', '90m', '45s' (or a number of seconds) -> timedelta."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, bool):
        raise ValueError("expected a duration like 30d, 6h, 90m or 45s")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str) and (m := _DURATION.match(value)):
        seconds = int(m.group(1)) * _UNIT_SECONDS[m.group(2)]
    else:
        raise ValueError(f"expected a duration like 30d, 6h, 90m or 45s, got {_show(value)}")
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    try:
        return timedelta(seconds=seconds)
    except (OverflowError, ValueError):  # inf, nan, or beyond timedelta's range
        raise ValueError(f"not a usable duration: {_show(value)}") from None


Duration = Annotated[timedelta, BeforeValidator(parse_duration)]


def _check_template(value: str) -> str:
    try:
        parts = [(f, spec, conv) for _, f, spec, conv in string.Formatter().parse(value)
                 if f is not None]
    except ValueError as exc:
        raise ValueError(f"bad template: {exc}") from None
    if any(spec or conv for _, spec, conv in parts):
        raise ValueError("placeholders take no conversion or format spec: write {node}, "
                         "{address} or {certificate}")
    fields = {f for f, _, _ in parts}
    unknown = fields - TEMPLATE_FIELDS
    if unknown:
        raise ValueError(
            f"unknown placeholder {_show('{' + sorted(unknown)[0] + '}')}; allowed: "
            + ", ".join("{" + f + "}" for f in sorted(TEMPLATE_FIELDS))
        )
    return value


Template = Annotated[str, AfterValidator(_check_template)]


def _check_slug(value: str) -> str:
    if not _SLUG.match(value):
        raise ValueError(
            "must be 1-63 characters of lower-case letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return value


Slug = Annotated[str, AfterValidator(_check_slug)]
# an ACME profile name (certd/issuance/profiles.py), checked against the CA's directory later
ProfileName = Annotated[str, AfterValidator(profiles.check_name)]


def _check_listen(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if (not sep or not re.fullmatch(r"[A-Za-z0-9.:\[\]_-]{1,255}", host)
            or not re.fullmatch(r"[0-9]{1,5}", port) or not 0 < int(port) < 65536):
        raise ValueError(f"expected HOST:PORT, got {_show(value)}")
    return value


Listen = Annotated[str, AfterValidator(_check_listen)]


_CREDENTIAL = re.compile(r"\$(?:CREDENTIALS_DIRECTORY|\{CREDENTIALS_DIRECTORY\})/(.*)",
                         re.DOTALL)
_CREDENTIAL_NAME = re.compile(r"[A-Za-z0-9._@+-]{1,255}")


def _secret_path(value: Any) -> Any:
    """`$CREDENTIALS_DIRECTORY/NAME` (or `${CREDENTIALS_DIRECTORY}/NAME`): the file NAME in the
    directory systemd fills from the unit's LoadCredential= lines, expanded from this
    process's environment when the config is loaded. Any other path is taken as written."""
    if not isinstance(value, str) or not value.startswith("$"):
        return value
    m = _CREDENTIAL.fullmatch(value)
    if m is None:
        raise ValueError("only $CREDENTIALS_DIRECTORY/NAME is expanded (systemd's "
                         "LoadCredential=); write any other path out")
    name = m.group(1)
    if not _CREDENTIAL_NAME.fullmatch(name) or ".." in name or name == ".":
        raise ValueError(f"{_show(name)}: not a credential name (letters, digits and ._@+-; "
                         "no '/' or '..')")
    directory = os.environ.get("CREDENTIALS_DIRECTORY", "")
    if not directory.startswith("/"):
        raise ValueError("$CREDENTIALS_DIRECTORY is not set (or not an absolute path): run "
                         "certd under its systemd unit, which loads the credentials, or set it "
                         "to where they are kept (e.g. CREDENTIALS_DIRECTORY=/etc/credstore)")
    return str(Path(directory) / name)


# a file holding a secret (API tokens, a password, a key), which may be a systemd credential
SecretPath = Annotated[Path, BeforeValidator(_secret_path)]


def split_listen(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    return host.strip("[]"), int(port)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _hmac_key(v: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_-]{2,1024}={0,2}", v) or len(v.rstrip("=")) % 4 == 1:
        raise ValueError("must be the base64url key the CA gave (not quoted here: it is "
                         "a secret)")
    return v


class Eab(_Model):
    kid: str = Field(min_length=1, max_length=1024, pattern=r"^[\x21-\x7e]+$")
    hmac_key: str | None = Field(default=None, min_length=1, repr=False)
    hmac_key_file: SecretPath | None = None  # the key in a file instead (a credential)

    @field_validator("hmac_key")
    @classmethod
    def _base64url(cls, v: str | None) -> str | None:
        return v if v is None else _hmac_key(v)

    @model_validator(mode="after")
    def _one_key(self) -> Eab:
        if (self.hmac_key is None) == (self.hmac_key_file is None):
            raise ValueError("give the key as hmac_key or hmac_key_file (one of them)")
        return self

    def secret(self, where: str = "acme.eab") -> str:
        """The HMAC key: `hmac_key`, or what `hmac_key_file` holds (read when certd opens).
        `where`: this key's path in the config, for the error."""
        if self.hmac_key is not None:
            return self.hmac_key
        path = self.hmac_key_file
        try:
            return _hmac_key(path.read_text(encoding="utf-8").strip())
        except OSError as exc:
            problem = f"cannot read it: {exc.strerror or exc}"
        except (UnicodeDecodeError, ValueError):
            problem = "must hold the base64url key the CA gave (not quoted: it is a secret)"
        raise ConfigError(str(path), [f"{where}.hmac_key_file: {problem}"])


_CAA_IDENTITY = re.compile(r"^(?=.{1,253}$)[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
                           r"(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*$")
_ISSUER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,62}$")


def _directory_url(v: str) -> str:
    if not _URL.fullmatch(v):
        raise ValueError("must be an http(s) URL (no spaces or control characters)")
    return v


def _account_email(v: str) -> str:
    if not _EMAIL.fullmatch(v):
        raise ValueError(f"not an e-mail address: {_show(v)}")
    return v


class IssuerConfig(_Model):
    """One CA of `acme.issuers` (certd/issuance/issuers.py): its directory, account and the
    names it goes by in CAA records. Orders go to the first healthy one with budget."""

    name: str | None = None  # a label for status and metrics; default: the directory's host
    directory: Annotated[str, AfterValidator(_directory_url)]
    email: Annotated[str, AfterValidator(_account_email)] | None = None
    ca_bundle: Path | None = None
    eab: Eab | None = None
    caa_identities: list[str] = Field(min_length=1)  # RFC 8659 issuer domain names
    budget: BudgetConfig | None = None  # default: renewal.budget

    @field_validator("name")
    @classmethod
    def _name(cls, v: str | None) -> str | None:
        if v is not None and not _ISSUER_NAME.fullmatch(v):
            raise ValueError("must be 1-63 letters, digits or ._:- (starting with a letter "
                             f"or digit), got {_show(v)}")
        return v

    @field_validator("caa_identities")
    @classmethod
    def _identities(cls, v: list[str]) -> list[str]:
        out = []
        for item in v:
            if not isinstance(item, str) or not _CAA_IDENTITY.fullmatch(item.lower().rstrip(".")):
                raise ValueError(f"not a CA's domain name (as in a CAA issue record): "
                                 f"{_show(item)}")
            out.append(item.lower().rstrip("."))
        return list(dict.fromkeys(out))

    @property
    def label(self) -> str:
        """The name shown in status, events and metrics."""
        if self.name:
            return self.name
        host = self.directory.split("://", 1)[1].split("/", 1)[0]
        return host.rsplit("@", 1)[-1]


ISSUER_KEYS = ("directory", "email", "ca_bundle", "eab", "caa_identities")  # single form


class AcmeConfig(_Model):
    directory: str = "https://acme-v02.api.letsencrypt.org/directory"
    email: str | None = None
    ca_bundle: Path | None = None
    key_type: Literal["ec-p256", "ec-p384", "rsa-2048", "rsa-3072", "rsa-4096"] = "ec-p256"
    eab: Eab | None = None
    timeout: Duration = timedelta(seconds=30)  # one HTTP request to the CA
    order_timeout: Duration = timedelta(minutes=5)  # whole order, validation included
    reuse_key: bool = False  # a renewal keeps the certificate's key (the account key always stays)
    ari: bool = True  # follow the CA's renewal windows (RFC 9773) when its directory offers them
    caa_identities: list[str] = Field(default_factory=lambda: ["letsencrypt.org"])  # RFC 8659
    # the ACME profile every order asks for unless its certificate names one (e.g. Let's
    # Encrypt's classic, tlsserver, shortlived); checked against the CA's directory
    profile: ProfileName | None = None
    # several CAs in order, each with its own account and budget (instead of the single form
    # above: directory, email, ca_bundle, eab, caa_identities); certd/issuance/issuers.py
    issuers: list[IssuerConfig] | None = None
    # how long a CA that was down, answered 5xx or rateLimited is skipped (unless its
    # Retry-After says otherwise) before new orders try it again
    issuer_cooldown: Duration = timedelta(minutes=5)

    def issuer_list(self) -> list[IssuerConfig]:
        """The CAs in order: `issuers`, or the single form as one."""
        if self.issuers is not None:
            return list(self.issuers)
        return [IssuerConfig.model_construct(  # checked as acme.* already
            name=None, directory=self.directory, email=self.email, ca_bundle=self.ca_bundle,
            eab=self.eab, caa_identities=list(self.caa_identities), budget=None)]

    def issuer_problems(self) -> list[str]:
        """What is wrong with `issuers` as a whole (each entry is checked on its own)."""
        if self.issuers is None:
            return []
        if not self.issuers:
            return ["acme.issuers: empty; list at least one CA, or remove the key and give "
                    "acme.directory"]
        problems = [f"acme.{key}: give it in each acme.issuers entry (acme.issuers replaces "
                    "the single acme.directory form; not both)"
                    for key in ISSUER_KEYS if key in self.model_fields_set]
        seen: dict[str, int] = {}
        labels: dict[str, int] = {}
        for i, issuer in enumerate(self.issuers):
            key = issuer.directory.rstrip("/")
            if key in seen:
                problems.append(f"acme.issuers[{i}].directory: the same CA as "
                                f"acme.issuers[{seen[key]}]")
                continue
            seen[key] = i
            if issuer.label in labels:
                problems.append(f"acme.issuers[{i}].name: {_show(issuer.label)} is also the "
                                f"name of acme.issuers[{labels[issuer.label]}] (give each a "
                                "distinct name)")
            labels.setdefault(issuer.label, i)
        return problems

    @field_validator("directory")
    @classmethod
    def _url(cls, v: str) -> str:
        return _directory_url(v)

    @field_validator("email")
    @classmethod
    def _email(cls, v: str | None) -> str | None:
        return v if v is None else _account_email(v)


class ListenerLimits(_Model):
    """What one listener grants a client: both listeners face untrusted peers."""

    # open connections at once; past this, a new one is closed at once (keep the sum of both
    # listeners under the process's file limit: systemd's default soft limit is 1,024)
    max_connections: int = Field(default=512, ge=1, le=100_000)
    header_timeout: Duration = timedelta(seconds=10)  # to send the request line and headers
    idle_timeout: Duration = timedelta(seconds=15)  # a kept-alive connection with no request


class ChallengeConfig(_Model):
    listen: Listen = "127.0.0.1:8402"
    ttl: Duration = timedelta(hours=1)  # a published key authorization is dropped after this
    limits: ListenerLimits = ListenerLimits()


class ApiConfig(_Model):
    listen: Listen = "127.0.0.1:8403"
    limits: ListenerLimits = ListenerLimits(max_connections=256)
    tokens_file: SecretPath | None = None  # default: <state_dir>/api-tokens, created if missing
    metrics_auth: bool = True  # /metrics wants a bearer token too (it names every domain)
    # processes serving this listener (certd/workers.py); None: one per core. 1: the daemon
    # serves it itself, as before
    workers: int | None = Field(default=None, ge=1, le=64)

    def worker_count(self) -> int:
        return self.workers or max(1, len(os.sched_getaffinity(0)) if hasattr(
            os, "sched_getaffinity") else os.cpu_count() or 1)


class NodeConfig(_Model):
    name: Slug
    address: str = Field(min_length=1)
    ssh_port: int | None = Field(default=None, gt=0, lt=65536)  # overrides deployer.port
    minion: str | None = Field(default=None, min_length=1)  # salt minion id; default: name

    @field_validator("address")
    @classmethod
    def _address(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9.:\[\]][A-Za-z0-9.:\[\]-]*", v):
            raise ValueError(f"not a host name or IP address: {_show(v)}")
        return v


class _DeployerBase(_Model):
    path: Template = Field(min_length=1)  # the certificate's directory on the node
    strategy: Literal["parallel", "rolling"] = "parallel"
    max_parallel: int = Field(default=10, ge=1, le=1000)  # nodes in flight


class _RuntimeApi(_Model):
    # HAProxy's runtime API (`stats socket ... level admin`, a unix socket on the node): the
    # running process takes the certificates, no reload needed (certd/deployers/haproxy.py).
    # file: a socket on this machine; ssh: on the node, reached through the SSH connection
    runtime_api: Template | None = None
    runtime_crt_list: Template | None = None  # the crt-list new certificates are added to
    runtime_timeout: Duration = timedelta(seconds=10)  # per runtime API command

    @model_validator(mode="after")
    def _runtime(self):
        if self.runtime_crt_list and not self.runtime_api:
            raise ValueError("runtime_crt_list needs runtime_api")
        return self


class FileDeployerConfig(_DeployerBase, _RuntimeApi):
    type: Literal["file"]


class SshDeployerConfig(_DeployerBase, _RuntimeApi):
    type: Literal["ssh"]
    user: str = Field(default="certd", min_length=1, pattern=r"^[A-Za-z0-9._-]+$")
    port: int = Field(default=22, gt=0, lt=65536)
    key_file: SecretPath
    known_hosts: Path  # required: host keys are always checked
    connect_timeout: Duration = timedelta(seconds=10)


class SaltDeployerConfig(_DeployerBase):
    type: Literal["salt"]
    url: str
    username: str = Field(min_length=1)
    password_file: SecretPath
    eauth: str = Field(default="file", min_length=1)
    timeout: Duration = timedelta(seconds=60)  # how long salt waits for minions
    # pull (the default): each minion fetches its batch from certd's API listener at
    # `pull_url` with a one-shot token, so Salt only ever carries spent tokens; push: the key
    # travels inside the state.high job, and Salt's job cache and event bus keep it
    # (deploy/salt/README.md): an explicit choice
    mode: Literal["push", "pull"] = "pull"
    pull_url: str | None = None  # how minions reach certd's API listener
    pull_cafile: str | None = None  # on the minions: CA file for an https pull_url (curl)
    pull_token_ttl: Duration = timedelta(minutes=2)  # from the job's start

    @field_validator("url", "pull_url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is None:
            return v
        if not _URL.fullmatch(v) or "'" in v:
            raise ValueError("must be an http(s) URL (no spaces, quotes or control characters)")
        return v.rstrip("/")

    @field_validator("pull_cafile")
    @classmethod
    def _cafile(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"/[A-Za-z0-9._/-]+", v):
            raise ValueError("must be an absolute path of letters, digits and ._/-")
        return v

    @model_validator(mode="after")
    def _pull(self) -> SaltDeployerConfig:
        if self.mode == "pull" and not self.pull_url:
            raise ValueError("the salt deployer pulls by default (minions fetch their batch "
                             "from certd, so no key passes through Salt): set pull_url, the "
                             "address minions reach certd's API listener at (e.g. "
                             "https://certd.internal:8403); or set mode: push to send keys "
                             "inside Salt jobs, where the master's job cache and event bus "
                             "keep them")
        if not timedelta(seconds=10) <= self.pull_token_ttl <= timedelta(hours=1):
            raise ValueError("pull_token_ttl must be between 10s and 1h")
        return self


# the registry: one config model per deployer type (certd.deployers.build maps them)
DeployerConfig = Annotated[
    FileDeployerConfig | SshDeployerConfig | SaltDeployerConfig, Field(discriminator="type")
]


class FrontendConfig(_Model):
    tls_port: int = Field(default=443, gt=0, lt=65536)
    http_port: int = Field(default=80, gt=0, lt=65536)  # where nodes proxy the challenges
    nodes: list[NodeConfig] = Field(min_length=1)
    deployer: DeployerConfig
    check: Template | None = None
    reload: Template | None = None
    command_timeout: Duration = timedelta(seconds=60)
    verify: bool = True  # after reload, poll each node until it serves the new serial
    verify_timeout: Duration = timedelta(seconds=30)

    @field_validator("nodes")
    @classmethod
    def _unique(cls, v: list[NodeConfig]) -> list[NodeConfig]:
        seen: set[str] = set()
        for node in v:
            if node.name in seen:
                raise ValueError(f"node name {node.name!r} appears twice")
            seen.add(node.name)
        return v


def _domain(value: str) -> str:
    try:
        return names.normalise(value)
    except names.NameRejected as exc:
        raise ValueError(f"{_show(value)}: {exc}") from None


def _domain_or_wildcard(value: str) -> str:
    """A name, or `*.name`: whether a wildcard can be validated is decided by its challenge
    rule (Config._challenge_refs: dns-01 only)."""
    try:
        return names.normalise(value, wildcard=True)
    except names.NameRejected as exc:
        raise ValueError(f"{_show(value)}: {exc}") from None


def _suffix(value: str) -> str:
    if isinstance(value, str) and value.startswith("*"):
        raise ValueError(f"{_show(value)}: a suffix is a plain name (it covers the wildcard "
                         "*.NAME already)")
    return _domain(value)


TSIG_ALGORITHMS = ("hmac-sha256", "hmac-sha384", "hmac-sha512", "hmac-sha224", "hmac-sha1")
CHALLENGE_TYPES = ("http-01", "dns-01")
_DNS_NAME = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9])?"
                       r"(?:\.[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9])?)*$")


def _zone_name(value: str) -> str:
    """A DNS zone (or TSIG key) name: LDH labels (and '_'), any depth, one trailing dot
    allowed; lower-cased."""
    name = value.rstrip(".") if isinstance(value, str) and value.endswith(".") else value
    if not isinstance(name, str) or not _DNS_NAME.fullmatch(name):
        raise ValueError(f"not a DNS name: {_show(value)}")
    return name.lower()


ZoneName = Annotated[str, AfterValidator(_zone_name)]


class _ChallengeRuleBase(_Model):
    """Which names a challenge rule covers: `suffix` (the name itself and every name under
    it, wildcards included) and/or exact `names`. `name` lets certificates[].challenge pick
    the rule for all of a certificate's names."""

    name: Slug | None = None
    suffix: Annotated[str, AfterValidator(_suffix)] | None = None
    names: list[Annotated[str, AfterValidator(_domain_or_wildcard)]] = Field(
        default_factory=list)

    @model_validator(mode="after")
    def _covers(self):
        if self.suffix is None and not self.names and self.name is None:
            raise ValueError("give suffix or names (the names it covers), or a name "
                             "certificates[].challenge can refer to")
        return self

    def matches(self, domain: str) -> bool:
        """Does this rule cover `domain` (as written in the certificate: `*.x` for a
        wildcard)?"""
        if domain in self.names:
            return True
        if self.suffix is None:
            return False
        bare = domain.removeprefix("*.")
        return bare == self.suffix or bare.endswith("." + self.suffix)


class Http01ChallengeRule(_ChallengeRuleBase):
    type: Literal["http-01"]


class Dns01ChallengeRule(_ChallengeRuleBase):
    """dns-01 through RFC 2136 updates signed with TSIG (certd/issuance/dns01.py)."""

    type: Literal["dns-01"]
    server: Listen  # host:port of the primary that takes the updates
    zone: ZoneName  # the zone the updates go to (the _acme-challenge records' zone)
    tsig_key_name: ZoneName
    tsig_algorithm: str = "hmac-sha256"
    # the base64 secret (alone, or a BIND `key` block): a file or $CREDENTIALS_DIRECTORY/NAME
    tsig_key_file: SecretPath
    # the zone's authoritative servers to check (host:port each); default: its NS records,
    # asked of `server`, on `server`'s port
    nameservers: list[Listen] | None = Field(default=None, min_length=1, max_length=32)
    propagation_timeout: Duration = timedelta(minutes=2)  # until every server serves it

    @field_validator("tsig_algorithm")
    @classmethod
    def _algorithm(cls, v: str) -> str:
        if v.lower().rstrip(".") not in TSIG_ALGORITHMS:
            raise ValueError(f"unknown TSIG algorithm {_show(v)}; expected one of "
                             + ", ".join(TSIG_ALGORITHMS))
        return v.lower().rstrip(".")

    @field_validator("tsig_key_file")
    @classmethod
    def _key_file(cls, v: Path) -> Path:
        if not v.is_file():
            raise ValueError(f"{v}: no such file (the TSIG secret)")
        return v

    @field_validator("propagation_timeout")
    @classmethod
    def _timeout(cls, v: timedelta) -> timedelta:
        if not timedelta(seconds=1) <= v <= timedelta(hours=1):
            raise ValueError("must be between 1s and 1h")
        return v

    @model_validator(mode="after")
    def _in_zone(self) -> Dns01ChallengeRule:
        name = self.suffix
        if name is not None and not (name == self.zone or name.endswith("." + self.zone)):
            raise ValueError(f"suffix: {name} is not in zone {self.zone} (use names: for "
                             "names whose _acme-challenge is a CNAME into the zone)")
        return self


ChallengeRule = Annotated[Http01ChallengeRule | Dns01ChallengeRule,
                          Field(discriminator="type")]


class CertificateConfig(_Model):
    name: Slug
    # `*.name` only where a dns-01 rule covers it (Config._challenge_refs)
    domains: list[Annotated[str, AfterValidator(_domain_or_wildcard)]] = Field(
        min_length=1, max_length=100)
    frontends: list[str] = Field(default_factory=list)
    key_type: Literal["ec-p256", "ec-p384", "rsa-2048", "rsa-3072", "rsa-4096"] | None = None
    challenge: Slug | None = None  # a challenges[] rule's name, for all of its names
    profile: ProfileName | None = None  # the ACME profile to order; default: acme.profile

    @field_validator("domains")
    @classmethod
    def _dedupe(cls, v: list[str]) -> list[str]:
        return list(dict.fromkeys(v))


class BudgetConfig(_Model):
    """certd's own ledger of what it asked the CA for, mirroring Let's Encrypt's limits."""

    orders_per_3h: int = Field(default=300, ge=1)
    certificates_per_domain_per_week: int = Field(default=50, ge=1)
    failed_validations_per_name_per_hour: int = Field(default=5, ge=1)


class RenewalConfig(_Model):
    sweep_interval: Duration = timedelta(hours=1)
    ari_interval: Duration = timedelta(hours=6)  # ARI at least twice a day (unless Retry-After)
    deploy_sync_interval: Duration = timedelta(days=1)
    jitter: Duration = timedelta(minutes=2)  # spread scheduled jobs
    before_expiry: Duration | None = None  # fixed lead time (ignored for certificates it would renew before half their life); default: a third of the lifetime
    max_concurrent: int = Field(default=10, ge=1, le=1000)  # orders in flight
    # waits after the 1st, 2nd, 3rd... consecutive failure (the last one repeats), ±10 % jitter
    backoff: list[Duration] = Field(
        default_factory=lambda: [timedelta(minutes=1), timedelta(minutes=10),
                                 timedelta(minutes=100), timedelta(days=1)],
        min_length=1)
    budget: BudgetConfig = BudgetConfig()

    @field_validator("sweep_interval", "ari_interval", "deploy_sync_interval")
    @classmethod
    def _positive(cls, v: timedelta) -> timedelta:
        if v < timedelta(seconds=1):
            raise ValueError("must be at least 1s")
        return v


class DomainsConfig(_Model):
    """Custom-domain aliases added through the API."""

    default_frontends: list[str] = Field(default_factory=list)
    allowed_suffixes: list[Annotated[str, AfterValidator(_domain)]] = Field(default_factory=list)
    denied: list[Annotated[str, AfterValidator(_domain)]] = Field(default_factory=list)
    per_token_per_hour: int = Field(default=100, ge=1)  # new aliases; more get 429
    preflight: bool = True  # check HTTP-01 through every node, DNS and CAA before ordering
    # DNS server for preflight and dns-persist aliases' records (default: the system's)
    resolver: Listen | None = None
    validation_port: int = Field(default=80, gt=0, lt=65536)  # where the CA connects
    # preflight connects only to globally routable unicast addresses (from DNS or redirects),
    # plus the configured nodes and these networks (a lab: [127.0.0.0/8])
    preflight_allow_networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = Field(
        default_factory=list)
    # TLD labels an alias may end in although the alias policy refuses them (certd/names.py
    # check_alias): special-use ones (test, local, onion, example: also example.com/.net/.org,
    # arpa) or ones outside the public suffix list's ICANN section (lan, corp, ...)
    allow_special_use: list[str] = Field(default_factory=list)

    @field_validator("preflight_allow_networks", mode="before")
    @classmethod
    def _networks(cls, v: Any) -> Any:
        if not isinstance(v, list):
            return v
        out = []
        for item in v:
            try:
                out.append(ipaddress.ip_network(str(item), strict=True))
            except ValueError:
                raise ValueError(f"{_show(item)}: not a network in CIDR form") from None
        return out

    @field_validator("allow_special_use")
    @classmethod
    def _tlds(cls, v: list[str]) -> list[str]:
        out = []
        for tld in v:
            label = tld.strip().strip(".").lower()
            if not re.fullmatch(r"[a-z0-9-]{1,63}", label):
                raise ValueError(f"{_show(tld)}: expected a top-level label like 'test'")
            out.append(label)
        return out


class EndpointConfig(_Model):
    """Something certd does not deploy to but should watch: host:port and the names it serves."""

    address: str = Field(min_length=1)
    port: int = Field(default=443, gt=0, lt=65536)
    names: list[Annotated[str, AfterValidator(_domain)]] = Field(min_length=1)


class MonitorConfig(_Model):
    enabled: bool = True
    interval: Duration = timedelta(hours=6)
    jitter: Duration = timedelta(minutes=10)
    warn_before: Duration = timedelta(days=28)
    critical_before: Duration = timedelta(days=7)
    ca_bundle: Path | None = None  # default: the system trust store
    concurrency: int = Field(default=50, ge=1, le=1000)  # probes in flight
    timeout: Duration = timedelta(seconds=10)  # one probe: connect + handshake
    stale_grace: Duration = timedelta(minutes=15)  # after a deploy, before `stale` counts
    protocols: bool = True  # also try SSLv3/TLS 1.0/1.1 handshakes (legacy protocol accepted)
    hsts: bool = False  # also GET / over HTTPS and check Strict-Transport-Security
    hsts_min_age: Duration = timedelta(days=180)
    endpoints: list[EndpointConfig] = Field(default_factory=list)

    @model_validator(mode="after")
    def _order(self) -> MonitorConfig:
        if self.critical_before > self.warn_before:
            raise ValueError("critical_before: must not be longer than warn_before")
        return self


class _NotifierBase(_Model):
    min_severity: Literal["info", "warning", "error", "critical"] = "warning"
    timeout: Duration = timedelta(seconds=10)


class WebhookNotifierConfig(_NotifierBase):
    type: Literal["webhook"]
    url: str
    headers: dict[str, str] = Field(default_factory=dict)
    ca_bundle: Path | None = None

    @field_validator("headers")
    @classmethod
    def _headers(cls, v: dict[str, str]) -> dict[str, str]:
        for name, value in v.items():
            if not re.fullmatch(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,100}", name):
                raise ValueError(f"{_show(name)}: not an HTTP header name")
            if re.search(r"[\x00-\x08\x0a-\x1f\x7f]", value) or len(value) > 4096:
                raise ValueError(f"{name}: the value has control characters or is too long")
        return v

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not _URL.fullmatch(v):
            raise ValueError("must be an http(s) URL (no spaces or control characters)")
        return v


class EmailNotifierConfig(_NotifierBase):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    type: Literal["email"]
    host: str = Field(min_length=1)
    port: int = Field(default=587, gt=0, lt=65536)
    starttls: bool = True  # STARTTLS on a plain connection (port 587)
    tls: bool = False  # implicit TLS from the start (port 465)
    ca_bundle: Path | None = None
    username: str | None = None
    password_file: SecretPath | None = None
    sender: str = Field(alias="from", min_length=3)
    to: list[str] = Field(min_length=1)

    @field_validator("sender", "to")
    @classmethod
    def _addresses(cls, v: str | list[str]) -> str | list[str]:
        for address in [v] if isinstance(v, str) else v:
            if not _MAILBOX.fullmatch(address):
                raise ValueError(f"not a bare e-mail address: {_show(address)}")
        return v

    @model_validator(mode="after")
    def _auth(self) -> EmailNotifierConfig:
        if (self.username is None) != (self.password_file is None):
            raise ValueError("username and password_file go together")
        if self.tls and self.starttls:
            raise ValueError("tls (implicit) and starttls exclude each other; set one")
        return self


class LogNotifierConfig(_NotifierBase):
    type: Literal["log"]


NotifierConfig = Annotated[
    WebhookNotifierConfig | EmailNotifierConfig | LogNotifierConfig, Field(discriminator="type")
]


class AlertsConfig(_Model):
    repeat: Duration = timedelta(hours=24)  # remind while a finding lasts
    retries: int = Field(default=3, ge=0, le=20)  # per notification, with backoff
    # notices of this window go out per notifier as one digest per severity; 0: one by one
    group_window: Duration = timedelta(seconds=30)
    notifiers: list[NotifierConfig] = Field(default_factory=lambda: [LogNotifierConfig(type="log")])


class EventsConfig(_Model):
    retention: Duration = timedelta(days=90)  # older events are deleted (the audit trail)


class RetentionConfig(_Model):
    # a superseded certificate's private key is wiped from the store this long after its
    # successor was issued (nodes keep their own previous set for rollback); 0s: at once
    previous_keys: Duration = timedelta(days=7)


class DeployConfig(_Model):
    """How deploy work is gathered into batches (one check and one reload per node each)."""

    batch_window: Duration = timedelta(seconds=2)  # a batch closes this long after it opened
    batch_max: int = Field(default=100, ge=1, le=10000)  # ... or at this many certificates


class Config(_Model):
    state_dir: Path = Path("/var/lib/certd")
    storage: str | None = None
    # the PostgreSQL store's password (`storage: postgresql://USER@HOST:PORT/DB`): a file, or
    # $CREDENTIALS_DIRECTORY/NAME; read at each new connection, never written in the URL
    storage_password_file: SecretPath | None = None
    # key-encryption keys ('ID BASE64KEY' lines, the first seals) for the private keys in the
    # store: a file, or $CREDENTIALS_DIRECTORY/NAME; read when the store is made
    # (certd/store/sealing.py). Recommended for PostgreSQL; opt-in for SQLite.
    storage_key_file: SecretPath | None = None
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["text", "json"] = "text"  # json: one object per line (certd/logs.py)
    # a level per component (logger name), e.g. {certd.deployers: debug, aiohttp: warning}
    log_levels: dict[Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_.]{0,99}$")],
                     Literal["debug", "info", "warning", "error"]] = Field(default_factory=dict)
    acme: AcmeConfig = AcmeConfig()
    challenge: ChallengeConfig = ChallengeConfig()
    api: ApiConfig = ApiConfig()
    renewal: RenewalConfig = RenewalConfig()
    domains: DomainsConfig = DomainsConfig()
    monitor: MonitorConfig = MonitorConfig()
    alerts: AlertsConfig = AlertsConfig()
    events: EventsConfig = EventsConfig()
    retention: RetentionConfig = RetentionConfig()
    deploy: DeployConfig = DeployConfig()
    frontends: dict[Slug, FrontendConfig] = Field(default_factory=dict)
    # which challenge proves which names, first match wins; default: http-01
    challenges: list[ChallengeRule] = Field(default_factory=list)
    certificates: list[CertificateConfig] = Field(default_factory=list)

    @field_validator("storage")
    @classmethod
    def _storage(cls, v: str | None) -> str | None:
        problem = None if v is None else storage_problem(v)  # the schemes certd.store builds
        if problem:
            raise ValueError(problem)
        return v

    @model_validator(mode="after")
    def _cross_refs(self) -> Config:
        problems: list[str] = []
        if self.storage_password_file is not None and not storage_takes_password(self.storage):
            problems.append("storage_password_file: only for a postgresql:// storage")
        seen: set[str] = set()
        for i, cert in enumerate(self.certificates):
            if cert.name in seen:
                problems.append(f"certificates[{i}].name: {cert.name!r} appears twice")
            seen.add(cert.name)
            for j, group in enumerate(cert.frontends):
                if group not in self.frontends:
                    known = ", ".join(sorted(self.frontends)) or "none defined"
                    problems.append(
                        f"certificates[{i}].frontends[{j}]: unknown frontend {_show(group)} "
                        f"({known})"
                    )
        problems.extend(self.acme.issuer_problems())
        problems.extend(self._challenge_refs())
        for j, group in enumerate(self.domains.default_frontends):
            if group not in self.frontends:
                problems.append(f"domains.default_frontends[{j}]: unknown frontend {_show(group)}")
        if problems:
            raise ValueError("\n".join(problems))
        return self

    def _challenge_refs(self) -> list[str]:
        problems: list[str] = []
        named: dict[str, int] = {}
        for i, rule in enumerate(self.challenges):
            if rule.name is not None:
                if rule.name in named:
                    problems.append(f"challenges[{i}].name: {rule.name!r} is also the name of "
                                    f"challenges[{named[rule.name]}]")
                named.setdefault(rule.name, i)
        for i, cert in enumerate(self.certificates):
            if cert.challenge is not None and cert.challenge not in named:
                problems.append(f"certificates[{i}].challenge: no challenges[] rule is called "
                                f"{cert.challenge!r}")
                continue
            for j, domain in enumerate(cert.domains):
                rule = self.challenge_rule(domain, cert.name)
                if domain.startswith("*.") and not isinstance(rule, Dns01ChallengeRule):
                    problems.append(f"certificates[{i}].domains[{j}]: {domain}: wildcard "
                                    "names cannot be validated over HTTP-01; give it a dns-01 "
                                    "rule (challenges:)")
        return problems

    def challenge_rule(self, domain: str, certificate: str | None = None
                       ) -> Http01ChallengeRule | Dns01ChallengeRule | None:
        """The rule that proves `domain` (`*.x` for a wildcard) of the certificate called
        `certificate`: the one its `challenge` names, else the first of `challenges` that
        covers it; None: http-01, the default."""
        wanted = None
        for cert in self.certificates:
            if cert.name == certificate:
                wanted = cert.challenge
        for rule in self.challenges:
            if (rule.name == wanted) if wanted is not None else rule.matches(domain):
                return rule
        return None

    @property
    def database_path(self) -> Path | None:
        """The SQLite file (<state_dir>/certd.db unless `storage` names one); None when the
        store is not SQLite."""
        return sqlite_path(self.storage, self.state_dir)

    @property
    def tokens_path(self) -> Path:
        return self.api.tokens_file or self.state_dir / "api-tokens"

    def certificate(self, name: str) -> CertificateConfig:
        for cert in self.certificates:
            if cert.name == name:
                return cert
        raise KeyError(name)


def format_loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            text = str(part)
            if not text.isprintable() or len(text) > 64 or not text:
                text = _show(text)
            out += ("." if out else "") + text
    return out


DEPLOYER_TYPES = ("file", "ssh", "salt")
NOTIFIER_TYPES = ("webhook", "email", "log")


def _problems(exc: ValidationError) -> list[str]:
    problems = []
    for err in exc.errors():
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        # a tagged union adds its tag to the path (deployer.ssh.key_file): drop it
        loc = tuple(p for i, p in enumerate(loc)
                    if not (i and ((loc[i - 1] == "deployer" and p in DEPLOYER_TYPES)
                                   or (loc[i - 2:i - 1] == ("notifiers",)
                                       and p in NOTIFIER_TYPES)
                                   or (loc[i - 2:i - 1] == ("challenges",)
                                       and p in CHALLENGE_TYPES))))
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "union_tag_invalid":
            loc = loc + ("type",)
            msg = (f"unknown type {_show(err['ctx']['tag'])}; expected one of "
                   f"{err['ctx']['expected_tags']}")
        elif err["type"] == "union_tag_not_found":
            loc = loc + ("type",)
            msg = "required key is missing"
        elif err["type"] == "extra_forbidden":
            msg = "unknown key"
        elif err["type"] == "missing":
            msg = "required key is missing"
        where = format_loc(loc)
        # model-level errors carry their own paths, one per line
        for line in msg.splitlines():
            problems.append(f"{where}: {line}" if where else line)
    return problems


def _nul_bytes(data: Any) -> list[str]:
    """Key paths of strings (keys or values) holding a NUL byte: no path, name or command can
    (the OS refuses them, deep inside a deploy). Iterative: YAML may nest deep or loop."""
    problems: list[str] = []
    stack: list[tuple[tuple[int | str, ...], Any]] = [((), data)]
    seen: set[int] = set()
    while stack and len(problems) < 10:
        loc, value = stack.pop()
        if isinstance(value, str):
            if "\x00" in value:
                problems.append(f"{format_loc(loc) or 'top level'}: contains a NUL byte")
        elif isinstance(value, (dict, list)) and id(value) not in seen and len(loc) < 100:
            seen.add(id(value))
            items = value.items() if isinstance(value, dict) else enumerate(value)
            for key, item in items:
                if isinstance(key, str) and "\x00" in key:
                    problems.append(f"{format_loc(loc + (key,))}: the key contains a NUL byte")
                stack.append((loc + (key if isinstance(key, (int, str)) else repr(key),), item))
    return problems


MAX_PROBLEMS = 50


def parse(data: Any, source: str = "<config>") -> Config:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(source, ["top level: expected a mapping of keys"])
    if problems := _nul_bytes(data):
        raise ConfigError(source, problems)
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        problems = _problems(exc)
        if len(problems) > MAX_PROBLEMS:  # a wrong file: the first ones tell the story
            problems = problems[:MAX_PROBLEMS] + [
                f"... and {len(problems) - MAX_PROBLEMS:,} more problems"]
        raise ConfigError(source, problems) from None


def default_path() -> Path:
    return Path(os.environ.get("CERTD_CONFIG") or DEFAULT_PATH)


MAX_CONFIG_BYTES = 1 << 20  # a config is a few KiB; this bounds what a wrong path can cost


def _read(path: Path) -> str:
    with open(path, "rb") as f:
        data = f.read(MAX_CONFIG_BYTES + 1)
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(str(path), [f"larger than {MAX_CONFIG_BYTES >> 10} KiB: not a certd "
                                      "config (is it the right file?)"])
    return data.decode("utf-8")


def load(path: Path | None = None) -> Config:
    path = path or default_path()
    try:
        text = _read(path)
    except FileNotFoundError:
        raise ConfigError(str(path), ["file not found"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(str(path), [f"cannot read: {exc}"]) from None
    except ValueError:  # a NUL byte in the path
        raise ConfigError(_show(str(path)), ["cannot read: the path holds a NUL byte"]) from None
    try:
        data = yaml.load(text, Loader=_Loader)  # safe_load, refusing repeated keys
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        problem = one_line(problem, 200)
        raise ConfigError(str(path), [f"{where}invalid YAML: {problem}"]) from None
    except RecursionError:
        raise ConfigError(str(path), ["invalid YAML: nested too deeply"]) from None
    except ValueError:  # PyYAML's int(): a number past Python's 4,300-digit limit
        raise ConfigError(str(path), ["invalid YAML: a number too long to read"]) from None
    return parse(data, str(path))


class _Loader(yaml.SafeLoader):
    """yaml.safe_load's loader, except that a key given twice in one mapping is an error
    (YAML says keys are unique; PyYAML would silently keep the last one)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # '<<' merges; explicit keys may override merged ones
            key = self.construct_object(key_node, deep=deep)
            try:
                repeated = key in seen
            except TypeError:  # unhashable: the base class reports it
                continue
            if repeated:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping", node.start_mark,
                    f"key {_show(key)} appears twice", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def render(template: str, *, node: str, address: str, certificate: str) -> str:
    return template.format(node=node, address=address, certificate=certificate)
