"""Push one certificate over SSH to N nodes (N real sshd on loopback addresses) and compare
with one node: SFTP of the five files into a new version, symlink switch, a reload command.

    .venv/bin/python bench/ssh_bench.py [-n 20] [--rounds 5]

Not a test: no assertion. Target: 20 nodes within 3x of one node. Each round uses a fresh
deployer, so connection setup (TCP, key exchange, auth, SFTP) is included. Also prints
certd's own CPU time per push: in this lab the 20 sshd share certd's cores, so the wall
time measures the machine as much as certd.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from certd import keys  # noqa: E402
from certd.config import SshDeployerConfig  # noqa: E402
from certd.deployers.base import Target, placements  # noqa: E402
from certd.deployers.ssh import SshDeployer  # noqa: E402
from certd.model import IssuedCertificate  # noqa: E402
from tests.lab.sshd import start_many  # noqa: E402


def certificate() -> IssuedCertificate:
    key = keys.generate_key("ec-p256")
    leaf = keys.self_signed(key, "bench.example.org")
    info = keys.cert_info(leaf)
    return IssuedCertificate("bench", info.serial, info.domains, info.not_before,
                             info.not_after, keys.cert_to_pem(leaf), keys.cert_to_pem(leaf),
                             keys.key_to_pem(key))


async def push(fleet, nodes: list[str], root: Path, max_parallel: int) -> float:
    server = fleet.servers[nodes[0]]
    config = SshDeployerConfig(type="ssh", user="root", port=server.port,
                               key_file=fleet.key_file, known_hosts=fleet.known_hosts,
                               path=str(root) + "/{node}/bench", max_parallel=max_parallel)
    deployer = SshDeployer(config)
    targets = [Target.render(frontend="bench", node=n, address=fleet.servers[n].address,
                             certificate="bench", path=config.path, check=None,
                             reload="true", timeout=10) for n in nodes]
    cert = certificate()
    t0, c0 = time.perf_counter(), time.process_time()
    results = await deployer.deploy(placements(targets, cert))
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    await deployer.close()
    bad = [r.message for r in results if not r.ok]
    if bad:
        raise SystemExit(f"push failed: {bad[:3]}")
    return elapsed, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--max-parallel", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="certd-ssh-") as tmp:
        fleet = start_many(args.n, Path(tmp) / "sshd")
        try:
            names = list(fleet.servers)
            root = Path(tmp) / "nodes"
            one = [asyncio.run(push(fleet, names[:1], root, 1)) for _ in range(args.rounds)]
            many = [asyncio.run(push(fleet, names, root, args.max_parallel))
                    for _ in range(args.rounds)]
        finally:
            fleet.stop()
    m1, mn = (statistics.median(t for t, _ in one), statistics.median(t for t, _ in many))
    c1, cn = (statistics.median(c for _, c in one), statistics.median(c for _, c in many))
    print(f"1 node: median {m1:.3f} s; {args.n} nodes ({args.max_parallel} in flight): "
          f"median {mn:.3f} s; ratio {mn / m1:.2f}x over {args.rounds} rounds")
    # what certd itself spends (this process's CPU); the rest of the wall time is the sshd
    # and sftp-server processes and the kernel's loopback work, on the same cores here
    print(f"certd CPU: 1 node {c1:.3f} s; {args.n} nodes {cn:.3f} s "
          f"({cn / m1:.2f}x the 1-node wall time)")


if __name__ == "__main__":
    main()
