"""Two authoritative BIND 9 servers (Debian's `bind9`) for the dns-01 tests: a primary that
takes RFC 2136 updates signed with a TSIG key, and a secondary that follows it by NOTIFY and
zone transfer (IXFR/AXFR), both on 127.0.0.1, each on its own free port (named binds only the
addresses of the machine's interfaces, and the lab adds none: 127.0.0.2 is not one).

Both run `named -g` (foreground, log to stderr, into the lab's log file) from a private
config in a temp directory: no rndc control channel, no system service, no port 53. The
secondary does not recurse; the primary does, for loopback clients only, because it is also
pebble's resolver (`-dnsserver`) and pebble does not follow a `_acme-challenge` CNAME itself:
the primary chases it through the zones it serves. Stopped by PID
(:class:`tests.lab.procs.ManagedProcess`). ::

    with BindLab.start(tmp_path, zones=("dns01.test", "acme.test")) as bind:
        bind.primary_address            # "127.0.0.1:PORT": where updates go
        bind.nameservers                # both servers, "host:port" each
        bind.key_file, bind.key_name    # the TSIG secret (base64) and its name
        bind.query("_acme-challenge.dns01.test", "TXT", role="secondary")
        bind.add_records("_x.dns01.test", "TXT", ["a value"])   # RFC 2136, TSIG-signed
        bind.delete_records("_x.dns01.test", "TXT")

Each zone has NS ns1.<first zone> and ns2.<first zone> (both 127.0.0.1: a client must be
told the ports, `nameservers`); ``extra_records`` adds records to the first zone, or to
each zone of a ``{zone: records}`` mapping (CNAMEs for the delegation and hostile-chain
tests); every name of the first zone resolves to ``a_address``. :meth:`add_records`,
:meth:`set_records` and :meth:`delete_records` change a zone at run time the way a customer's
DNS provider would: RFC 2136 updates to the primary, signed with the lab's TSIG key. :meth:`pause` / :meth:`resume`
freeze the secondary (SIGSTOP/SIGCONT, by PID): a record then reaches the primary only.
"""

from __future__ import annotations

import base64
import os
import secrets
import signal
from collections.abc import Mapping, Sequence
from pathlib import Path

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.TXT
import dns.tsigkeyring
import dns.update

from .procs import LabError, ManagedProcess, StopOnExit, free_port, stop_all, wait_until

__all__ = ["ADDRESS", "ALGORITHM", "KEY_NAME", "BindLab"]

ADDRESS = "127.0.0.1"
ROLES = ("primary", "secondary")
KEY_NAME = "certd-lab"
ALGORITHM = "hmac-sha256"
START_TIMEOUT = 30.0
LAME_ADDRESS = "127.0.0.77"  # set_servfail's name server: nothing listens there

_OPTIONS = """\
options {{
    directory "{workdir}";
    pid-file none;
    session-keyfile none;
    listen-on port {port} {{ {address}; }};
    listen-on-v6 {{ none; }};
    {recursion}
    dnssec-validation no;
    notify-delay 0;
    allow-query {{ 127.0.0.0/8; }};
    minimal-responses yes;
    servfail-ttl 0;  # a SERVFAIL test is undone at once (BIND caches them for 1 s)
    querylog no;
}};
controls {{ }};
"""

_KEY = """\
key "{name}" {{
    algorithm {algorithm};
    secret "{secret}";
}};
"""


