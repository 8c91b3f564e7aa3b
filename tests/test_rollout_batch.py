"""The batched rollout (issue 11) without a lab: an in-memory Deployer (a real implementation of
the Protocol whose `check` refuses any node holding a refused serial, as `nginx -t` refuses a
key that does not match) for the bisection and the strategy; the real file deployer with a
real check command (key matches certificate, for every set on the node) for the same; the
queue that gathers requests into batches; Certd.deploy of many names going out as one batch,
lease held elsewhere included."""

from __future__ import annotations

import asyncio
import shlex
import sys
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path


from certd import config as configuration
from certd import deployers, verify
from certd.batching import DeployQueue
from certd.deployers.base import DeployResult, Placement, Target
from certd.model import CertificateSpec, DeployStatus
from certd.rollout import Rollout, Work, targets
from certd.service import Certd
from tests.test_deploy_file import issued

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
PY = shlex.quote(sys.executable)


class MemoryDeployer:
    """The Deployer Protocol over a dict: node -> certificate -> serial. `check` fails on a
    node holding any serial in `refused` (the whole node's configuration is tested, as
    `nginx -t` does); every call is recorded."""

    kind = "memory"

    def __init__(self, refused: set[str] = frozenset(), broken_nodes: set[str] = frozenset()):
        self.live: dict[str, dict[str, str]] = {}
        self.previous: dict[tuple[str, str], str] = {}
        self.refused = set(refused)
        self.broken_nodes = set(broken_nodes)
        self.calls: list[list[tuple[str, str]]] = []  # each deploy: (node, certificate)
        self.checks: Counter = Counter()
        self.reloads: Counter = Counter()
        self.rolled_back: list[tuple[str, str]] = []

    async def deploy(self, batch: list[Placement]) -> list[DeployResult]:
        self.calls.append([(p.target.node, p.target.certificate) for p in batch])
        by_node: dict[str, list[int]] = {}
        for i, p in enumerate(batch):
            by_node.setdefault(p.target.node, []).append(i)
        out: list[DeployResult] = [None] * len(batch)  # type: ignore[list-item]
        for node, indexes in by_node.items():
            held = self.live.setdefault(node, {})
            was = {i: held.get(batch[i].target.certificate) for i in indexes}
            for i in indexes:
                held[batch[i].target.certificate] = batch[i].cert.serial
            self.checks[node] += 1
            if node in self.broken_nodes or set(held.values()) & self.refused:
                for i in indexes:
                    name = batch[i].target.certificate
                    back = was[i] is not None and was[i] != batch[i].cert.serial
                    if back:
                        held[name] = was[i]
                    out[i] = DeployResult(batch[i].target, False, f"memory[{node}]: check: "
                                          "exit 1", back, kind="check")
                continue
            self.reloads[node] += 1
            for i in indexes:
                name = batch[i].target.certificate
                if was[i] not in (None, batch[i].cert.serial):
                    self.previous[(node, name)] = was[i]
                out[i] = DeployResult(batch[i].target, True,
                                      f"memory[{node}]: deployed serial {batch[i].cert.serial}")
        return out

    async def roll_back(self, targets: list[Target]) -> list[DeployResult]:
        out = []
        for node in dict.fromkeys(t.node for t in targets):
            self.reloads[node] += 1
        for t in targets:
            self.rolled_back.append((t.node, t.certificate))
            before = self.previous.get((t.node, t.certificate))
            if before:
                self.live[t.node][t.certificate] = before
            out.append(DeployResult(t, before is not None, f"memory[{t.node}]: rolled back",
                                    before is not None))
        return out

    async def remove(self, targets: list[Target]) -> list[DeployResult]:
        return [DeployResult(t, True, "removed") for t in targets]

    async def close(self) -> None:
        return None


def make_config(tmp_path: Path, *, nodes: int = 2, strategy: str = "parallel",
                verify_: bool = False, check: str | None = None, reload: str | None = None,
                names: int = 0) -> configuration.Config:
    frontend = {
        "nodes": [{"name": f"fe{i + 1}", "address": "127.0.0.1"} for i in range(nodes)],
        "verify": verify_, "verify_timeout": "1s",
        "deployer": {"type": "file", "strategy": strategy, "max_parallel": 2,
                     "path": str(tmp_path / "nodes" / "{node}" / "{certificate}")}}
    if check:
        frontend["check"] = check
    if reload:
        frontend["reload"] = reload
    return configuration.parse({
        "state_dir": str(tmp_path / "state"), "frontends": {"web": frontend},
        "certificates": [{"name": f"c{i:02d}", "domains": [f"c{i:02d}.example.org"],
                          "frontends": ["web"]} for i in range(names)]})


