"""Frozen records that flow between layers. No storage, no network."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime, timezone


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class CertStatus(str, enum.Enum):
    """Where a certificate stands (the REST issue exposes these)."""

    PENDING = "pending"  # configured, nothing issued yet
    ISSUING = "issuing"  # an order is in flight
    ISSUED = "issued"  # a valid certificate is stored, not yet on every node
    DEPLOYED = "deployed"  # every node has it
    FAILED = "failed"  # the last attempt failed; see last_error
    # a dns-persist alias whose TXT record certd does not see yet: re-checked with backoff,
    # no order placed (certd/issuance/dns_persist.py)
    AWAITING_DNS = "awaiting_dns"


class DeployStatus(str, enum.Enum):
    DEPLOYING = "deploying"  # recorded before the first file is written: a crash leaves a
    # record, so a later removal knows certd may have placed files there
    DEPLOYED = "deployed"  # files placed and reload succeeded
    FAILED = "failed"
    ROLLED_BACK = "rolled_back"
    REMOVED = "removed"


class Severity(str, enum.Enum):
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"
    CRITICAL = "critical"


@dataclass(frozen=True)
class CertificateSpec:
    """What should exist: a named certificate for some domains, served by some frontends."""

    name: str
    domains: tuple[str, ...]
    frontends: tuple[str, ...]
    key_type: str = "ec-p256"
    profile: str | None = None  # the ACME profile to order (certd/issuance/profiles.py)
    # the challenge type every name must be proved with ("dns-persist-01" for an alias added
    # with validation dns-persist); None: the Solvers rules decide
    challenge: str | None = None


@dataclass(frozen=True)
class IssuedCertificate:
    """One certificate as the CA issued it, with its private key (never logged)."""

    name: str
    serial: str  # lower-case hex, no colons
    domains: tuple[str, ...]
    not_before: datetime
    not_after: datetime
    cert_pem: str  # the leaf
    chain_pem: str  # intermediates, in the CA's order
    key_pem: str = field(repr=False)
    fingerprint_sha256: str = ""
    issued_at: datetime = field(default_factory=utcnow)
    order_url: str | None = None
    id: int | None = None
    issuer: str | None = None  # the directory URL of the CA that issued it (None: unknown)
    profile: str | None = None  # the ACME profile it was ordered with (None: none asked)

    @property
    def fullchain_pem(self) -> str:
        return self.cert_pem + self.chain_pem

    def valid_at(self, when: datetime) -> bool:
        return self.not_before <= when < self.not_after


@dataclass(frozen=True)
class CertSummary:
    """A stored certificate without its PEMs: what a sweep over thousands needs."""

    name: str
    serial: str
    domains: tuple[str, ...]
    not_before: datetime
    not_after: datetime
    issued_at: datetime
    fingerprint_sha256: str = ""
    issuer: str | None = None  # the directory URL of the CA that issued it
    profile: str | None = None  # the ACME profile it was ordered with


@dataclass(frozen=True)
class CertificateState:
    """The moving parts of one certificate's life that the scheduler and status read."""

    name: str
    status: CertStatus = CertStatus.PENDING
    last_error: str | None = None
    attempts: int = 0  # consecutive failures
    next_attempt_at: datetime | None = None
    updated_at: datetime = field(default_factory=utcnow)


@dataclass(frozen=True)
class Account:
    directory: str
    uri: str
    key_pem: str = field(repr=False)
    created_at: datetime = field(default_factory=utcnow)


@dataclass(frozen=True)
class Challenge:
    token: str
    key_authorization: str
    certificate: str
    authorization_url: str
    expires_at: datetime


@dataclass(frozen=True, order=True)
class NodeRef:
    """Which node: one node of one frontend group. Code passes and compares this value; its
    printed form 'frontend/node' (`str(ref)`) is only for people and for what is stored or sent
    under that name (Finding.node, alert keys, JSON `deployed_nodes`, /metrics labels)."""

    frontend: str
    node: str

    def __str__(self) -> str:
        return f"{self.frontend}/{self.node}"


@dataclass(frozen=True)
class Deployment:
    """What one node of one frontend group holds for one certificate."""

    certificate: str
    frontend: str
    node: str
    serial: str
    status: DeployStatus
    message: str = ""
    updated_at: datetime = field(default_factory=utcnow)
    batch: str = ""  # the batch it went out in (one id per rollout of several certificates)
    seconds: float | None = None  # from the batch's start on this node to this outcome
    # when the rollout saw the node serve `serial` after the reload (a TLS handshake per
    # name, certd/rollout.py _verify); None: not verified (frontends.*.verify off, failed,
    # a claim, a removal, a record from before certd stored it)
    verified_at: datetime | None = None

    @property
    def ref(self) -> NodeRef:
        return NodeRef(self.frontend, self.node)


