"""What a source (certbot's tree, acme.sh's, two files) yields: certificates read and parsed,
not yet judged against certd's config."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from cryptography import x509


@dataclass(frozen=True)
class Found:
    """One certificate with its key, as another client left it."""

    source: str  # 'certbot', 'acme.sh', 'files'
    lineage: str  # its name there (certbot's lineage, acme.sh's domain, the NAME given)
    where: str  # for messages: 'live/example.org', the files given
    chain: tuple[x509.Certificate, ...]  # leaf first
    key_pem: str = field(repr=False)
    server: str | None = None  # the CA directory it came from, if the source says
    account: str | None = None  # the source's id of the ACME account that ordered it
    key_type: str | None = None  # the key type its client renews with (certd's spelling)
    target: str | None = None  # the certd certificate it must go to (the files form)


@dataclass(frozen=True)
class Unreadable:
    """A certificate of the source that could not be read safely: why, in one line."""

    source: str
    lineage: str
    where: str
    reason: str


@dataclass(frozen=True)
class SourceAccount:
    """An ACME account another client registered: its id there, URL at the CA, key."""

    id: str
    uri: str
    key_pem: str = field(repr=False)


@dataclass(frozen=True)
class Source:
    """Everything one source offers. `account(server, id)` reads one of its ACME accounts
    (raises ImportRefused); None when the source keeps none certd can use."""

    description: str
    found: tuple[Found | Unreadable, ...]
    account: Callable[[str, str], SourceAccount] | None = None
