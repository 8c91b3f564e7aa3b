"""The order flow for one certificate (RFC 8555 §7.4): order -> authorizations -> challenges
-> finalize -> download. Each authorization is proved by the Solver the `Solvers` rules pick
for its name (certd/issuance/solvers.py; http-01 by default): presented before the challenge
is answered, cleaned up once the CA is done with it (or the order gave up on it).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import replace
from datetime import timedelta
from typing import Awaitable, Callable, TypeVar

import josepy as jose
from acme import challenges, messages
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from certd import failpoints, keys
from certd.errors import AcmeError
from certd.issuance import dns_persist, profiles
from certd.issuance.client import AcmeClient, Response
from certd.issuance.http01 import Http01Solver, valid_token
from certd.issuance.solvers import ChallengeType, Proof, Solver, Solvers
from certd.issuance.status import AUTHZ_FINAL, AcmeStatus
from certd.issuance.untrusted import MALFORMED, clean_text, problem_type
from certd.model import (
    Account,
    CertificateSpec,
    IssuedCertificate,
    Order,
    utcnow,
)
from certd.store.base import Store

log = logging.getLogger(__name__)

T = TypeVar("T")
FIRST_POLL = 0.05  # seconds; a CA that validates at once answers on the first or second poll
MAX_POLL = 2.0
ACCOUNT_KEY_TYPE = "ec-p256"
ACCOUNT_WAIT = timedelta(seconds=30)  # for another instance to create the account key
CESSATION_OF_OPERATION = 5  # RFC 5280 CRLReason: the name is no longer served by us


class Issuer:
    """Obtains certificates from one ACME directory for one account. Concurrency-safe."""

    def __init__(
        self,
        client: AcmeClient,
        store: Store,
        *,
        email: str | None = None,
        eab: tuple[str, str] | None = None,
        challenge_ttl: timedelta = timedelta(hours=1),
        order_timeout: timedelta = timedelta(minutes=5),
        solvers: Solvers | None = None,
    ):
        self.client = client
        self.store = store
        self.email = email
        self.eab = eab
        self.challenge_ttl = challenge_ttl
        self.order_timeout = order_timeout
        # which challenge proves which name; http-01 through the store unless told otherwise
        self.solvers = solvers or Solvers(default=Http01Solver(store, ttl=challenge_ttl))
        self._account_lock = asyncio.Lock()

    async def ensure_account(self) -> None:
        """Load the stored account, or register one. The key is saved before registering, so a
        crash in between re-registers the same key (newAccount is idempotent per key)."""
        async with self._account_lock:
            if self.client.account_uri:
                return
            directory = self.client.directory_url
            account = await self.store.get_account(directory)
            if account is None:
                account = await self._create_account_key(directory)
            jwk = account_jwk(account.key_pem)
            if account.uri:
                self.client.use_account(jwk, account.uri)
                return
            uri = await self.client.register(jwk, email=self.email, eab=self.eab)
            await self.store.save_account(Account(directory, uri, account.key_pem,
                                                  account.created_at))
            log.info("acme: registered account %s", uri)

    async def _create_account_key(self, directory: str) -> Account:
        """The account key of `directory`, made once for every instance sharing the store:
        under the `account:DIRECTORY` lease, checked again under it; the others wait for it.
        (Two keys would be two accounts, and an instance could not resume an order that
        another one placed: the CA refuses it to any other account.)"""
        lease, owner = f"account:{directory}", f"account:{uuid.uuid4().hex}"
        loop = asyncio.get_running_loop()
        give_up = loop.time() + ACCOUNT_WAIT.total_seconds()
        while True:
            now = utcnow()
            if await self.store.acquire_lease(lease, owner, now + ACCOUNT_WAIT, now):
                try:
                    account = await self.store.get_account(directory)
                    if account is None:
                        key = await asyncio.to_thread(keys.generate_key, ACCOUNT_KEY_TYPE)
                        account = Account(directory, "", keys.key_to_pem(key))
                        await self.store.save_account(account)
                    return account
                finally:
                    await self.store.release_lease(lease, owner)
            await asyncio.sleep(0.1)
            account = await self.store.get_account(directory)
            if account is not None:
                return account
            if loop.time() > give_up:
                raise AcmeError(f"acme: another certd keeps creating the account of "
                                f"{directory}; try again later", type="certd:account")

    async def issue(self, spec: CertificateSpec, *, replaces: str | None = None,
                    resume: Order | None = None, key_pem: str | None = None
                    ) -> IssuedCertificate:
        """Run one order to a stored-ready certificate. With `resume` (an order a previous run
        left unfinished), pick it up where the CA has it; an order the CA no longer offers is
        replaced by a new one. `key_pem` reuses a key instead of generating one."""
        try:
            return await self._issue(spec, replaces, resume, key_pem)
        except AcmeError as exc:
            if exc.code != "accountDoesNotExist":
                raise
        # the CA forgot the account (a test CA restarted, a staging reset): register the same
        # key again and start over once
        log.warning("acme: account %s unknown to the CA; registering again",
                    self.client.account_uri)
        await self._reregister()
        return await self._issue(spec, replaces, None, key_pem)

    async def revoke(self, cert: IssuedCertificate, reason: int = CESSATION_OF_OPERATION
                     ) -> bool:
        """Revoke `cert` at the CA. False if it was already revoked; raises AcmeError."""
        await self.ensure_account()
        der = x509.load_pem_x509_certificate(cert.cert_pem.encode()).public_bytes(
            serialization.Encoding.DER)
        try:
            await self.client.revoke(der, reason)
        except AcmeError as exc:
            if exc.code == "alreadyRevoked":
                return False
            raise
        log.info("acme: revoked certificate[%s] serial %s", cert.name, cert.serial)
        return True

    async def _reregister(self) -> None:
        async with self._account_lock:
            account = await self.store.get_account(self.client.directory_url)
            uri = await self.client.register(self.client.key, email=self.email, eab=self.eab)
            await self.store.save_account(Account(self.client.directory_url, uri,
                                                  account.key_pem, account.created_at))

    async def _issue(self, spec: CertificateSpec, replaces: str | None,
                     resume: Order | None, key_pem: str | None) -> IssuedCertificate:
        await self.ensure_account()
        deadline = asyncio.get_running_loop().time() + self.order_timeout.total_seconds()
        order_url, order = None, None
        if resume is not None:
            order_url, order = await self._resumable(spec, resume)
            key_pem = resume.key_pem or key_pem
        if order is None:
            # checked before anything is ordered: a profile the CA does not offer is refused
            # here (certd:profile), and none is sent to a CA that has no profiles
            profile = await self.profile_for(spec)
            order_url, order = await self.client.new_order(spec.domains, replaces=replaces,
                                                           profile=profile)
            log.info("acme[%s]: order %s (%s)%s", spec.name, order_url, ", ".join(spec.domains),
                     f" profile {profile}" if profile else "",
                     extra={"event": "order.new", "certificate": spec.name, "order": order_url})
        else:
            replaces = resume.replaces
            log.info("acme[%s]: resuming order %s (%s)", spec.name, order_url, _status(order))
        resumed = resume is not None and order_url == resume.url
        record = Order(spec.name, order_url, _status(order).value, domains=spec.domains,
                       key_pem=key_pem, replaces=replaces,
                       created_at=resume.created_at if resumed else utcnow())
        await self.store.save_order(record)
        try:
            if _status(order) == AcmeStatus.PENDING:
                await self._authorize_all(spec, order, deadline)
            if _status(order) not in (AcmeStatus.PROCESSING, AcmeStatus.VALID):
                order = await self._poll(lambda: self.client.get_order(order_url),
                                         (AcmeStatus.READY, AcmeStatus.PROCESSING,
                                          AcmeStatus.VALID, AcmeStatus.INVALID), deadline,
                                         "order")
            if _status(order) == AcmeStatus.READY:
                if key_pem is None:
                    key_pem = keys.key_to_pem(
                        await asyncio.to_thread(keys.generate_key, spec.key_type))
                # saved before finalize: after a crash, the certificate the CA issues for this
                # order can still be downloaded and used with this key
                record = replace(record, key_pem=key_pem, status=AcmeStatus.READY.value)
                await self.store.save_order(record)
                failpoints.hit("issue:key-saved")
                csr = keys.make_csr(keys.key_from_pem(key_pem), spec.domains)
                order = await self.client.finalize(order.finalize, csr)
                failpoints.hit("issue:finalized")
            if _status(order) == AcmeStatus.PROCESSING:
                order = await self._poll(lambda: self.client.get_order(order_url),
                                         (AcmeStatus.VALID, AcmeStatus.INVALID), deadline,
                                         "order")
            if _status(order) != AcmeStatus.VALID or not order.certificate:
                raise _order_error(order, "order is " + _status(order))
            if key_pem is None:
                raise AcmeError(f"acme[{spec.name}]: order {order_url} is valid but its key "
                                "was not saved", type="certd:order")
            certs = await self._download(order.certificate)
            issued = _issued(spec, keys.key_from_pem(key_pem), certs, order_url)
            issued = replace(issued, profile=await self._ordered_profile(spec, order))
        except AcmeError as exc:
            if exc.transient:  # the CA went away mid-order: keep it resumable
                await self.store.save_order(replace(record, error=str(exc)))
            else:
                await self.store.save_order(replace(record, status=AcmeStatus.INVALID.value,
                                                    error=str(exc), key_pem=None))
            raise
        log.info("acme[%s]: issued serial %s, valid until %s", spec.name, issued.serial,
                 issued.not_after.isoformat(),
                 extra={"event": "issue.ok", "certificate": spec.name, "order": order_url})
        return issued

    async def profile_for(self, spec: CertificateSpec) -> str | None:
        """The `profile` for a new order of `spec` at this CA (certd/issuance/profiles.py):
        None when none is asked for or the CA lists none; AcmeError (certd:profile) when the
        CA lists profiles but not the one asked for. Reads the directory (cached)."""
        if spec.profile is None:
            return None
        available = await self.client.profiles()
        if not available:
            log.info("acme[%s]: %s lists no profiles; ordering without profile %s",
                     spec.name, self.client.directory_url, spec.profile)
        return profiles.choose(spec.profile, available, certificate=spec.name,
                               directory=self.client.directory_url)

    async def _ordered_profile(self, spec: CertificateSpec, order: messages.Order
                               ) -> str | None:
        """The profile the certificate was ordered with: the order's own `profile` when the
        CA echoes it (and it is a usable name), else the one certd asked for (if the CA
        lists it)."""
        echoed = getattr(order, "profile", None)
        if isinstance(echoed, str) and profiles.PROFILE_RE.fullmatch(echoed):
            return echoed
        if spec.profile is None:
            return None
        try:
            return spec.profile if spec.profile in await self.client.profiles() else None
        except AcmeError:
            return None

    async def finished(self, order_url: str, spec: CertificateSpec) -> None:
        """The certificate is stored: forget the order's copy of the key."""
        await self.store.save_order(Order(spec.name, order_url, AcmeStatus.VALID.value,
                                          domains=spec.domains))

    async def _resumable(self, spec: CertificateSpec, previous: Order
                         ) -> tuple[str | None, messages.Order | None]:
        if set(previous.domains) != set(spec.domains):
            return None, None
        try:
            order, _ = await self.client.get_order(previous.url)
        except AcmeError as exc:
            if exc.transient:
                raise
            log.info("acme[%s]: previous order %s is gone (%s); ordering anew", spec.name,
                     previous.url, exc)
            return None, None
        if _status(order) not in (AcmeStatus.PENDING, AcmeStatus.READY, AcmeStatus.PROCESSING,
                                  AcmeStatus.VALID):
            return None, None
        if _status(order) in (AcmeStatus.PROCESSING, AcmeStatus.VALID) and not previous.key_pem:
            return None, None  # finalized with a key we never saved: unusable
        return previous.url, order

    async def _authorize_all(self, spec: CertificateSpec, order: messages.Order,
                             deadline: float) -> None:
        try:
            async with asyncio.TaskGroup() as group:
                for url in order.authorizations:
                    group.create_task(self._authorize(spec, url, deadline))
        except ExceptionGroup as eg:
            for exc in eg.exceptions:
                if isinstance(exc, AcmeError):
                    raise exc from None
            raise

    async def _authorize(self, spec: CertificateSpec, url: str, deadline: float) -> None:
        authz, _ = await self.client.get_authorization(url)
        value = (clean_text(getattr(authz.identifier, "value", None), 253)
                 if authz.identifier else "")
        name = value or url
        if _status(authz) == AcmeStatus.VALID:
            return  # reused by the CA: nothing to prove
        if _status(authz) != AcmeStatus.PENDING:
            raise AcmeError(f"acme[{spec.name}]: authorization for {name} is {_status(authz)}",
                            type="certd:authorization")
        # RFC 8555 §7.1.4: a wildcard's authorization names the base domain, wildcard: true
        wildcard = authz.wildcard is True
        solver = self.solvers.for_identifier(spec, f"*.{value}" if wildcard else value)
        challenge = next((c for c in authz.challenges or ()
                          if _challenge_type(c) == solver.type.value), None)
        if challenge is None:
            raise AcmeError(f"acme[{spec.name}]: no {solver.type} challenge offered for {name}",
                            type="certd:authorization")
        if solver.type == ChallengeType.DNS_PERSIST01:
            # no token: the customer's record names the CA and this account; the challenge
            # says which issuer names and account the CA expects (hostile JSON, checked)
            refusal = dns_persist.challenge_refusal(
                challenge.chall.jobj, dns_persist.issuer_domain_name_of(solver) or "",
                self.client.account_uri)
            if refusal:
                raise AcmeError(f"acme[{spec.name}]: {name}: {refusal}",
                                type="certd:authorization")
            token, key_authorization = "", ""
        else:
            token = challenge.chall.encode("token")
            if not isinstance(token, str) or not valid_token(token):
                raise AcmeError(f"acme[{spec.name}]: CA sent a malformed token for {name}",
                                type=MALFORMED)
            key_authorization = self.client.key_authorization(challenge)
        proof = Proof(certificate=spec.name, identifier=value, token=token,
                      key_authorization=key_authorization,
                      authorization_url=url, wildcard=wildcard)
        try:
            await solver.present(proof)
            if _status(challenge) == AcmeStatus.PENDING:
                await self.client.answer_challenge(challenge.uri)
            authz = await self._poll(lambda: self.client.get_authorization(url), AUTHZ_FINAL,
                                     deadline, f"authorization for {name}")
        finally:
            # the CA is done with the proof (or the order gave up on it): withdraw it now
            await _cleanup(solver, proof)
        if _status(authz) != AcmeStatus.VALID:
            raise _authz_error(spec.name, name, authz)

    async def _poll(self, fetch: Callable[[], Awaitable[tuple[T, float | None]]],
                    done: tuple[AcmeStatus, ...], deadline: float, what: str) -> T:
        loop = asyncio.get_running_loop()
        delay = FIRST_POLL
        while True:
            resource, retry_after = await fetch()
            if _status(resource) in done:
                return resource
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise AcmeError(f"acme: {what} still {_status(resource)} at the order deadline",
                                type="certd:timeout", transient=True)
            wait = retry_after if retry_after is not None else delay
            await asyncio.sleep(min(max(wait, FIRST_POLL), remaining))
            delay = min(delay * 2, MAX_POLL)

    async def _download(self, url: str) -> list[x509.Certificate]:
        """The chain exactly as the CA gives it; if it gives only the leaf, its issuer is
        fetched from Link: rel="up" (nothing is pinned or bundled by certd)."""
        resp = await self.client.download(url)
        certs = _parse_chain(resp, url)
        ups = resp.links.get("up")
        if len(certs) == 1 and ups:
            certs.extend(_parse_chain(await self.client.fetch_up(ups[0]), ups[0]))
        return certs


