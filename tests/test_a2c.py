"""Smoke test of the acme2certifier lab server: ARI directory, a real issuance through
the lab's haproxy -> nginx -> listener chain, renewalInfo for the certificate under
each window preset, and newOrder's ``replaces`` being recorded."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tests.lab import WINDOWS, Acme2Certifier, Lab, StandInResponder, ari_cert_id


import josepy as jose
from acme import challenges, client, crypto_util, messages


class NewOrderReplacing(messages.NewOrder):
    """newOrder with RFC 9773's ``replaces`` (the acme package has no such field)."""

    replaces: str | None = jose.field("replaces", omitempty=True)


@pytest.fixture(scope="module")
def responder(lab: Lab) -> Iterator[StandInResponder]:
    """A stand-in for certd's challenge listener: 404 for tokens it was not given."""
    with StandInResponder(lab.challenge_listen) as stand_in:
        yield stand_in


def _acme_client(server: Acme2Certifier) -> tuple[client.ClientV2, jose.JWK]:
    account_key = jose.JWKRSA(key=rsa.generate_private_key(public_exponent=65537, key_size=2048))
    verify: bool | str = str(server.ca_bundle) if server.ca_bundle else True
    net = client.ClientNetwork(account_key, user_agent="certd-lab-a2c-smoke", verify_ssl=verify)
    acme = client.ClientV2(client.ClientV2.get_directory(server.directory_url, net), net)
    acme.new_account(messages.NewRegistration.from_data(terms_of_service_agreed=True))
    return acme, account_key


def _new_order(
    acme: client.ClientV2, csr_pem: bytes, domains: list[str], replaces: str | None = None
) -> messages.OrderResource:
    """ClientV2.new_order, plus ``replaces``."""
    order = NewOrderReplacing(
        identifiers=[messages.Identifier(typ=messages.IDENTIFIER_FQDN, value=d) for d in domains],
        replaces=replaces,
    )
    response = acme.net.post(acme.directory["newOrder"], order)
    body = messages.Order.from_json(response.json())
    authorizations = [
        messages.AuthorizationResource(
            body=messages.Authorization.from_json(acme.net.post(url, None).json()), uri=url
        )
        for url in body.authorizations
    ]
    return messages.OrderResource(
        body=body, uri=response.headers.get("Location"),
        authorizations=authorizations, csr_pem=csr_pem,
    )


def _issue(
    server: Acme2Certifier,
    responder: StandInResponder,
    domains: list[str],
    replaces: str | None = None,
) -> x509.Certificate:
    """Issue a certificate for ``domains`` with the acme package; return the leaf
    (after checking the chain up to the server's root)."""
    acme, account_key = _acme_client(server)
    key_pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    order = _new_order(acme, crypto_util.make_csr(key_pem, domains), domains, replaces)
    for authz in order.authorizations:
        challenge = next(c for c in authz.body.challenges if isinstance(c.chall, challenges.HTTP01))
        response, validation = challenge.response_and_validation(account_key)
        responder.set(challenge.chall.encode("token"), validation)
        acme.answer_challenge(challenge, response)
    order = acme.poll_and_finalize(order, dt.datetime.now() + dt.timedelta(seconds=20))

    chain = x509.load_pem_x509_certificates(order.fullchain_pem.encode())
    leaf, issuing = chain[0], chain[1]
    root = x509.load_pem_x509_certificate(server.root_pem().encode())
    leaf.verify_directly_issued_by(issuing)
    issuing.verify_directly_issued_by(root)
    assert issuing.public_bytes(serialization.Encoding.PEM).decode() == server.issuing_ca_pem()
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sorted(sans.get_values_for_type(x509.DNSName)) == sorted(domains)
    return leaf


def _window(document: dict) -> tuple[dt.datetime, dt.datetime]:
    window = document["suggestedWindow"]
    start = dt.datetime.fromisoformat(window["start"].replace("Z", "+00:00"))
    end = dt.datetime.fromisoformat(window["end"].replace("Z", "+00:00"))
    return start, end


def test_directory_advertises_renewal_info(a2c: Acme2Certifier) -> None:
    response = requests.get(a2c.directory_url, timeout=5)
    response.raise_for_status()
    directory = response.json()
    assert {"newAccount", "newNonce", "newOrder", "renewalInfo"} <= set(directory)
    # Every URL is built from the Host we used: 127.0.0.1, never localhost.
    urls = [v for v in directory.values() if isinstance(v, str) and v.startswith("http")]
    assert all(u.startswith(a2c.base_url + "/") for u in urls if "letsencrypt.org" not in u)
    assert a2c.ca_bundle is None
    assert "BEGIN CERTIFICATE" in a2c.root_pem()
    assert a2c.count_new_orders() == 0