@dataclass(frozen=True)
class Event:
    """An entry of the event log: what certd did or saw. Alerting reads these."""

    kind: str  # e.g. 'issue.ok', 'issue.failed', 'deploy.ok', 'deploy.failed', 'reload.output'
    message: str
    severity: Severity = Severity.INFO
    certificate: str | None = None
    node: str | None = None
    data: dict = field(default_factory=dict)
    at: datetime = field(default_factory=utcnow)
    id: int | None = None


@dataclass(frozen=True)
class Order:
    """An ACME order as certd tracked it (RFC 8555 §7.1.3)."""

    certificate: str
    url: str
    status: str  # pending | ready | processing | valid | invalid
    created_at: datetime = field(default_factory=utcnow)
    error: str | None = None
    domains: tuple[str, ...] = ()
    key_pem: str | None = field(default=None, repr=False)  # saved before finalize, for resuming
    replaces: str | None = None  # ARI certID of the certificate this order renews


@dataclass(frozen=True)
class AriState:
    """The CA's renewal window for one certificate (RFC 9773), and when to ask again."""

    name: str
    serial: str  # the certificate the window is for
    window_start: datetime | None  # None: the CA gave no usable window
    window_end: datetime | None
    renew_at: datetime | None  # the random moment certd picked inside the window
    next_check_at: datetime
    explanation_url: str | None = None
    checked_at: datetime = field(default_factory=utcnow)


@dataclass(frozen=True)
class CertDetails:
    """Everything status views show of one certificate, read in one batch for many."""

    summary: CertSummary | None
    state: CertificateState | None
    ari: AriState | None
    deployments: tuple[Deployment, ...] = ()


@dataclass(frozen=True)
class Alias:
    """A customer's custom domain, added through the API: one certificate named after it."""

    domain: str
    frontends: tuple[str, ...]
    created_by: str  # the API token's name
    created_at: datetime = field(default_factory=utcnow)
    removing: bool = False
    validation: str = "http-01"  # how the CA validates it: "http-01" | "dns-persist"
    profile: str | None = None  # the ACME profile to order (None: acme.profile)


SEVERITY_RANK = {Severity.INFO: 0, Severity.WARNING: 1, Severity.ERROR: 2, Severity.CRITICAL: 3}


@dataclass(frozen=True)
class ProbeTarget:
    """One TLS endpoint to look at: connect to address:port, send `domain` as SNI."""

    domain: str
    address: str
    port: int
    node: str  # the label: str(ref) for nodes certd deploys to, 'address:port' for extra endpoints
    certificate: str | None = None  # certd's certificate name for this domain, if it has one
    frontend: str | None = None  # = ref.frontend
    ref: NodeRef | None = None  # the node certd deploys to; None for an extra endpoint

    @classmethod
    def on_node(cls, ref: NodeRef, domain: str, address: str, port: int,
                certificate: str | None = None) -> ProbeTarget:
        return cls(domain, address, port, str(ref), certificate, ref.frontend, ref)


@dataclass(frozen=True)
class Finding:
    """Something wrong (or worth knowing) about what one node serves for one name.

    `check` is a stable id ('expiry', 'stale', 'chain', 'hostname', 'unreachable',
    'posture.sha2', 'protocol.tls1.0', ...); (check, domain, node) identifies the finding
    across sweeps, so alerting can tell new from ongoing from resolved."""

    check: str
    severity: Severity
    domain: str
    node: str
    message: str
    certificate: str | None = None
    serial: str | None = None
    not_after: datetime | None = None
    days_remaining: float | None = None

    @property
    def key(self) -> str:
        return f"{self.check}|{self.domain}|{self.node}"


@dataclass(frozen=True)
class Notification:
    """What a notifier sends. `event` is 'finding' (new or changed severity), 'reminder',
    'resolved', or an event-log kind such as 'issue.failed' / 'deploy.failed'."""

    event: str
    severity: Severity
    message: str
    certificate: str | None = None
    domain: str | None = None
    node: str | None = None
    check: str | None = None
    days_remaining: float | None = None
    not_after: datetime | None = None
    at: datetime = field(default_factory=utcnow)


@dataclass(frozen=True)
class Instance:
    """A `certd run` sharing the store, as its heartbeat row says (issue 13, item 7)."""

    id: str  # the owner of its leases (certd.service.owner_id: host:pid:random)
    host: str
    pid: int
    started_at: datetime
    last_seen_at: datetime


@dataclass(frozen=True)
class Alert:
    """The alerting state of one finding, kept in the store between sweeps."""

    finding: Finding
    first_seen: datetime
    last_seen: datetime
    notified_at: datetime | None = None  # last notice sent (finding or reminder)
    notified_severity: Severity | None = None
    resolved_at: datetime | None = None
