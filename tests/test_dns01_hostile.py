"""The dns-01 solver facing hostile DNS servers (in-process fakes on loopback: what a real
server would never send): every answer gets a clear, bounded error in fixed words, and
nothing a server sent (names, bytes) reaches the message."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Callable

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.rrset
import dns.tsig
import pytest

from certd.issuance import dns01
from certd.issuance.solvers import Proof, dns01_txt_value
from tests.lab.procs import free_port

ZONE = "hostile.test"
SECRET = base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()
NASTY = b"\x1b[31mEVIL\x00"  # a label of raw bytes: escape sequence, NUL
KEY = dns.tsig.Key("certd", SECRET, "hmac-sha256")


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, answer: Callable[[bytes], bytes | None]):
        self.answer = answer

    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        reply = self.answer(data)
        if reply is not None:
            self.transport.sendto(reply, addr)


class FakeServer:
    """A UDP (queries) and TCP (updates) DNS server on 127.0.0.1:port answering with
    `udp(wire)` and `tcp(wire)` (None: no answer; b"": close the TCP connection)."""

    def __init__(self, udp=None, tcp=None):
        self.udp = udp or (lambda wire: None)
        self.tcp = tcp or (lambda wire: None)
        self.port = free_port(udp=True)

    async def __aenter__(self):
        loop = asyncio.get_running_loop()
        self._transport, _ = await loop.create_datagram_endpoint(
            lambda: _Udp(self.udp), local_addr=("127.0.0.1", self.port))
        self._server = await asyncio.start_server(self._stream, "127.0.0.1", self.port)
        return self

    async def __aexit__(self, *exc):
        self._transport.close()
        self._server.close()
        await self._server.wait_closed()

    async def _stream(self, reader, writer):
        try:
            size = int.from_bytes(await reader.readexactly(2), "big")
            reply = self.tcp(await reader.readexactly(size))
            if reply is None:
                await asyncio.sleep(30)
            elif reply:
                writer.write(len(reply).to_bytes(2, "big") + reply)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


def _solver(port: int, timeout: float = 3.0, **zone) -> dns01.Dns01Solver:
    z = dns01.Dns01Zone(
        label=ZONE, zone=dns.name.from_text(ZONE), server=("127.0.0.1", port),
        key=KEY,
        nameservers=zone.pop("nameservers", (("127.0.0.1", port),)),
        propagation_timeout=zone.pop("propagation_timeout", 2.0))
    return dns01.Dns01Solver(z, [z], query_timeout=timeout)


def _reply(wire: bytes, build: Callable[[dns.message.Message], None] | None = None,
           aa: bool = True) -> bytes:
    query = dns.message.from_wire(wire, keyring=KEY)  # an update is signed
    response = dns.message.make_response(query)
    if aa:
        response.flags |= dns.flags.AA
    if build:
        build(response)
    return response.to_wire()


def _nasty_chain(wire: bytes) -> bytes:
    """Every name is a CNAME to another name of raw bytes in the zone: an endless chain."""
    query = dns.message.from_wire(wire)
    qname = query.question[0].name
    target = dns.name.Name((NASTY, *qname.labels[-3:]))
    if qname.labels[0].startswith(NASTY):
        target = dns.name.Name((qname.labels[0] + b"x", *qname.labels[-3:]))

    def build(response):
        response.answer.append(dns.rrset.from_text(qname, 60, "IN", "CNAME",
                                                   target.to_text()))
    return _reply(wire, build)


def _assert_clean(message: str) -> None:
    assert "\x1b" not in message and "\x00" not in message and "EVIL" not in message, message
    assert "\\027" not in message and "\\000" not in message, message  # nor escaped
    assert SECRET not in message


async def test_endless_chain_of_raw_byte_names_is_cut_without_quoting_them():
    async with FakeServer(udp=_nasty_chain) as server:
        started = time.monotonic()
        with pytest.raises(dns01.Dns01Error) as caught:
            await _solver(server.port).preflight(f"x.{ZONE}")
    message = str(caught.value)
    assert f"the CNAME chain of _acme-challenge.x.{ZONE} is longer than {dns01.MAX_CHAIN}" \
        in message, message
    _assert_clean(message)
    assert time.monotonic() - started < 20


async def test_cname_out_of_the_configured_zones_is_refused_unquoted():
    """_acme-challenge.x points to a raw-bytes name outside every dns-01 zone: asked of the
    resolver (here the same fake), which has nothing more, so the chain ends outside."""
    def answer(wire):
        qname = dns.message.from_wire(wire).question[0].name

        def build(response):
            if qname.is_subdomain(dns.name.from_text(ZONE)):
                target = dns.name.Name((NASTY, b"outside", b"invalid", b""))
                response.answer.append(dns.rrset.from_text(qname, 60, "IN", "CNAME",
                                                           target.to_text()))
        return _reply(wire, build)

    async with FakeServer(udp=answer) as server:
        solver = _solver(server.port)
        solver.resolver = ("127.0.0.1", server.port)
        with pytest.raises(dns01.Dns01Error) as caught:
            await solver.preflight(f"x.{ZONE}")
    message = str(caught.value)
    assert (f"_acme-challenge.x.{ZONE} has a CNAME to a name outside the zones the dns-01 "
            "rules configure") in message, message
    _assert_clean(message)
    assert "outside.invalid" not in message


@pytest.mark.parametrize("garbage", [b"", b"\x00" * 5, NASTY * 40])
async def test_garbage_answers_give_fixed_words_within_the_timeout(garbage):
    def answer(wire):  # the query's id, then junk
        return wire[:2] + garbage

    async with FakeServer(udp=answer) as server:
        started = time.monotonic()
        with pytest.raises(dns01.Dns01Error) as caught:
            await _solver(server.port, timeout=1.0).preflight(f"x.{ZONE}")
    message = str(caught.value)
    assert f"looking up the CNAME chain of _acme-challenge.x.{ZONE} at 127.0.0.1:" in message
    assert "unusable answer" in message or "no answer within 1s" in message, message
    _assert_clean(message)
    assert caught.value.transient
    assert time.monotonic() - started < 10


@pytest.mark.parametrize("tcp, words", [
    (lambda wire: b"", "the connection closed"),
    (lambda wire: wire[:2] + NASTY, "an unusable answer"),
    (lambda wire: None, "no answer within 1s"),
    (lambda wire: _reply(wire, lambda r: r.set_rcode(dns.rcode.REFUSED)),
     "the server refused the update"),
    (lambda wire: _reply(wire, lambda r: r.set_rcode(dns.rcode.NOTAUTH)),
     "not authoritative for the zone, or refused the TSIG key"),
])
async def test_update_failures_are_clear(tcp, words):
    no_cname = _reply  # every name: no CNAME (NOERROR, empty answer)
    async with FakeServer(udp=no_cname, tcp=tcp) as server:
        with pytest.raises(dns01.Dns01Error) as caught:
            await asyncio.wait_for(_solver(server.port, timeout=1.0).preflight(f"x.{ZONE}"), 20)
    message = str(caught.value)
    assert f"adding the TXT at _acme-challenge.x.{ZONE} through 127.0.0.1:" in message
    assert words in message, message
    _assert_clean(message)


async def test_a_server_that_answers_without_authority_is_not_counted():
    """The propagation check wants an authoritative answer carrying the value: a server
    echoing it without AA (a cache, a lame server) never counts, and the wait ends clearly."""
    proof = Proof("c", f"x.{ZONE}", "t" * 43, "t" * 43 + ".thumb", "authz")
    value = dns01_txt_value(proof.key_authorization)

    def txt_without_aa(wire):
        query = dns.message.from_wire(wire)
        qname = query.question[0].name

        def build(response):
            if query.question[0].rdtype == dns.rdatatype.TXT:
                response.answer.append(dns.rrset.from_text(qname, 60, "IN", "TXT",
                                                           f'"{value}"'))
        return _reply(wire, build, aa=False)

    def update_ok(wire):
        return _reply(wire)

    async with FakeServer(udp=txt_without_aa, tcp=update_ok) as server:
        with pytest.raises(dns01.Dns01Error) as caught:
            await asyncio.wait_for(_solver(server.port).present(proof), 20)
    message = str(caught.value)
    assert "not served by 127.0.0.1:" in message and "after 2s" in message, message