def test_issuance_through_the_lab_and_ari_windows(
    lab: Lab, a2c: Acme2Certifier, responder: StandInResponder
) -> None:
    seen_before = len(responder.seen)
    leaf = _issue(a2c, responder, ["a2c-smoke.test", "www.a2c-smoke.test"])

    # 90-day certificate by default.
    assert leaf.not_valid_after_utc - leaf.not_valid_before_utc == dt.timedelta(days=90)
    # The validation requests came through haproxy and an nginx node, Host kept.
    validations = [r for r in responder.seen[seen_before:] if r.status == 200]
    assert {r.host for r in validations} == {"a2c-smoke.test", "www.a2c-smoke.test"}
    assert all(r.node in ("fe1", "fe2") and r.forwarded_for for r in validations)
    orders = a2c.new_orders()
    assert [(o["status"], o["replaces"]) for o in orders] == [(201, None)]

    # certID as RFC 9773 (and the acme package) build it.
    cert_id = ari_cert_id(leaf)
    assert cert_id == client._renewal_info_path_component(leaf)  # noqa: SLF001

    now = dt.datetime.now(dt.timezone.utc)
    issued, expires = leaf.not_valid_before_utc, leaf.not_valid_after_utc
    lifetime = expires - issued

    status, headers, document = a2c.renewal_info(leaf)
    assert status == 200, document
    assert int(headers["Retry-After"]) == WINDOWS["future"].retry_after
    start, end = _window(document)  # "future": [I + 85 % L, E]
    assert now < start < end == expires
    assert abs(start - (issued + lifetime * 0.85)) <= dt.timedelta(seconds=2)

    a2c.set_window("past")  # [I - L, I - L + 60 s]
    start, end = _window(a2c.renewal_info(leaf)[2])
    assert start < end < now
    assert end - start == dt.timedelta(seconds=60)

    a2c.set_window("now")  # [I, E]
    start, end = _window(a2c.renewal_info(leaf)[2])
    assert start <= now < end and start == issued and end == expires

    a2c.set_window("inverted")  # [I + 2 L, E]: end before start
    start, end = _window(a2c.renewal_info(leaf)[2])
    assert end < start and end == expires

    # An unknown certificate is a 404 problem document.
    other = x509.load_pem_x509_certificate(lab.listener_ca.cert_path.read_bytes())
    status, _, document = a2c.renewal_info(other)
    assert status == 404, document


@pytest.mark.parametrize("a2c", [{"tls": True, "validity_seconds": 600}], indirect=True)
def test_renewal_with_replaces_over_https(
    a2c: Acme2Certifier, responder: StandInResponder
) -> None:
    assert a2c.directory_url.startswith("https://127.0.0.1:") and a2c.ca_bundle is not None
    first = _issue(a2c, responder, ["a2c-renew.test"])
    assert first.not_valid_after_utc - first.not_valid_before_utc == dt.timedelta(seconds=600)

    cert_id = ari_cert_id(first)
    second = _issue(a2c, responder, ["a2c-renew.test"], replaces=cert_id)
    assert second.serial_number != first.serial_number
    assert a2c.count_new_orders() == 2
    assert a2c.count_new_orders(replaces=cert_id) == 1
    assert a2c.new_orders()[-1]["replaces"] == cert_id


def test_failed_validation_leaves_authorization_invalid(
    a2c: Acme2Certifier, responder: StandInResponder
) -> None:
    acme, account_key = _acme_client(a2c)
    key_pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    order = _new_order(acme, crypto_util.make_csr(key_pem, ["a2c-fail.test"]), ["a2c-fail.test"])
    authz = order.authorizations[0]
    challenge = next(c for c in authz.body.challenges if isinstance(c.chall, challenges.HTTP01))
    response, _validation = challenge.response_and_validation(account_key)
    acme.answer_challenge(challenge, response)  # the responder answers 404 for this token

    authz_after, _ = acme.poll(authz)
    assert authz_after.body.status == messages.STATUS_INVALID
    order_after = messages.Order.from_json(acme.net.post(order.uri, None).json())
    # Quirk (field notes): the order is not marked invalid; a client must look at
    # its authorizations.
    assert order_after.status != messages.STATUS_VALID
    assert order_after.status != messages.STATUS_READY