def account_jwk(key_pem: str) -> jose.JWK:
    """The account key as a JWK: certd makes EC keys; one imported from certbot is RSA."""
    key = keys.key_from_pem(key_pem)
    return jose.JWKRSA(key=key) if isinstance(key, rsa.RSAPrivateKey) else jose.JWKEC(key=key)


def _challenge_type(challenge: messages.ChallengeBody) -> str | None:
    """A challenge's type, also for those the acme package does not know (dns-persist-01
    comes as an UnrecognizedChallenge holding its JSON)."""
    chall = challenge.chall
    if isinstance(chall, challenges.UnrecognizedChallenge):
        typ = chall.jobj.get("type")
        return typ if isinstance(typ, str) else None
    return chall.typ


def _status(resource) -> AcmeStatus:
    return AcmeStatus.of(resource)


async def _cleanup(solver: Solver, proof: Proof) -> None:
    """solver.cleanup, whatever happens: shielded from the cancellation of a sibling
    authorization's failure, and never masking the order's own outcome (a failure to clean
    up is logged; an http-01 row expires, a dns-01 record is the solver's to retry)."""
    try:
        await asyncio.shield(solver.cleanup(proof))
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # noqa: BLE001 - the order's outcome is what the caller needs
        log.warning("acme[%s]: %s cleanup for %s failed: %s", proof.certificate, solver.type,
                    proof.identifier, clean_text(str(exc), 200),
                    extra={"certificate": proof.certificate})


