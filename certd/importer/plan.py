"""The rules of `certd import`: which found certificate goes to which configured one, whether
it is fit to be served and renewed, and what the import would change. Pure decisions over
what the sources read and what the store holds; `apply` writes them through the service.

Matching. A found certificate goes to the configured certificate (or API alias) that has its
lineage's name, else to the one whose domains are exactly its names. One that matches none is
not imported: a certificate no config entry names would sit in the store with no frontends,
never deployed, renewed or retired; the report prints the config entry to add instead (named
after the lineage, so the same command imports it once the entry is there). Several lineages
for one certificate (certbot's `example.org-0001`): the one valid longest wins, the others are
skipped as superseded.

Fitness. The key matches the certificate; each certificate of the chain is signed by the next
one (the root is not required: certd does not pin roots); the leaf is not a CA; it is valid
now; its names include every configured domain (extra names are allowed and reported: the
next renewal leaves them out). A certificate from a staging CA is refused unless certd's own
CA is a staging one. Any problem in any certificate that would be imported, or any unreadable
input, and nothing at all is written: the operator fixes it or leaves that lineage out
(`--only`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from dataclasses import replace as _with
from datetime import datetime
from urllib.parse import urlsplit

import yaml
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from certd import keys, names
from certd.config import Config
from certd.errors import CertdError
from certd.importer.files import AccountMissing, ImportRefused, shown
from certd.importer.model import Found, Source, SourceAccount, Unreadable
from certd.model import Account, CertificateSpec, Event, IssuedCertificate
from certd.service import IMPORTED, Certd
from certd.store.base import Store
from certd.text import one_line
from certd.views import name_list

IMPORT, ALREADY, SKIP, UNMATCHED, ERROR = "import", "already", "skip", "unmatched", "error"
ACCOUNT_IMPORTED = "account.imported"
MAX_DOMAINS = 100  # names per certificate, as the config allows (Let's Encrypt's classic cap)


@dataclass(frozen=True)
class Item:
    """What the import does with one found certificate, and why (`message`, one line)."""

    source: str
    lineage: str
    where: str
    action: str  # IMPORT, ALREADY, SKIP, UNMATCHED, ERROR
    message: str
    target: str | None = None
    notes: tuple[str, ...] = ()
    snippet: str | None = None  # UNMATCHED: the config entry that would make it importable
    cert: IssuedCertificate | None = field(default=None, repr=False)
    expected: str | None = None  # the serial current in certd when planned (None: none)
    account: str | None = None  # the source's account id, when ordered at certd's CA


@dataclass(frozen=True)
class AccountStep:
    action: str  # 'import', 'keep' or 'none'
    message: str
    account: Account | None = field(default=None, repr=False)  # to save, for 'import'
    same: frozenset[str] = frozenset()  # source account ids that are certd's account


@dataclass(frozen=True)
class Plan:
    source: str
    items: tuple[Item, ...]
    account: AccountStep | None = None
    problems: tuple[str, ...] = ()  # besides the items' errors (an unreadable account)

    @property
    def ok(self) -> bool:
        return not self.problems and all(i.action != ERROR for i in self.items)

    @property
    def imports(self) -> list[Item]:
        return [i for i in self.items if i.action in (IMPORT, ALREADY)]


async def make_plan(config: Config, specs: Sequence[CertificateSpec], store: Store | None,
                    source: Source, now: datetime, *, replace: bool = False,
                    account: bool = True) -> Plan:
    """Decide everything; write nothing. `store` None: an empty store (a dry run before the
    store exists)."""
    by_name = {s.name: s for s in specs}
    items: list[Item] = []
    groups: dict[str, list[Found]] = {}
    for found in source.found:
        if isinstance(found, Unreadable):
            items.append(Item(found.source, found.lineage, found.where, ERROR, found.reason))
            continue
        spec = _match(found, by_name, specs)
        if spec is None:
            items.append(_unmatched(found, config, now))
        else:
            groups.setdefault(spec.name, []).append(found)
    for name, group in groups.items():
        group.sort(key=lambda f: (_valid(f, now), f.chain[0].not_valid_after_utc), reverse=True)
        best, *rest = group
        items.append(await _judged(best, by_name[name], store, config, now, replace))
        for other in rest:
            items.append(Item(other.source, other.lineage, other.where, SKIP,
                              f"superseded by {best.where} for certificate {name}",
                              target=name))
    steps = None
    problems: list[str] = []
    if account and source.account is not None:
        steps, problems = await _account_step(config, store, source, items)
    items.sort(key=lambda i: i.where)
    return Plan(source.description, tuple(items), steps, tuple(problems))


def _match(found: Found, by_name: dict[str, CertificateSpec],
           specs: Sequence[CertificateSpec]) -> CertificateSpec | None:
    if found.target is not None:
        return by_name.get(found.target)
    if found.lineage in by_name:
        return by_name[found.lineage]
    dns = set(_names(found.chain[0]))
    same = [s for s in specs if set(s.domains) == dns]
    return same[0] if len(same) == 1 else None


def _names(leaf: x509.Certificate) -> list[str]:
    try:
        return [n.lower() for n in keys.dns_names(leaf)]
    except ValueError:  # a SAN extension that does not parse
        return []


def _valid(found: Found, now: datetime) -> bool:
    leaf = found.chain[0]
    return leaf.not_valid_before_utc <= now < leaf.not_valid_after_utc


def _when(dt: datetime) -> str:
    return dt.strftime("%Y-%m-%d %H:%M UTC")


def _unmatched(found: Found, config: Config, now: datetime) -> Item:
    leaf = found.chain[0]
    dns = _names(leaf)
    base = Item(found.source, found.lineage, found.where, SKIP, "")
    if found.target is not None:
        known = ", ".join(c.name for c in config.certificates) or "none"
        return _with(base, action=ERROR, message=f"certificate {shown(found.target)} is not "
                     f"configured (configured: {known})")
    if now >= leaf.not_valid_after_utc:
        return _with(base, message=f"expired {_when(leaf.not_valid_after_utc)} and no "
                     "configured certificate has its name or its names: left alone")
    try:
        domains = list(dict.fromkeys(names.normalise(n) for n in dns))
    except names.NameRejected as exc:
        return _with(base, message=f"certd cannot manage it: {one_line(str(exc), 100)}")
    if not domains or len(domains) > MAX_DOMAINS:
        return _with(base, message=f"certd cannot manage it: {len(domains)} DNS names (1 to "
                     f"{MAX_DOMAINS} per certificate)")
    entry: dict = {"name": _slug(found.lineage, domains), "domains": domains,
                   "frontends": list(config.domains.default_frontends or config.frontends)}
    key_type = found.key_type or _key_type(keys.key_from_pem(found.key_pem))
    if key_type and key_type != config.acme.key_type:
        entry["key_type"] = key_type
    snippet = yaml.safe_dump([entry], default_flow_style=None, sort_keys=False)
    return _with(base, action=UNMATCHED, snippet=snippet,
                 message=f"no configured certificate is named {shown(found.lineage)} or has "
                 f"exactly its names ({name_list(domains)}); to manage it, add this under "
                 "`certificates:` and run the import again")


def _slug(lineage: str, domains: list[str]) -> str:
    """A config name for a lineage: itself when it is one (so the import matches it)."""
    text = "".join(c if c.isascii() and (c.isalnum() or c in "._-") else "-"
                   for c in lineage.lower()).lstrip("._-")[:63]
    return text or domains[0][:63]


def _key_type(key) -> str | None:
    if isinstance(key, rsa.RSAPrivateKey) and key.key_size in (2048, 3072, 4096):
        return f"rsa-{key.key_size}"
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return {"secp256r1": "ec-p256", "secp384r1": "ec-p384"}.get(key.curve.name)
    return None


async def _judged(found: Found, spec: CertificateSpec, store: Store | None, config: Config,
                  now: datetime, replace: bool) -> Item:
    base = Item(found.source, found.lineage, found.where, ERROR, "", target=spec.name)
    try:
        cert, notes = _checked(found, spec, primary_directory(config), now)
        # which CA issued it, if certd orders from it too (acme.issuers): ARI and `replaces`
        # go only there
        cert = _with(cert, issuer=next(
            (i.directory for i in config.acme.issuer_list()
             if found.server is not None and same_directory(found.server, i.directory)), None))
    except ImportRefused as exc:
        return _with(base, message=str(exc))
    except Exception as exc:  # noqa: BLE001 - cryptography parses extensions lazily
        return _with(base, message=f"unusable certificate: {type(exc).__name__}: "
                     f"{one_line(str(exc), 120)}")
    current = await store.current_certificate(spec.name) if store is not None else None
    same_ca = found.server is not None and same_directory(found.server,
                                                          primary_directory(config))
    item = _with(base, cert=cert, notes=tuple(notes), expected=current.serial if current else None,
                 account=found.account if same_ca else None)
    what = (f"serial {cert.serial}, valid until {_when(cert.not_after)} "
            f"({name_list(_names(found.chain[0]))})")
    if current is not None and current.serial == cert.serial:
        return _with(item, action=ALREADY, message=f"already imported: {what}")
    if current is not None and now < current.not_after and not replace:
        return _with(item, action=SKIP, message=(
            f"certd already holds serial {current.serial} for {spec.name}, valid until "
            f"{_when(current.not_after)}: kept (--replace imports {what} instead)"))
    if current is not None:
        item = _with(item, notes=(*item.notes, f"replaces serial {current.serial}"))
    return _with(item, action=IMPORT, message=what)


def _checked(found: Found, spec: CertificateSpec, directory: str, now: datetime
             ) -> tuple[IssuedCertificate, list[str]]:
    leaf, chain = found.chain[0], found.chain[1:]
    key = keys.key_from_pem(found.key_pem)
    if not keys.same_public_key(leaf, key):
        raise ImportRefused("the private key does not match the certificate")
    if not chain:
        raise ImportRefused("no intermediate certificate: the chain holds the "
                            "leaf alone (give the full chain)")
    for i, (child, parent) in enumerate(zip(found.chain, chain), start=1):
        try:
            child.verify_directly_issued_by(parent)
        except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
            raise ImportRefused(f"chain: certificate {i} is not signed by "
                                f"certificate {i + 1}") from None
    try:
        is_ca = leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    if is_ca:
        raise ImportRefused("the first certificate is a CA's, not a server's")
    if now < leaf.not_valid_before_utc:
        raise ImportRefused(f"not valid before {_when(leaf.not_valid_before_utc)}")
    if now >= leaf.not_valid_after_utc:
        raise ImportRefused(f"expired {_when(leaf.not_valid_after_utc)}")
    dns = _names(leaf)
    missing = [d for d in spec.domains if d not in dns]
    if missing:
        raise ImportRefused(f"lacks {name_list(missing)}, which certificate "
                            f"{spec.name} is configured for")
    notes = []
    extra = [d for d in dns if d not in spec.domains]
    if extra:
        notes.append(f"also covers {name_list(extra)}, which the next renewal leaves out")
    if found.key_type and found.key_type != spec.key_type:  # what its client renewed with
        notes.append(f"{found.source} made {found.key_type} keys; certd's renewals make "
                     f"{spec.key_type} keys (its config)")
    elif not found.key_type and _key_type(key) != spec.key_type:
        notes.append(f"its key is {_key_type(key) or 'of a type certd does not make'}; "
                     f"certd's renewals make {spec.key_type} keys (its config)")
    if found.server is not None and not same_directory(found.server, directory):
        if _staging(found.server) and not _staging(directory):
            raise ImportRefused(f"a test certificate from a staging CA "
                                f"({shown(found.server, 100)}): clients do not trust it")
        notes.append(f"issued through {shown(found.server, 100)}; certd renews through "
                     f"{directory}")
    info = keys.cert_info(leaf)
    cert = IssuedCertificate(
        name=spec.name, serial=info.serial, domains=spec.domains,
        not_before=info.not_before, not_after=info.not_after, cert_pem=keys.cert_to_pem(leaf),
        chain_pem="".join(keys.cert_to_pem(c) for c in chain), key_pem=keys.key_to_pem(key),
        fingerprint_sha256=info.fingerprint_sha256, issued_at=now, order_url=None)
    return cert, notes


def primary_directory(config: Config) -> str:
    """The CA certd orders from first (acme.issuers[0], or acme.directory)."""
    return config.acme.issuer_list()[0].directory


def same_directory(a: str, b: str) -> bool:
    """Two spellings of one ACME directory URL (case of scheme and host, a trailing /)."""
    x, y = urlsplit(a), urlsplit(b)
    return ((x.scheme.lower(), x.netloc.lower(), x.path.rstrip("/"), x.query)
            == (y.scheme.lower(), y.netloc.lower(), y.path.rstrip("/"), y.query))


def _staging(url: str) -> bool:
    return "staging" in urlsplit(url).netloc.lower()  # certbot's own test (util.is_staging)


def _public(pem: str) -> bytes:
    return keys.key_from_pem(pem).public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


async def _account_step(config: Config, store: Store | None, source: Source,
                        items: list[Item]) -> tuple[AccountStep | None, list[str]]:
    """certd's account at its CA: kept if it has one; else the source's account that ordered
    the certificates being imported, if it is one account. Same account matters: a CA
    refuses an ARI `replaces` for a certificate another account ordered."""
    directory = primary_directory(config)
    ids = sorted({i.account for i in items if i.action in (IMPORT, ALREADY) and i.account})
    if not ids:
        return None, []
    read: list[SourceAccount] = []
    problems, missing = [], []
    for account_id in ids:
        try:
            found = source.account(directory, account_id)
        except AccountMissing as exc:
            missing.append(str(exc))
            continue
        except ImportRefused as exc:
            problems.append(str(exc))
            continue
        if not same_directory(_origin(found.uri), _origin(directory)):
            problems.append(f"account {account_id}: its URL {shown(found.uri, 100)} is not "
                            f"at the CA of {directory}")
            continue
        read.append(found)
    if problems:
        return None, problems
    stored = await store.get_account(directory) if store is not None else None
    if stored is not None:
        same = frozenset(a.id for a in read if _public(a.key_pem) == _public(stored.key_pem))
        return AccountStep("keep", f"certd already has an account at {directory} "
                           f"({stored.uri or 'not registered yet'}): kept"
                           + (", the same as the source's" if same else ""), same=same), []
    if len(read) != 1 or missing:
        why = "; ".join(missing) or (f"the lineages were ordered by {len(read)} accounts "
                                     f"({', '.join(ids)})")
        return AccountStep("none", f"{why}: none imported; certd registers its own"), []
    (one,) = read
    return AccountStep("import", f"{one.id} ({one.uri}) as certd's account at {directory}", account=Account(directory, one.uri, one.key_pem),
                       same=frozenset({one.id})), []


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


async def apply(certd: Certd, plan: Plan) -> list[IssuedCertificate]:
    """Write the plan: the account first (if certd still has none), then each certificate
    through Certd.adopt (one atomic row with its key, state 'issued', the IMPORTED event).
    Raises CertdError when the plan has problems, or when a certificate changed meanwhile
    (those adopted before it stay)."""
    if not plan.ok:
        raise CertdError("import: the plan has problems; nothing written")
    same: frozenset[str] = frozenset()
    step = plan.account
    if step is not None and step.action == "import" and step.account is not None:
        existing = await certd.store.get_account(step.account.directory)
        if existing is None:
            await certd.store.save_account(step.account)
            await certd.store.add_event(Event(
                ACCOUNT_IMPORTED, f"acme: account {step.account.uri} imported from "
                f"{plan.source}", data={"uri": step.account.uri}))
            same = step.same
        elif _public(existing.key_pem) == _public(step.account.key_pem):
            same = step.same  # saved by an import a crash cut short
    elif step is not None:
        same = step.same
    adopted = []
    for item in plan.imports:
        cert = item.cert
        event = Event(IMPORTED, f"certificate[{cert.name}]: imported serial {cert.serial} "
                      f"from {plan.source} {item.where}", certificate=cert.name,
                      data={"serial": cert.serial, "not_after": cert.not_after.isoformat(),
                            "source": item.source, "lineage": item.lineage,
                            "same_account": item.account is not None and item.account in same})
        adopted.append(await certd.adopt(cert, event, expected=item.expected))
    return adopted