def work(cfg, names: list[str], certs: dict) -> list[Work]:
    out = []
    for name in names:
        spec = CertificateSpec(name, (f"{name}.example.org",), ("web",))
        out.append(Work(spec, certs[name], tuple(targets(cfg, spec))))
    return out


def certificates(names: list[str]) -> dict:
    return {n: issued(n, f"{n}.example.org") for n in names}


# --- bisection, in memory -------------------------------------------------------------------

async def test_one_refused_certificate_is_isolated_and_the_rest_deployed(tmp_path, store):
    cfg = make_config(tmp_path)
    names = [f"c{i:02d}" for i in range(16)]
    good, renewed = certificates(names), certificates(names)
    memory = MemoryDeployer()
    rollout = Rollout(cfg, store, {"web": memory}, lambda: T0)
    await rollout.run_batch(work(cfg, names, good))
    assert memory.reloads == {"fe1": 1, "fe2": 1}  # 16 certificates, one reload per node
    memory.refused = {renewed["c05"].serial}
    results = await rollout.run_batch(work(cfg, names, renewed), batch="b2")
    for name in names:
        if name == "c05":
            assert all(not r.ok and r.kind == "check" and r.rolled_back
                       for r in results[name]), results[name]
        else:
            assert all(r.ok for r in results[name]), (name, results[name])
    for node in ("fe1", "fe2"):
        assert memory.live[node]["c05"] == good["c05"].serial  # back on its previous set
        assert all(memory.live[node][n] == renewed[n].serial for n in names if n != "c05")
        # the failed batch, then halves down to the one: 2 per level, log2(16) levels
        assert memory.checks[node] <= 1 + 1 + 2 * 4
        assert memory.reloads[node] <= 1 + 5
    records = {(d.node, d.status) for d in await store.deployments("c05")}
    assert records == {("fe1", DeployStatus.ROLLED_BACK), ("fe2", DeployStatus.ROLLED_BACK)}
    [ok] = [d for d in await store.deployments("c07") if d.node == "fe1"]
    assert ok.status is DeployStatus.DEPLOYED and ok.batch == "b2" and ok.seconds is not None
    alerts = await store.events(certificate="c05", kind="deploy.check")
    assert {e.severity.value for e in alerts} == {"error"} and len(alerts) == 2


async def test_two_refused_certificates_are_both_isolated(tmp_path, store):
    cfg = make_config(tmp_path, nodes=1)
    names = [f"c{i:02d}" for i in range(20)]
    good, renewed = certificates(names), certificates(names)
    memory = MemoryDeployer()
    rollout = Rollout(cfg, store, {"web": memory}, lambda: T0)
    await rollout.run_batch(work(cfg, names, good))
    memory.refused = {renewed["c03"].serial, renewed["c17"].serial}
    results = await rollout.run_batch(work(cfg, names, renewed))
    failed = sorted(n for n, rs in results.items() if not all(r.ok for r in rs))
    assert failed == ["c03", "c17"]
    assert memory.live["fe1"]["c17"] == good["c17"].serial


async def test_a_node_refusing_everything_costs_a_bounded_number_of_tries(tmp_path, store):
    cfg = make_config(tmp_path, nodes=2)
    names = [f"c{i:02d}" for i in range(64)]
    memory = MemoryDeployer(broken_nodes={"fe2"})
    results = await Rollout(cfg, store, {"web": memory}, lambda: T0).run_batch(
        work(cfg, names, certificates(names)))
    assert all(rs[0].ok and not rs[1].ok for rs in results.values())
    assert memory.checks["fe1"] == 1
    assert memory.checks["fe2"] <= 1 + 4 * 6 + 4  # the budget, not 2 * 64


async def test_rolling_canary_takes_the_whole_batch_first(tmp_path, store):
    cfg = make_config(tmp_path, nodes=3, strategy="rolling")
    names = [f"c{i:02d}" for i in range(6)]
    good, renewed = certificates(names), certificates(names)
    memory = MemoryDeployer()
    rollout = Rollout(cfg, store, {"web": memory}, lambda: T0)
    await rollout.run_batch(work(cfg, names, good))
    assert memory.calls[0] == [("fe1", n) for n in names]  # the canary, every certificate
    assert {node for node, _ in memory.calls[1]} == {"fe2", "fe3"}
    memory.calls.clear()
    memory.refused = {renewed["c02"].serial}
    results = await rollout.run_batch(work(cfg, names, renewed))
    assert [len(r) for r in results.values()] == [3, 3, 1, 3, 3, 3]  # c02 stops at the canary
    assert all(not c for c in memory.calls if ("fe2", "c02") in c)
    [stopped] = await store.events(certificate="c02", kind="deploy.stopped")
    assert stopped.data["untouched"] == ["fe2", "fe3"]