def _parse_chain(resp: Response, url: str) -> list[x509.Certificate]:
    ctype = resp.headers.get("content-type", "")
    try:
        if "pkix-cert" in ctype:  # a single DER certificate, as some CAs serve issuers
            return [x509.load_der_x509_certificate(resp.body)]
        return keys.split_pem_certificates(resp.body.decode("ascii"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise AcmeError(f"acme: certificate download {url}: {clean_text(str(exc), 200)}",
                        type=MALFORMED) from None


def _issued(spec: CertificateSpec, key: keys.PrivateKey, certs: list[x509.Certificate],
            order_url: str) -> IssuedCertificate:
    """The stored-ready certificate, checked against our key and names. cryptography parses
    extensions and keys lazily: a CA's broken SAN, an unsupported key or a date out of range
    raise here (ValueError, UnsupportedAlgorithm, ...), and each is a malformed certificate."""
    try:
        return _checked(spec, key, certs, order_url)
    except AcmeError:
        raise
    except Exception as exc:  # noqa: BLE001 - the CA's certificate, whatever it holds
        raise AcmeError(f"acme[{spec.name}]: issued certificate unusable: "
                        f"{type(exc).__name__}: {clean_text(str(exc), 200)}",
                        type=MALFORMED) from None


def _checked(spec: CertificateSpec, key: keys.PrivateKey, certs: list[x509.Certificate],
             order_url: str) -> IssuedCertificate:
    leaf = certs[0]
    if not keys.same_public_key(leaf, key):
        raise AcmeError(f"acme[{spec.name}]: issued certificate does not match our key",
                        type=MALFORMED)
    missing = set(spec.domains) - set(keys.dns_names(leaf))
    if missing:
        raise AcmeError(f"acme[{spec.name}]: issued certificate lacks {sorted(missing)}",
                        type=MALFORMED)
    info = keys.cert_info(leaf)
    return IssuedCertificate(
        name=spec.name,
        serial=info.serial,
        domains=spec.domains,
        not_before=info.not_before,
        not_after=info.not_after,
        cert_pem=keys.cert_to_pem(leaf),
        chain_pem="".join(keys.cert_to_pem(c) for c in certs[1:]),
        key_pem=keys.key_to_pem(key),
        fingerprint_sha256=info.fingerprint_sha256,
        order_url=order_url,
    )


def _ca_error(err) -> tuple[str, str]:
    """A CA error document's type and detail, as safe strings (josepy keeps any JSON type)."""
    return (problem_type(getattr(err, "typ", None), "certd:order"),
            clean_text(getattr(err, "detail", None)))


def _order_error(order: messages.Order, fallback: str) -> AcmeError:
    if order.error is not None:
        typ, detail = _ca_error(order.error)
        return AcmeError(f"acme: {typ}: {detail or fallback}", type=typ, detail=detail)
    return AcmeError(f"acme: {fallback}", type="certd:order")


def _authz_error(cert: str, name: str, authz: messages.Authorization) -> AcmeError:
    for challenge in authz.challenges or ():
        if challenge.error is not None:
            typ, detail = _ca_error(challenge.error)
            return AcmeError(
                f"acme[{cert}]: validation of {name} failed: {typ}: {detail}",
                type=typ, detail=detail, identifier=name,
            )
    # acme2certifier marks the authorization invalid without any error document
    return AcmeError(f"acme[{cert}]: authorization for {name} is {_status(authz)}",
                     type="certd:authorization", identifier=name)