class BindLab(StopOnExit):
    """A primary and a secondary for ``zones`` (see the module's docstring)."""

    def __init__(self, root: Path, zones: Sequence[str],
                 extra_records: Sequence[str] | Mapping[str, Sequence[str]] = (),
                 a_address: str = "127.0.0.1") -> None:
        if not zones:
            raise LabError("BindLab needs at least one zone")
        self.root = root
        self.zones = [z.rstrip(".").lower() for z in zones]
        # zone -> its extra records (a plain list: the first zone's)
        self.extra_records = ({z.rstrip(".").lower(): list(r) for z, r in extra_records.items()}
                              if isinstance(extra_records, Mapping)
                              else {self.zones[0]: list(extra_records)})
        self.a_address = a_address
        self.ports = {role: free_port((ADDRESS,), udp=True) for role in ROLES}
        self.primary_address = f"{ADDRESS}:{self.ports['primary']}"
        self.secondary_address = f"{ADDRESS}:{self.ports['secondary']}"
        self.nameservers = [self.primary_address, self.secondary_address]
        self.key_name = KEY_NAME
        self.algorithm = ALGORITHM
        self.secret = base64.b64encode(secrets.token_bytes(32)).decode("ascii")
        self.key_file = root / "tsig.key"  # the secret alone, as certd reads it
        self.processes: dict[str, ManagedProcess] = {}

    # ------------------------------------------------------------------- lifecycle

    @classmethod
    def start(cls, root: Path, zones: Sequence[str] = ("dns01.test",),
              extra_records: Sequence[str] | Mapping[str, Sequence[str]] = (), *,
              a_address: str = "127.0.0.1",
              timeout: float = START_TIMEOUT) -> BindLab:
        """Write both configs, start the primary then the secondary, and wait until the
        secondary serves every zone (its first transfer done)."""
        root = Path(root).resolve()
        root.mkdir(parents=True, exist_ok=True)
        lab = cls(root, zones, extra_records, a_address)
        try:
            lab._write()
            for role in ROLES:
                lab.processes[role] = ManagedProcess(
                    f"named-{role}",
                    ["named", "-g", "-4", "-n", "1", "-c", str(root / role / "named.conf")],
                    root / role / "named.log", cwd=root / role)
                lab.processes[role].start()
                lab.processes[role].wait_tcp([(ADDRESS, lab.ports[role])], timeout)
            for zone in lab.zones:
                for role in ROLES:
                    lab._wait_serves(role, zone, timeout)
        except BaseException:
            lab.stop()
            raise
        return lab

    def _write(self) -> None:
        self.key_file.write_text(self.secret + "\n")
        os.chmod(self.key_file, 0o600)
        key = _KEY.format(name=self.key_name, algorithm=self.algorithm, secret=self.secret)
        for role in ROLES:
            workdir = self.root / role
            workdir.mkdir(parents=True, exist_ok=True)
            # the primary is also pebble's resolver (-dnsserver): pebble does not follow a
            # CNAME itself, so the primary chases it through the zones it serves
            recursion = ("recursion yes; allow-recursion { 127.0.0.0/8; };"
                         if role == "primary" else "recursion no;")
            conf = [_OPTIONS.format(workdir=workdir, port=self.ports[role], address=ADDRESS,
                                    recursion=recursion), key]
            for zone in self.zones:
                if role == "primary":
                    (workdir / f"{zone}.zone").write_text(self._zone_text(zone))
                    conf.append(
                        f'zone "{zone}" {{\n    type primary;\n    file "{zone}.zone";\n'
                        f'    allow-update {{ key "{self.key_name}"; }};\n'
                        f'    allow-transfer {{ {ADDRESS}; }};\n'
                        f'    notify explicit;\n'
                        f'    also-notify {{ {ADDRESS} port {self.ports["secondary"]}; }};\n'
                        '};\n')
                else:
                    conf.append(
                        f'zone "{zone}" {{\n    type secondary;\n    file "{zone}.bk";\n'
                        f'    primaries {{ {ADDRESS} port {self.ports["primary"]}; }};\n'
                        f'    allow-notify {{ {ADDRESS}; }};\n'
                        f'    allow-transfer {{ none; }};\n}};\n')
            (workdir / "named.conf").write_text("".join(conf))

    def _zone_text(self, zone: str) -> str:
        ns_zone = self.zones[0]
        lines = [
            "$TTL 60",
            f"@ IN SOA ns1.{ns_zone}. hostmaster.{ns_zone}. 1 3600 600 86400 5",
            f"@ IN NS ns1.{ns_zone}.",
            f"@ IN NS ns2.{ns_zone}.",
        ]
        if zone == ns_zone:
            lines += [f"ns1 IN A {ADDRESS}", f"ns2 IN A {ADDRESS}",
                      f"@ IN A {self.a_address}", f"* IN A {self.a_address}"]
        elif ns_zone.endswith("." + zone):  # a parent ("test"): its NS names need glue
            lines += [f"ns1.{ns_zone}. IN A {ADDRESS}", f"ns2.{ns_zone}. IN A {ADDRESS}"]
        lines += self.extra_records.get(zone, [])
        return "\n".join(lines) + "\n"

    def _wait_serves(self, role: str, zone: str, timeout: float) -> None:
        try:
            wait_until(lambda: self._soa(role, zone), timeout, interval=0.05,
                       what=f"named-{role} to serve {zone}")
        except LabError:
            raise self.processes[role].fail(f"does not serve {zone}") from None

    def _soa(self, role: str, zone: str) -> bool:
        if not self.processes[role].alive():
            raise self.processes[role].fail("exited")
        try:
            response = self._ask(role, zone, "SOA", timeout=0.5)
        except (OSError, dns.exception.DNSException):
            return False
        return response.rcode() == 0 and bool(response.answer)

    def stop(self) -> None:
        """Stop both servers by PID (a paused one is woken first). Idempotent."""
        for process in self.processes.values():
            if process.alive() and process.pid is not None:
                try:
                    os.killpg(process.pid, signal.SIGCONT)
                except ProcessLookupError:
                    pass
        stop_all(reversed(list(self.processes.values())))

    # ------------------------------------------------------------------- helpers

    def pause(self, role: str = "secondary") -> None:
        """Freeze one server (SIGSTOP to its PID): it neither answers nor transfers."""
        os.kill(self._pid(role), signal.SIGSTOP)

    def resume(self, role: str = "secondary") -> None:
        """Thaw a server frozen by :meth:`pause`."""
        os.kill(self._pid(role), signal.SIGCONT)

    def _pid(self, role: str) -> int:
        process = self.processes[role]
        if process.pid is None or not process.alive():
            raise LabError(f"named-{role} is not running")
        return process.pid

    def _ask(self, role: str, name: str, rdtype: str, timeout: float = 2.0) -> dns.message.Message:
        query = dns.message.make_query(name, rdtype)
        query.flags &= ~dns.flags.RD
        return dns.query.udp(query, ADDRESS, timeout=timeout, port=self.ports[role])

    def query(self, name: str, rdtype: str, role: str = "primary") -> list[str]:
        """The records of type ``rdtype`` at ``name`` one server answers (text form; for TXT,
        the strings joined and unquoted); [] for none."""
        response = self._ask(role, name, rdtype)
        kind = dns.rdatatype.from_text(rdtype)
        out: list[str] = []
        for rrset in response.answer:
            if rrset.rdtype != kind or rrset.name != dns.name.from_text(name):
                continue
            for rdata in rrset:
                if kind == dns.rdatatype.TXT:
                    out.append(b"".join(rdata.strings).decode("ascii", "replace"))
                else:
                    out.append(rdata.to_text())
        return out

    # ------------------------------------------------------------------- RFC 2136

    def add_records(self, name: str, rdtype: str, values: Sequence[str | bytes]) -> None:
        """Add ``values`` to the ``rdtype`` records of ``name`` (an RFC 2136 update to the
        primary, TSIG-signed). TXT values are the record's contents as they are (str: UTF-8;
        control characters and all; split into 255-byte strings); other types take their
        presentation form (``'0 issue "ca.example"'`` for CAA, ``"ns.x.test."`` for NS).
        Returns once the primary accepted it (it serves it at once); raises LabError if not."""
        self._update(name, lambda update, owner: update.add(
            owner, 60, *(self._rdata(rdtype, value) for value in values)))

    def set_records(self, name: str, rdtype: str, values: Sequence[str | bytes]) -> None:
        """Replace the ``rdtype`` records of ``name`` by ``values`` (one update)."""
        def change(update: dns.update.UpdateMessage, owner: dns.name.Name) -> None:
            update.delete(owner, rdtype)
            update.add(owner, 60, *(self._rdata(rdtype, value) for value in values))
        self._update(name, change)

    def delete_records(self, name: str, rdtype: str | None = None) -> None:
        """Withdraw the ``rdtype`` records of ``name`` (every type's, None); no error if
        there are none."""
        self._update(name, lambda update, owner: (
            update.delete(owner) if rdtype is None else update.delete(owner, rdtype)))

    def set_servfail(self, name: str) -> None:
        """Make queries for ``name`` through the primary fail with SERVFAIL, at once: ``name``
        becomes a delegation to ``lame-ns.<zone>`` (127.0.0.77, nothing on its port 53),
        which the primary's recursion gives up on. Undo with :meth:`clear_servfail`."""
        server = f"lame-ns.{self._zone_of(name)}."
        self.set_records(server, "A", [LAME_ADDRESS])
        self.set_records(name, "NS", [server])

    def clear_servfail(self, name: str) -> None:
        """Undo :meth:`set_servfail` (the primary caches no SERVFAIL: ``servfail-ttl 0``)."""
        self.delete_records(name, "NS")

    def _zone_of(self, name: str) -> str:
        bare = name.rstrip(".").lower()
        zones = [z for z in self.zones if bare == z or bare.endswith("." + z)]
        if not zones:
            raise LabError(f"{name} is in none of the zones {self.zones}")
        return max(zones, key=len)

    @staticmethod
    def _rdata(rdtype: str, value: str | bytes) -> dns.rdata.Rdata:
        kind = dns.rdatatype.from_text(rdtype)
        if kind == dns.rdatatype.TXT:
            raw = value.encode("utf-8") if isinstance(value, str) else bytes(value)
            chunks = [raw[i:i + 255] for i in range(0, len(raw), 255)] or [b""]
            return dns.rdtypes.ANY.TXT.TXT(dns.rdataclass.IN, kind, chunks)
        text = value.decode("ascii") if isinstance(value, bytes) else value
        return dns.rdata.from_text(dns.rdataclass.IN, kind, text)

    def _update(self, name: str, change) -> None:
        zone = self._zone_of(name)
        keyring = dns.tsigkeyring.from_text({self.key_name: (self.algorithm, self.secret)})
        update = dns.update.UpdateMessage(zone, keyring=keyring, keyname=self.key_name,
                                          keyalgorithm=dns.name.from_text(self.algorithm))
        change(update, dns.name.from_text(name))
        try:
            response = dns.query.tcp(update, ADDRESS, timeout=5.0, port=self.ports["primary"])
        except (OSError, dns.exception.DNSException) as exc:
            raise LabError(f"update of {name} in {zone} failed: {exc}") from None
        if response.rcode() != dns.rcode.NOERROR:
            raise LabError(f"update of {name} in {zone} refused: "
                           f"{dns.rcode.to_text(response.rcode())}")

    def txt_everywhere(self, name: str) -> dict[str, list[str]]:
        """``{role: TXT values}`` of ``name`` on both servers."""
        return {role: self.query(name, "TXT", role) for role in ROLES}

    def wait_txt(self, name: str, predicate, timeout: float = 10.0) -> dict[str, list[str]]:
        """Poll both servers until ``predicate({role: values})`` holds; return the values."""
        return wait_until(lambda: (v if predicate(v := self.txt_everywhere(name)) else None),
                          timeout, interval=0.05, what=f"TXT of {name} on both servers")

    def log_paths(self) -> list[Path]:
        return [p.log_path for p in self.processes.values()]

    def logs(self, lines: int = 30) -> str:
        return "\n".join(f"--- {p.log_path} ---\n{p.log_tail(lines)}"
                         for p in self.processes.values())

    def __repr__(self) -> str:
        return f"<BindLab {self.root} ports={self.ports} zones={self.zones}>"