async def test_a_certificate_failing_verification_is_rolled_back_alone(tmp_path, store,
                                                                       monkeypatch):
    cfg = make_config(tmp_path, nodes=2, verify_=True)
    names = [f"c{i:02d}" for i in range(8)]
    good, renewed = certificates(names), certificates(names)
    memory = MemoryDeployer()
    rollout = Rollout(cfg, store, {"web": memory}, lambda: T0)

    async def serving(address, port, name, serial, timeout):
        held = {s for node in memory.live.values() for s in node.values()}
        return (serial in held and serial != renewed["c04"].serial), "serial 00"

    monkeypatch.setattr(verify, "wait_serving", serving)
    await rollout.run_batch(work(cfg, names, good))
    before = dict(memory.reloads)
    results = await rollout.run_batch(work(cfg, names, renewed))
    assert [n for n, rs in results.items() if not all(r.ok for r in rs)] == ["c04"]
    assert all(r.kind == "verify" and r.rolled_back for r in results["c04"])
    assert sorted(memory.rolled_back) == [("fe1", "c04"), ("fe2", "c04")]
    # per node: the batch's reload, then the one after rolling c04 back
    assert {n: memory.reloads[n] - before[n] for n in before} == {"fe1": 2, "fe2": 2}
    assert memory.live["fe1"]["c04"] == good["c04"].serial
    # the stored fact the views read: verified when seen serving, cleared on the failure
    for name in names:
        deps = await store.deployments(name)
        assert [(d.node, d.status) for d in deps] == [
            ("fe1", DeployStatus.ROLLED_BACK if name == "c04" else DeployStatus.DEPLOYED),
            ("fe2", DeployStatus.ROLLED_BACK if name == "c04" else DeployStatus.DEPLOYED)]
        assert {d.verified_at for d in deps} == {None if name == "c04" else T0}, name


async def test_a_deployment_without_verification_is_not_marked_verified(tmp_path, store,
                                                                        monkeypatch):
    cfg = make_config(tmp_path, nodes=2, verify_=False)
    memory = MemoryDeployer()

    async def never(*args):  # verify off: no handshake is made
        raise AssertionError("verified with frontends.*.verify off")

    monkeypatch.setattr(verify, "wait_serving", never)
    results = await Rollout(cfg, store, {"web": memory}, lambda: T0).run_batch(
        work(cfg, ["c00"], certificates(["c00"])))
    assert all(r.ok for r in results["c00"])
    deps = await store.deployments("c00")
    assert [(d.status, d.verified_at) for d in deps] == [(DeployStatus.DEPLOYED, None)] * 2


# --- bisection with the real file deployer and a real check ---------------------------------

CHECK = """
import sys, pathlib
from cryptography import x509
from cryptography.hazmat.primitives import serialization
bad = []
for link in sorted(pathlib.Path(sys.argv[1]).iterdir()):
    if link.name.startswith("."):
        continue
    cert = x509.load_pem_x509_certificate((link / "cert.pem").read_bytes())
    key = serialization.load_pem_private_key((link / "privkey.pem").read_bytes(), None)
    if cert.public_key().public_numbers() != key.public_key().public_numbers():
        bad.append(link.name)
if bad:
    sys.exit("[emerg] key values mismatch: " + ", ".join(bad))
"""


async def test_file_deployer_isolates_a_set_whose_key_does_not_match(tmp_path, store):
    script = tmp_path / "check.py"
    script.write_text(CHECK)
    reloads = tmp_path / "reloads"
    cfg = make_config(tmp_path, nodes=2,
                      check=f"{PY} {script} {tmp_path}/nodes/{{node}}",
                      reload=f"sh -c 'echo {{node}} >> {reloads}'")
    names = [f"c{i:02d}" for i in range(12)]
    good, renewed = certificates(names), certificates(names)
    bad = renewed["c09"]
    renewed["c09"] = type(bad)(**{**bad.__dict__, "key_pem": good["c01"].key_pem})
    file = deployers.build(cfg.frontends["web"].deployer)
    rollout = Rollout(cfg, store, {"web": file}, lambda: T0)
    first = await rollout.run_batch(work(cfg, names, good))
    assert all(r.ok for rs in first.values() for r in rs)
    assert reloads.read_text().split() == ["fe1", "fe2"] or \
        sorted(reloads.read_text().split()) == ["fe1", "fe2"]
    results = await rollout.run_batch(work(cfg, names, renewed))
    for node in ("fe1", "fe2"):
        certs = tmp_path / "nodes" / node
        for name in names:
            want = good[name] if name == "c09" else renewed[name]
            assert (certs / name / "cert.pem").read_text() == want.cert_pem, (node, name)
    assert all(not r.ok and r.rolled_back and r.kind == "check" for r in results["c09"])
    assert "key values mismatch: c09" in results["c09"][0].message
    assert all(r.ok for n, rs in results.items() if n != "c09" for r in rs)
    per_node = Counter(reloads.read_text().split())
    assert 2 <= per_node["fe1"] <= 1 + 5 and per_node["fe1"] == per_node["fe2"]


