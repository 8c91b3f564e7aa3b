"""Several `certd run` instances on one PostgreSQL database, behind the lab's frontends (issue
13, "Tests against real software"): every node's `/.well-known/acme-challenge/` upstream names
both instances' challenge listeners (round robin), so the CA's validation requests reach
whichever instance nginx picks, not the one that placed the order. Orders are counted from
pebble's side. Faults: kill -9 of one instance, a PostgreSQL restart, one instance cut off
from PostgreSQL (a partition), one stalled after the CA issued (fencing)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
import urllib.request
from collections import Counter

import pytest
import yaml
from cryptography import x509

from certd.store.postgres import PostgresStore
from tests.certd_lab import (
    Daemon,
    lab_config_data,
    run_certd,
    served_serial,
    write_config,
)
from tests.lab.procs import free_port, stop_all, tcp_open, wait_until
from tests.stores import opened

pytestmark = pytest.mark.lab

PATIENCE = 150.0  # bound on the waits below: far above what a pass takes
SERVED = "challenge: served token"  # the responder's debug line (log_level: debug)


class Webhook:
    """A webhook receiver on 127.0.0.1 in a thread: records every JSON body (a digest's
    items counted one by one in `notices`)."""

    def __init__(self):
        import http.server
        import threading

        bodies = self.bodies = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - the http.server name
                length = int(self.headers.get("Content-Length", 0))
                bodies.append(json.loads(self.rfile.read(length)))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def notices(self) -> list[dict]:
        out = []
        for body in list(self.bodies):
            out += body["items"] if body.get("event") == "digest" else [body]
        return out

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)


def names(n: int, prefix: str = "multi") -> list[str]:
    return [f"{prefix}{i:02d}" for i in range(n)]


def instance_config(lab, db, tmp_path, index: int, certificates: list[str], pebble,
                    **overrides) -> tuple:
    """(config path, challenge listen address) of instance `index`: the shared database, its
    own state_dir, challenge and API listeners."""
    challenge = f"127.0.0.1:{free_port()}"
    data = lab_config_data(lab, tmp_path / f"state{index}",
                           [{"name": n, "domains": [f"{n}.test"], "frontends": ["web"]}
                            for n in certificates], pebble)
    data.update(storage=db.url, storage_password_file=str(db.password_file))
    data["challenge"] = {"listen": challenge}
    data["renewal"] = {"jitter": "0s", "backoff": ["1s", "2s", "3s"]}
    data["api"]["metrics_auth"] = False
    for key, value in overrides.items():
        data[key] = {**data.get(key, {}), **value}
    return write_config(tmp_path / f"certd{index}.yaml", data), challenge


def start_instances(lab, db, tmp_path, certificates, pebble, count: int = 2, **overrides
                    ) -> list[Daemon]:
    configs = [instance_config(lab, db, tmp_path, i, certificates, pebble, **overrides)
               for i in range(count)]
    lab.set_challenge_servers([listen for _, listen in configs])
    # the CA is held (SIGSTOP) until every instance listens for challenges: on a loaded
    # machine the first instance up could otherwise order and validate everything before
    # the others have bound theirs, and "either instance answers" would go unseen
    os.kill(pebble.process.pid, signal.SIGSTOP)
    try:
        daemons = [Daemon(path, tmp_path / f"certd{i}.log")
                   for i, (path, _) in enumerate(configs)]
        for _, listen in configs:
            host, _, port = listen.rpartition(":")
            wait_until(lambda h=host, p=int(port): tcp_open(h, p), 60, interval=0.05,
                       what=f"a certd instance listening on {listen}")
    finally:
        os.kill(pebble.process.pid, signal.SIGCONT)
    return daemons


def wait_served_everywhere(lab, certificates: list[str], daemons: list[Daemon],
                           timeout: float = PATIENCE) -> dict[str, str]:
    """Until every node serves a pebble certificate for every name (one serial per name on
    all nodes); returns name -> hex serial."""
    deadline = time.monotonic() + timeout
    while True:
        serials = {n: {served_serial(lab, node.name, f"{n}.test") for node in lab.nodes}
                   for n in certificates}
        # the fallback is self-signed: a pebble serial is long; '' = handshake failed
        done = {n: s.pop() for n, s in serials.items() if len(s) == 1 and "" not in s}
        fallback = served_serial(lab, "fe1", "nothing-deployed.test")
        done = {n: s for n, s in done.items() if s != fallback}
        if len(done) == len(certificates):
            return done
        if time.monotonic() > deadline:
            tails = "\n".join(d.log_tail(30) for d in daemons)
            raise AssertionError(f"served so far {len(done)}/{len(certificates)}\n{tails}")
        for d in daemons:
            assert d.alive() or d.proc.returncode == -9, d.log_tail()
        time.sleep(0.3)


def stored_history(db, certificates: list[str]) -> dict[str, list]:
    async def read():
        async with opened(PostgresStore(db.url, password_file=db.password_file)) as store:
            return {n: await store.certificate_history(n, limit=100) for n in certificates}
    return asyncio.run(read())


def assert_pairs_match(history: dict[str, list]) -> None:
    """Every stored certificate goes with its own key (no mixed pair)."""
    from cryptography.hazmat.primitives import serialization

    def public(pem_obj):
        return pem_obj.public_bytes(serialization.Encoding.DER,
                                    serialization.PublicFormat.SubjectPublicKeyInfo)

    for name, certs in history.items():
        for cert in certs:
            if not cert.key_pem:
                continue
            leaf = x509.load_pem_x509_certificate(cert.cert_pem.encode())
            key = serialization.load_pem_private_key(cert.key_pem.encode(), None)
            assert public(leaf.public_key()) == public(key.public_key()), name


def test_two_instances_issue_20_certificates_each_exactly_once(lab, postgres_database,
                                                                tmp_path):
    db = postgres_database
    pebble = lab.start_pebble()
    certificates = names(20)
    lab.set_sites({n: [f"{n}.test"] for n in certificates})
    daemons: list[Daemon] = []
    hook = Webhook()
    try:
        # the monitor (first sweep 5 s after start) finds every name: pebble's root is not
        # in its trust store, and the certificates last 5 years; each finding must be
        # notified once, by whichever instance swept
        daemons = start_instances(lab, db, tmp_path, certificates, pebble,
                                  alerts={"notifiers": [{"type": "webhook", "url": hook.url}],
                                          "group_window": "1s"})
        started = time.monotonic()
        serials = wait_served_everywhere(lab, certificates, daemons)
        took = time.monotonic() - started
        # a little more time for anything a duplicate order would take, then count
        time.sleep(2)
        assert pebble.count_new_orders() == 20, pebble.count_new_orders()
        assert pebble.count_issued() == 20
        history = stored_history(db, certificates)
        assert {n: len(h) for n, h in history.items()} == {n: 1 for n in certificates}
        assert {n: format(int(h[0].serial, 16), "x") for n, h in history.items()} == serials
        assert_pairs_match(history)
        # both instances answered the CA's validation requests (round robin through nginx)
        answered = [d.log().count(SERVED) for d in daemons]
        assert all(answered) and sum(answered) >= 20, answered
        ordered = Counter(i for i, d in enumerate(daemons)
                          for line in d.log().splitlines() if ": ordering (" in line)
        print(f"20 certificates in {took:.1f}s; orders by instance {dict(ordered)}; "
              f"challenges answered by instance {answered}")
        assert sum(ordered.values()) == 20
        # one ACME account for both (one key, made under a lease): either can resume the
        # other's orders
        registered = {line.rsplit(" ", 1)[-1] for d in daemons
                      for line in d.log().splitlines() if "acme: registered account" in line}
        assert len(registered) == 1, registered
        for d in daemons:
            assert d.alive(), d.log_tail()
        # both alive in the store's heartbeat rows: `certd status` and each one's /metrics
        status = run_certd(tmp_path / "certd0.yaml", "status", "--instances", "--json")
        assert status.returncode == 0, status.stderr
        view = json.loads(status.stdout)
        assert view["store"]["ok"] and view["alive"] == 2
        assert sorted(i["pid"] for i in view["instances"]) == sorted(d.proc.pid for d in daemons)
        table = run_certd(tmp_path / "certd1.yaml", "status")
        assert "instances: 2 alive; store ok" in table.stdout, table.stdout
        for i in range(2):
            api = yaml.safe_load((tmp_path / f"certd{i}.yaml").read_text())["api"]["listen"]
            with urllib.request.urlopen(f"http://{api}/metrics", timeout=10) as answer:
                metrics = answer.read().decode()
            assert "certd_instances_alive 2.0" in metrics
            assert "certd_store_up 1.0" in metrics
        # one monitor sweep for both (the `monitor` lease), each finding notified once
        deadline = time.monotonic() + 60
        while len(hook.notices()) < 80 and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(3)  # anything a second sweep would send
        findings = Counter((n["check"], n["domain"], n["node"], n["event"])
                           for n in hook.notices())
        assert len(findings) == 80 and set(findings.values()) == {1}, findings.most_common(3)
        swept = [d.log().count("monitor: swept") for d in daemons]
        assert sorted(swept) == [0, 1], swept
    finally:
        hook.stop()
        stop_all(daemons)
        lab.set_challenge_servers(None)
        pebble.stop()


def assert_node_pairs_match(lab, certificates: list[str]) -> None:
    """Every node holds each certificate with its own key (privkey.pem, fullchain.pem)."""
    from cryptography.hazmat.primitives import serialization

    for node in lab.nodes:
        for name in certificates:
            directory = lab.cert_dir(node.name, name)
            leaf = x509.load_pem_x509_certificate((directory / "fullchain.pem").read_bytes())
            key = serialization.load_pem_private_key((directory / "privkey.pem").read_bytes(),
                                                     None)
            assert leaf.public_key().public_numbers() == key.public_key().public_numbers(), \
                f"{node.name}/{name}: mixed key and certificate"


@pytest.mark.parametrize("kill", ["failpoint", "external"])
def test_kill_9_of_one_instance_mid_run_the_other_finishes(lab, postgres_database, tmp_path,
                                                           kill):
    # failpoint: instance 0 SIGKILLs itself right after the CA issued its first certificate
    # (the key saved, the certificate not stored), one order at a time; external: kill -9
    # from outside once the CA has issued 5 of the 20, orders in flight
    db = postgres_database
    pebble = lab.start_pebble()
    certificates = names(20, prefix=f"k9{kill[0]}")
    lab.set_sites({n: [f"{n}.test"] for n in certificates})
    daemons: list[Daemon] = []
    try:
        configs = [instance_config(lab, db, tmp_path, i, certificates, pebble,
                                   renewal={"max_concurrent": 1 if kill == "failpoint" else 4})
                   for i in range(2)]
        lab.set_challenge_servers([listen for _, listen in configs])
        env = {"CERTD_FAILPOINT": "issue:finalized"} if kill == "failpoint" else {}
        daemons = [Daemon(configs[0][0], tmp_path / "certd0.log", env=env),
                   Daemon(configs[1][0], tmp_path / "certd1.log")]
        started = time.monotonic()
        victim = daemons[0]
        if kill == "failpoint":
            deadline = time.monotonic() + PATIENCE
            while victim.alive() and time.monotonic() < deadline:
                time.sleep(0.05)
            assert victim.proc.returncode == -9, victim.log_tail()
        else:
            deadline = time.monotonic() + PATIENCE
            while pebble.count_issued() < 5 and time.monotonic() < deadline:
                time.sleep(0.02)
            victim.kill9()
        issued_at_kill = pebble.count_issued()
        serials = wait_served_everywhere(lab, certificates, daemons[1:])
        took = time.monotonic() - started
        time.sleep(2)
        orders, issued = pebble.count_new_orders(), pebble.count_issued()
        print(f"kill -9 ({kill}) with {issued_at_kill} issued: all 20 served after "
              f"{took:.1f}s; pebble: {orders} orders, {issued} issued")
        history = stored_history(db, certificates)
        twice = {n: [c.serial for c in h] for n, h in history.items() if len(h) != 1}
        assert issued == 20, (twice, [d.log_path for d in daemons])  # nothing issued twice
        if kill == "failpoint":
            assert orders == 20
            assert "resuming order" in daemons[1].log()
        history = stored_history(db, certificates)
        assert {n: len(h) for n, h in history.items()} == {n: 1 for n in certificates}
        assert {n: format(int(h[0].serial, 16), "x") for n, h in history.items()} == serials
        assert_pairs_match(history)
        assert_node_pairs_match(lab, certificates)
        assert daemons[1].alive(), daemons[1].log_tail()
    finally:
        stop_all(daemons)
        lab.set_challenge_servers(None)
        pebble.stop()


def test_postgresql_restarted_mid_run_both_instances_carry_on(lab, tmp_path):
    # a private cluster (the session's is shared): stopped once the CA has issued 5 of the
    # 20, started again 2 s later; meanwhile both listeners answer a token they cached
    from datetime import timedelta

    from certd.model import Challenge, utcnow
    from tests.lab.postgres import PostgresCluster

    cluster = PostgresCluster.create()
    pebble = None
    daemons: list[Daemon] = []
    try:
        cluster.start()
        db = cluster.database()
        pebble = lab.start_pebble()
        certificates = names(20, prefix="pgr")
        lab.set_sites({n: [f"{n}.test"] for n in certificates})
        configs = [instance_config(lab, db, tmp_path, i, certificates, pebble,
                                   renewal={"max_concurrent": 2}) for i in range(2)]
        lab.set_challenge_servers([listen for _, listen in configs])
        daemons = [Daemon(path, tmp_path / f"certd{i}.log") for i, (path, _) in
                   enumerate(configs)]
        for d in daemons:
            d.wait_log("api listening on", timeout=60)
        token = "evaGxfADs6pSRb2LAv9IZf17Dt3juxGJ-PCt92wr-oA"

        async def publish() -> None:
            async with opened(PostgresStore(db.url, password_file=db.password_file)) as s:
                await s.put_challenge(Challenge(token, token + ".thumb", "x", "u",
                                                utcnow() + timedelta(hours=1)))

        def answers() -> list[bytes]:
            got = []
            for _, listen in configs:
                url = f"http://{listen}/.well-known/acme-challenge/{token}"
                with urllib.request.urlopen(url, timeout=10) as answer:
                    got.append(answer.read())
            return got

        asyncio.run(publish())
        assert answers() == [(token + ".thumb").encode()] * 2
        deadline = time.monotonic() + PATIENCE
        while pebble.count_issued() < 5 and time.monotonic() < deadline:
            time.sleep(0.02)
        cluster.stop()
        issued_at_stop = pebble.count_issued()
        assert answers() == [(token + ".thumb").encode()] * 2  # from the cache
        time.sleep(2)
        cluster.start()
        started = time.monotonic()
        serials = wait_served_everywhere(lab, certificates, daemons)
        took = time.monotonic() - started
        time.sleep(2)
        orders, issued = pebble.count_new_orders(), pebble.count_issued()
        print(f"PostgreSQL restarted with {issued_at_stop} issued: all 20 served "
              f"{took:.1f}s after; pebble: {orders} orders, {issued} issued")
        assert issued == 20
        history = stored_history(db, certificates)
        assert {n: len(h) for n, h in history.items()} == {n: 1 for n in certificates}
        assert {n: format(int(h[0].serial, 16), "x") for n, h in history.items()} == serials
        assert_pairs_match(history)
        assert_node_pairs_match(lab, certificates)
        for d in daemons:
            assert d.alive(), d.log_tail()
    finally:
        stop_all(daemons)
        lab.set_challenge_servers(None)
        if pebble is not None:
            pebble.stop()
        cluster.destroy()


class Partition:
    """Cuts the processes `pids` off from PostgreSQL: a thread terminates every backend whose
    `application_name` is `certd:PID` (certd/store/pg_pool.py) over and over, through a
    superuser connection of its own on the cluster's private socket, until `stop()`; and
    their new logins fail meanwhile (`password_file`, theirs alone and read at each new
    connection, holds a wrong password): terminating alone lets a reconnecting process run
    a statement or two between passes, which a partition would not. It also samples, through
    a second connection, the leases `owner` holds and its heartbeat row, to tell whether the
    cut-off instance still got anything through."""

    PERIOD = 0.005  # seconds between two passes

    def __init__(self, db, pids: list[int], owner: str, password_file):
        import threading

        self.db, self.owner, self.password_file = db, owner, password_file
        self._password = password_file.read_text()
        self.names = [f"certd:{pid}" for pid in pids]
        self.killed = 0
        self.samples: list[tuple[float, frozenset[str], object]] = []  # (t, leases, last seen)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)
        self._first_pass = threading.Event()
        self.error: BaseException | None = None

    async def _connect(self):
        import asyncpg

        cluster = self.db.cluster
        return await asyncpg.connect(host=str(cluster.socket_dir), port=cluster.port,
                                     user="postgres", database=self.db.name)

    async def _run(self) -> None:
        try:
            killer, watcher = await self._connect(), await self._connect()
            try:
                next_sample = 0.0
                while not self._stop.is_set():
                    self.killed += await killer.fetchval(
                        "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) "
                        "FROM pg_stat_activity WHERE application_name = ANY($1::text[])",
                        self.names)
                    self._first_pass.set()
                    if time.monotonic() >= next_sample:
                        held = await watcher.fetch("SELECT name FROM leases WHERE owner = $1",
                                                   self.owner)
                        seen = await watcher.fetchval(
                            "SELECT last_seen_at FROM instances WHERE id = $1", self.owner)
                        self.samples.append((time.monotonic(),
                                             frozenset(r["name"] for r in held), seen))
                        next_sample = time.monotonic() + 0.25
                    await asyncio.sleep(self.PERIOD)
            finally:
                await killer.close()
                await watcher.close()
        except BaseException as exc:  # noqa: BLE001 - the test reports it
            self.error = exc
            self._first_pass.set()

    def start(self) -> None:
        self.password_file.write_text("not-the-password\n")
        self._thread.start()
        assert self._first_pass.wait(30) and self.error is None, self.error

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        self.password_file.write_text(self._password)
        assert self.error is None, self.error


def _issue_leases_of(db, pid: int) -> tuple[str | None, list[str]]:
    """(the instance id of the process `pid`, the issue leases it holds); (None, []) before
    its first heartbeat (or before the schema exists)."""
    from tests.lab.procs import LabError

    try:
        rows = db.psql("SELECT i.id, l.name FROM instances i LEFT JOIN leases l ON "
                       "l.owner = i.id AND l.name LIKE 'issue:%' AND l.expires_at > now() "
                       f"WHERE i.pid = {int(pid)}")
    except LabError as exc:
        if "does not exist" in str(exc):
            return None, []
        raise
    lines = [line.split("|") for line in rows.splitlines() if line]
    return (lines[0][0] if lines else None), [name for _, name in lines if name]


def test_an_instance_cut_off_from_postgresql_stops_taking_work_and_the_other_carries_on(
        lab, postgres_database, tmp_path):
    # instance 0 (A) is cut off (its backends terminated over and over) while it holds issue
    # leases with orders due, for longer than the takeover time (its heartbeat is stale after
    # instances.ALIVE_WITHIN, then the sweep of instance 1 (B) looks again within
    # sweep.BUSY_RECHECK); then it is let back in
    from certd import instances, sweep

    db = postgres_database
    pebble = lab.start_pebble()
    certificates = names(30, prefix="cut")
    lab.set_sites({n: [f"{n}.test"] for n in certificates})
    daemons: list[Daemon] = []
    partition = None
    cut_for = (instances.ALIVE_WITHIN + sweep.BUSY_RECHECK).total_seconds() + 15
    try:
        configs = [instance_config(lab, db, tmp_path, i, certificates, pebble,
                                   renewal={"max_concurrent": 1}) for i in range(2)]
        own_password = tmp_path / "password-a"  # A's own copy: its logins fail while cut off
        own_password.write_text(db.password_file.read_text())
        own_password.chmod(0o600)
        data = yaml.safe_load(configs[0][0].read_text())
        write_config(configs[0][0], {**data, "storage_password_file": str(own_password)})
        lab.set_challenge_servers([listen for _, listen in configs])
        daemons = [Daemon(path, tmp_path / f"certd{i}.log") for i, (path, _) in
                   enumerate(configs)]
        a, b = daemons
        # A holds an issue lease (an order in flight)
        deadline = time.monotonic() + PATIENCE
        while True:
            owner, held = _issue_leases_of(db, a.proc.pid)
            if owner and held:
                break
            assert time.monotonic() < deadline, a.log_tail()
            time.sleep(0.02)
        partition = Partition(db, [a.proc.pid], owner, own_password)
        partition.start()
        cut_at = time.monotonic()
        issued_at_cut = pebble.count_issued()
        time.sleep(2)  # what A had sent before the cut is done by now
        orders_of_a = a.log().count(": ordering (")
        time.sleep(max(0.0, cut_for - (time.monotonic() - cut_at)))
        # B took A's leases over: its log says so, and the names A held are issued
        assert "is dead; taken over" in b.log(), b.log_tail()
        during = [s for s in partition.samples if s[0] >= cut_at + 2]
        partition.stop()
        cut_took = time.monotonic() - cut_at
        sweeps = a.log().count("sweep done:")
        issued_during = pebble.count_issued() - issued_at_cut
        # A took no new work while cut off: no order started, no lease gained, no heartbeat
        assert a.log().count(": ordering (") == orders_of_a, a.log_tail()
        first = during[0]
        # ... and B took A's issue leases over (those still due: one whose certificate A
        # stored just before the cut, its release cut off, just expires), and carried on
        taken = [lease for lease in first[1] if f"lease {lease}: holder {owner} is dead; "
                 "taken over" in b.log()]
        assert any(lease.startswith("issue:") for lease in taken), (first, b.log_tail())
        assert issued_during > 0
        assert all(s[1] <= first[1] for s in during), [sorted(s[1]) for s in during]
        assert {s[2] for s in during} == {first[2]}, "a heartbeat got through the cut"
        assert a.alive(), a.log_tail()
        # everything served, each certificate issued once, no mixed pair
        serials = wait_served_everywhere(lab, certificates, daemons)
        # A rejoins: alive again in the store, sweeping again, and duplicates nothing
        deadline = time.monotonic() + PATIENCE
        beats = f"SELECT count(*) FROM instances WHERE id = '{owner}' AND last_seen_at > "
        beats += "statement_timestamp() - interval '6 seconds'"
        while a.log().count("sweep done:") <= sweeps or db.psql(beats) != "1":
            assert time.monotonic() < deadline, a.log_tail()
            time.sleep(0.3)
        status = run_certd(tmp_path / "certd0.yaml", "status", "--instances", "--json")
        assert status.returncode == 0, status.stderr
        assert json.loads(status.stdout)["alive"] == 2
        time.sleep(3)
        orders, issued = pebble.count_new_orders(), pebble.count_issued()
        fenced = db.psql("SELECT count(*) FROM events WHERE kind = 'issue.fenced'")
        print(f"cut off {cut_took:.1f}s ({partition.killed} backends terminated); A held "
              f"{sorted(first[1])}; {issued_at_cut} issued at the cut, {issued_during} while "
              f"cut off; pebble: {orders} orders, {issued} issued; fenced results: {fenced}")
        assert issued == len(certificates), [d.log_path for d in daemons]
        history = stored_history(db, certificates)
        assert {n: len(h) for n, h in history.items()} == {n: 1 for n in certificates}
        assert {n: format(int(h[0].serial, 16), "x") for n, h in history.items()} == serials
        assert_pairs_match(history)
        assert_node_pairs_match(lab, certificates)
        for d in daemons:
            assert d.alive(), d.log_tail()
    finally:
        if partition is not None and partition._thread.is_alive():
            partition._stop.set()
            partition._thread.join(timeout=30)
        stop_all(daemons)
        lab.set_challenge_servers(None)
        pebble.stop()


def _stopped(pid: int) -> bool:
    """True while process `pid` is stopped (SIGSTOP): state T in /proc/PID/stat."""
    from pathlib import Path

    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] in ("T", "t")


def test_an_instance_stalled_after_the_ca_issued_stores_nothing_once_taken_over(
        lab, postgres_database, tmp_path):
    # instance 0 (A) stops itself (SIGSTOP) right after the CA issued its first certificate
    # (the order's key saved, nothing stored): its heartbeat stops, B takes the issue lease
    # over, resumes the order and stores the certificate. Then A is continued: its unit of
    # work finds the lease no longer its own (fencing) and stores nothing
    db = postgres_database
    pebble = lab.start_pebble()
    certificates = names(4, prefix="stl")
    lab.set_sites({n: [f"{n}.test"] for n in certificates})
    daemons: list[Daemon] = []
    try:
        configs = [instance_config(lab, db, tmp_path, i, certificates, pebble,
                                   renewal={"max_concurrent": 1}) for i in range(2)]
        lab.set_challenge_servers([listen for _, listen in configs])
        env = {"CERTD_FAILPOINT": "issue:finalized", "CERTD_FAILPOINT_ACTION": "stop"}
        daemons = [Daemon(configs[0][0], tmp_path / "certd0.log", env=env),
                   Daemon(configs[1][0], tmp_path / "certd1.log")]
        a, b = daemons
        deadline = time.monotonic() + PATIENCE
        while not _stopped(a.proc.pid):
            assert a.alive() and time.monotonic() < deadline, a.log_tail()
            time.sleep(0.05)
        stalled = [line.split("certificate[", 1)[1].split("]", 1)[0]
                   for line in a.log().splitlines() if ": ordering (" in line][-1]
        # B takes the lease over from the silent A, resumes its order, stores, deploys
        serials = wait_served_everywhere(lab, certificates, [b])
        assert "resuming order" in b.log(), b.log_tail()
        assert f"lease issue:{stalled}: holder" in b.log()
        os.kill(a.proc.pid, signal.SIGCONT)
        deadline = time.monotonic() + PATIENCE
        fenced = f"lease issue:{stalled} was taken over while ordering"
        while fenced not in a.log():
            assert a.alive() and time.monotonic() < deadline, a.log_tail()
            time.sleep(0.1)
        time.sleep(2)
        orders, issued = pebble.count_new_orders(), pebble.count_issued()
        print(f"A stalled after the CA issued {stalled}; B resumed it; A continued and was "
              f"fenced; pebble: {orders} orders, {issued} issued")
        assert (orders, issued) == (4, 4)
        history = stored_history(db, certificates)
        assert {n: len(h) for n, h in history.items()} == {n: 1 for n in certificates}
        assert {n: format(int(h[0].serial, 16), "x") for n, h in history.items()} == serials
        assert_pairs_match(history)
        assert_node_pairs_match(lab, certificates)
        events = db.psql("SELECT certificate FROM events WHERE kind = 'issue.fenced'")
        assert events.splitlines() == [stalled]
        for d in daemons:
            assert d.alive(), d.log_tail()
    finally:
        for d in daemons:  # a stopped process would not see SIGTERM
            if d.alive():
                os.kill(d.proc.pid, signal.SIGCONT)
        stop_all(daemons)
        lab.set_challenge_servers(None)
        pebble.stop()
