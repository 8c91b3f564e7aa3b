"""Smoke test of the lab: every hop works, and a real pebble issuance goes through it."""

from __future__ import annotations

import datetime as dt
import ssl
import socket
from collections.abc import Iterator

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tests.lab import FALLBACK_CN, Lab, StandInResponder

FIXED = "stand-in says hello"


@pytest.fixture(scope="module")
def responder(lab: Lab) -> Iterator[StandInResponder]:
    """A stand-in for certd's challenge listener, answering unknown tokens with FIXED."""
    with StandInResponder(lab.challenge_listen, default=FIXED) as stand_in:
        yield stand_in


def test_challenge_path_reaches_both_nodes_and_the_listener(
    lab: Lab, responder: StandInResponder
) -> None:
    tokens = [f"routing-{i}" for i in range(4)]
    for token in tokens:
        status, body = lab.http_get("some.test", f"/.well-known/acme-challenge/{token}")
        assert (status, body) == (200, FIXED)

    # Round robin: each node saw half of the requests, with the Host kept.
    for node in ("fe1", "fe2"):
        lines = lab.wait_access_log(node, "/.well-known/acme-challenge/routing-", count=2)
        assert len(lines) == 2, (node, lab.access_log(node))
        assert all('"some.test"' in line and " 200 " in line for line in lines)

    seen = [r for r in responder.seen if r.path.rsplit("/", 1)[-1] in tokens]
    assert len(seen) == 4
    assert {r.node for r in seen} == {"fe1", "fe2"}
    assert all(r.host == "some.test" and r.forwarded_for for r in seen)


def test_everything_else_is_404(lab: Lab) -> None:
    assert lab.http_get("some.test", "/")[0] == 404
    assert lab.http_get("some.test", "/.well-known/other")[0] == 404


def test_pebble_directory_over_https(lab: Lab) -> None:
    response = requests.get(lab.pebble.directory_url, verify=str(lab.pebble.ca_bundle), timeout=5)
    response.raise_for_status()
    assert {"newAccount", "newNonce", "newOrder"} <= set(response.json())
    assert "BEGIN CERTIFICATE" in lab.pebble.root_pem()
    assert "BEGIN CERTIFICATE" in lab.pebble.intermediates_pem()


def test_dns_overrides(lab: Lab) -> None:
    import dns.message as dns_message  # dnspython is a certd dependency
    import dns.query as dns_query

    def resolve(name: str) -> list[str]:
        query = dns_message.make_query(name, "A")
        answer = dns_query.udp(query, "127.0.0.1", port=lab.challtestsrv.dns_port, timeout=2)
        return [rr.address for rrset in answer.answer for rr in rrset]

    assert resolve("anything.test") == ["127.0.0.1"]  # the load balancer by default
    lab.add_a("moved.test", "127.0.0.9")
    try:
        assert resolve("moved.test") == ["127.0.0.9"]
    finally:
        lab.clear_a("moved.test")
    assert resolve("moved.test") == ["127.0.0.1"]
    lab.add_caa("caa.test", [("issue", "ca.invalid")])
    lab.clear_caa("caa.test")


@pytest.mark.parametrize("node", ["fe1", "fe2"])
def test_fallback_certificate_for_unknown_names(lab: Lab, node: str) -> None:
    cert = lab.served_certificate(node, "unknown.test")
    assert cert.subject.rfc4514_string() == f"CN={FALLBACK_CN}"


def _issue_with_acme(lab: Lab, responder: StandInResponder, domains: list[str]) -> tuple[str, bytes]:
    """Issue a certificate for ``domains`` with the acme package; return (fullchain, key PEM)."""
    import josepy as jose
    from acme import challenges, client, crypto_util, messages

    account_key = jose.JWKRSA(key=rsa.generate_private_key(public_exponent=65537, key_size=2048))
    net = client.ClientNetwork(
        account_key, user_agent="certd-lab-smoke", verify_ssl=str(lab.pebble.ca_bundle)
    )
    acme = client.ClientV2(client.ClientV2.get_directory(lab.pebble.directory_url, net), net)
    acme.new_account(messages.NewRegistration.from_data(terms_of_service_agreed=True))

    key_pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    order = acme.new_order(crypto_util.make_csr(key_pem, domains))
    for authz in order.authorizations:
        challenge = next(c for c in authz.body.challenges if isinstance(c.chall, challenges.HTTP01))
        response, validation = challenge.response_and_validation(account_key)
        responder.set(challenge.chall.encode("token"), validation)
        acme.answer_challenge(challenge, response)
    deadline = dt.datetime.now() + dt.timedelta(seconds=20)
    order = acme.poll_and_finalize(order, deadline)
    return order.fullchain_pem, key_pem


def test_real_issuance_through_the_whole_chain(lab: Lab, responder: StandInResponder) -> None:
    orders_before = lab.pebble.count_new_orders()
    issued_before = lab.pebble.count_issued()

    fullchain, key_pem = _issue_with_acme(lab, responder, ["smoke.test"])

    assert lab.pebble.count_new_orders() == orders_before + 1
    assert lab.pebble.count_issued() == issued_before + 1
    # pebble sent its 3 validation requests through haproxy: both nodes forwarded some.
    token = next(t for t, body in responder.responses.items() if body.startswith(t + "."))
    for node in ("fe1", "fe2"):
        assert lab.wait_access_log(node, token)

    lab.set_sites({"smoke": ["smoke.test"]})
    for node in lab.nodes:
        directory = lab.cert_dir(node.name, "smoke")
        assert str(directory) == lab.deploy_path_template.format(
            node=node.name, certificate="smoke"
        )
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "privkey.pem").write_bytes(key_pem)
        (directory / "fullchain.pem").write_text(fullchain)

    leaf = x509.load_pem_x509_certificate(fullchain.encode())
    served = lab.wait_served_serial("fe1", "smoke.test", leaf.serial_number)
    assert served == leaf
    assert lab.wait_served_serial("fe2", "smoke.test", leaf.serial_number) == leaf

    # And a verifying client that trusts only pebble's root accepts it by name.
    context = ssl.create_default_context(cadata=lab.pebble.root_pem())
    with socket.create_connection(("127.0.0.2", lab.tls_port), timeout=5) as sock:
        with context.wrap_socket(sock, server_hostname="smoke.test") as tls:
            assert tls.version() in ("TLSv1.2", "TLSv1.3")
            tls.sendall(b"GET / HTTP/1.1\r\nHost: smoke.test\r\nConnection: close\r\n\r\n")
            reply = b""
            while chunk := tls.recv(4096):
                reply += chunk
    assert reply.endswith(b"fe1 smoke\n")
    assert lab.wait_access_log("fe1", 'sni="smoke.test" cert="smoke"')