# --- the queue ------------------------------------------------------------------------------

async def test_queue_closes_at_batch_max_then_when_nothing_is_ordered():
    batches: list[list[str]] = []

    async def run(requests):
        batches.append([r.name for r in requests])
        for r in requests:
            r.future.set_result(r.name)

    queue = DeployQueue(run, window=5, batch_max=4, busy=lambda: False)
    got = await asyncio.gather(*(queue.submit(f"n{i}", True) for i in range(10)))
    assert got == [f"n{i}" for i in range(10)]
    assert [len(b) for b in batches] == [4, 4, 2]
    await queue.close()


async def test_queue_waits_for_orders_in_flight_but_not_past_the_window():
    batches: list[tuple[float, list[str]]] = []
    loop = asyncio.get_running_loop()
    ordering = [True]

    async def run(requests):
        batches.append((loop.time(), [r.name for r in requests]))
        for r in requests:
            r.future.set_result(None)

    queue = DeployQueue(run, window=0.5, batch_max=100, busy=lambda: ordering[0])
    start = loop.time()
    first = asyncio.ensure_future(queue.submit("early", True))
    await asyncio.sleep(0.1)
    second = asyncio.ensure_future(queue.submit("later", True))
    await asyncio.gather(first, second)  # still ordering: the window closes the batch
    assert batches[0][1] == ["early", "later"]
    assert 0.45 <= batches[0][0] - start < 1.0
    third = asyncio.ensure_future(queue.submit("last", True))
    await asyncio.sleep(0.1)
    assert len(batches) == 1  # an order is in flight: the batch stays open ...
    ordering[0] = False
    queue.poke()  # ... until the last order is done
    await third
    assert batches[1][1] == ["last"] and batches[1][0] - start < 0.9
    await queue.close()


# --- Certd: many deploy calls, one batch; a lease held elsewhere ----------------------------

async def test_concurrent_deploys_go_out_as_one_batch_and_respect_leases(tmp_path, store):
    cfg = make_config(tmp_path, nodes=2, names=30)
    memory = MemoryDeployer()
    certd = Certd(cfg, store, None, {"web": memory}, owner="me", clock=lambda: T0)
    names = [c.name for c in cfg.certificates]
    for cert in certificates(names).values():
        await store.add_certificate(cert)
    later = datetime(2027, 1, 1, tzinfo=timezone.utc)
    assert await store.acquire_lease("deploy:c07", "someone-else", later, T0)
    release = asyncio.get_running_loop().call_later(
        0.5, lambda: asyncio.ensure_future(store.release_lease("deploy:c07", "someone-else")))
    try:
        results = await asyncio.gather(*(certd.deploy(n) for n in names))
    finally:
        release.cancel()
        await certd.close()
    assert all(r.ok for rs in results for r in rs) and all(len(rs) == 2 for rs in results)
    assert len(memory.calls) == 2  # 29 names at once, then c07 once its lease was free
    assert len(memory.calls[0]) == 29 * 2 and memory.calls[1] == [("fe1", "c07"),
                                                                  ("fe2", "c07")]
    assert memory.reloads == {"fe1": 2, "fe2": 2}
    assert (await store.get_state("c07")).status.value == "deployed"
    assert await store.lease_holder("deploy:c01", T0) is None  # released after the batch


async def test_a_certificate_issued_during_its_rollout_stays_issued(tmp_path, store):
    """The state 'deployed' says the current certificate is on every node: a newer one stored
    while the older went out (another instance's issuance) keeps 'issued', so the next sweep
    deploys it, instead of being hidden until the deploy sync."""
    from certd.model import CertificateState, CertStatus

    cfg = make_config(tmp_path, nodes=2, names=2)
    newer = issued("c01", "c01.example.org")

    class IssuedMeanwhile(MemoryDeployer):
        async def deploy(self, batch):
            out = await super().deploy(batch)
            if len(self.calls) == 1:
                async with store.transaction():  # as Certd._store_issued does
                    await store.add_certificate(newer)
                    await store.put_state(CertificateState("c01", CertStatus.ISSUED))
            return out

    certd = Certd(cfg, store, None, {"web": IssuedMeanwhile()}, owner="me", clock=lambda: T0)
    for cert in certificates(["c00", "c01"]).values():
        await store.add_certificate(cert)
    try:
        results = await asyncio.gather(certd.deploy("c00"), certd.deploy("c01"))
    finally:
        await certd.close()
    assert all(r.ok for rs in results for r in rs)
    assert (await store.get_state("c00")).status is CertStatus.DEPLOYED
    assert (await store.get_state("c01")).status is CertStatus.ISSUED  # the newer one: not out
    assert (await store.current_certificate("c01")).serial == newer.serial
