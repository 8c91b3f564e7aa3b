"""Command line: argument parsing and printing only; the work lives in service/app."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path

from certd import (
    __version__,
    cli_backup,
    cli_check,
    cli_domains,
    cli_import,
    cli_reload,
    instances,
    logs,
)
from certd import config as configuration
from certd.app import challenge_listener, open_certd, run_daemon
from certd.config import Config
from certd.errors import CertdError, ConfigError
from certd.model import utcnow
from certd.store import describe_storage, keyring, location
from certd.views import certificate_views, name_list, text_table

log = logging.getLogger("certd")

EXIT_FAILED = 1
EXIT_CONFIG = 2


def main(argv: list[str] | None = None) -> int:
    started = _process_start()  # `renew --force`: a renewal completed after this counts
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return EXIT_CONFIG
    try:
        cfg = configuration.load(args.config)
    except ConfigError as exc:
        print(f"certd: invalid config {exc.source}:", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return EXIT_CONFIG
    logs.setup(args.log_level or cfg.log_level, args.log_format or cfg.log_format,
               cfg.log_levels)
    args.started = started
    try:
        return args.func(cfg, args)
    except CertdError as exc:
        print(f"certd: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `certd status | head`: the reader left; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILED


def _process_start() -> datetime:
    """When this command was launched (not when Python finished importing): two commands
    started together must see each other's work as 'after my request'."""
    try:
        with open("/proc/self/stat") as f:
            ticks = int(f.read().rpartition(")")[2].split()[19])  # field 22: starttime
        age = time.clock_gettime(time.CLOCK_BOOTTIME) - ticks / os.sysconf("SC_CLK_TCK")
        return utcnow() - timedelta(seconds=max(0.0, age))
    except (OSError, ValueError, IndexError, AttributeError):
        return utcnow()


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="certd", description=__doc__)
    p.add_argument("--version", action="version", version=f"certd {__version__}")
    p.add_argument("-c", "--config", type=Path, default=None,
                   help="config file (default: $CERTD_CONFIG, then /etc/certd/config.yaml)")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    p.add_argument("--log-format", choices=["text", "json"],
                   help="json: one object per line with stable keys (default: the config's, "
                   "text)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    c = sub.add_parser("run", help="run the daemon")
    c.set_defaults(func=cmd_run)
    c = sub.add_parser("check-config", help="validate the config and print a summary")
    c.set_defaults(func=cmd_check_config)
    c = sub.add_parser("status", help="one row per certificate, then the instances")
    c.add_argument("--json", action="store_true")
    c.add_argument("--instances", action="store_true",
                   help="only the instances sharing the store, their leases, the store's health")
    c.set_defaults(func=cmd_status)
    c = sub.add_parser("renew", help="issue or renew now what needs it (or --force), then deploy")
    c.add_argument("names", nargs="*", metavar="NAME")
    c.add_argument("--all", action="store_true", help="every configured certificate")
    c.add_argument("--force", action="store_true", help="order even if the current one is good")
    c.set_defaults(func=cmd_renew)
    c = sub.add_parser("deploy", help="push the stored certificates to every node (in batches: "
                       "one check and reload per node)")
    which = c.add_mutually_exclusive_group(required=True)
    which.add_argument("names", nargs="*", metavar="NAME", default=[])
    which.add_argument("--all", action="store_true",
                       help="every certificate that has one stored (aliases included)")
    c.set_defaults(func=cmd_deploy)
    cli_domains.add_parser(sub)
    cli_check.add_parser(sub)
    cli_import.add_parser(sub)
    cli_reload.add_parser(sub)
    cli_backup.add_parser(sub)
    return p




def _check_names(cfg: Config, names: list[str]) -> None:
    known = {c.name for c in cfg.certificates}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise CertdError(f"unknown certificate {name_list(unknown)} "
                         f"(configured: {', '.join(sorted(known)) or 'none'})")


def _state_unusable(cfg: Config) -> bool:
    """Print why certd cannot keep its state where `cfg` says, one line each; True if so."""
    problems = location.problems(cfg.state_dir, cfg.database_path)
    for problem in problems:
        print(f"certd: {problem}", file=sys.stderr)
    return bool(problems)


def cmd_run(cfg: Config, args: argparse.Namespace) -> int:
    if _state_unusable(cfg):
        return EXIT_CONFIG

    async def main() -> None:
        stop, reload_wanted = asyncio.Event(), asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        # SIGHUP (systemctl reload, certd reload): re-read the config, never die of it
        loop.add_signal_handler(signal.SIGHUP, reload_wanted.set)
        log.info("certd %s starting (%d certificates, store %s)", __version__,
                 len(cfg.certificates), describe_storage(cfg))
        await run_daemon(cfg, stop, reload_wanted=reload_wanted,
                         load_config=lambda: configuration.load(args.config))

    asyncio.run(main())
    return 0


def cmd_check_config(cfg: Config, args: argparse.Namespace) -> int:
    if _state_unusable(cfg):
        return EXIT_CONFIG
    try:
        keys = keyring(cfg)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"certd: {exc.source}: {problem}", file=sys.stderr)
        return EXIT_CONFIG
    print(f"config OK: {args.config or configuration.default_path()}")
    print(f"  state_dir: {cfg.state_dir} (store {describe_storage(cfg)})")
    print("  private keys in the store: " + (
        "not encrypted (no storage_key_file)" if keys is None else
        f"sealed with key {keys.primary} (keys {', '.join(keys.ids)})"))
    if cfg.acme.issuers is None:
        print(f"  acme: {cfg.acme.directory} key_type={cfg.acme.key_type}")
    else:  # several CAs, in the order orders try them
        print(f"  acme: key_type={cfg.acme.key_type}; issuers in order: " + ", ".join(
            f"{i.label} ({i.directory})" for i in cfg.acme.issuers))
    print(f"  challenge listener: {cfg.challenge.listen}; api: {cfg.api.listen}")
    for name, fe in cfg.frontends.items():
        nodes = ", ".join(f"{n.name}={n.address}" for n in fe.nodes)
        print(f"  frontend {name}: {fe.deployer.type} deployer, nodes {nodes}")
    for cert in cfg.certificates:
        print(f"  certificate {cert.name}: {', '.join(cert.domains)} -> "
              f"{', '.join(cert.frontends) or '(no frontends)'}")
    return 0


async def _status_rows(cfg: Config) -> tuple[list[dict], dict, list[dict]]:
    async with open_certd(cfg) as certd:
        now = utcnow()
        await certd.issuers.refresh(now)  # the CAs' cooldowns, as the store has them
        return (await certificate_views(certd, certd.specs(), now),
                await instances.view(certd.store, now), certd.issuers.views(now))


def cmd_status(cfg: Config, args: argparse.Namespace) -> int:
    rows, alive, cas = asyncio.run(_status_rows(cfg))
    if args.instances:
        if args.json:
            print(json.dumps(alive, indent=2))
        else:
            _print_instances(alive)
        return 0
    if args.json:  # the certificates' list, as before: `--instances --json` has the rest
        print(json.dumps(rows, indent=2))
        return 0
    header = ("NAME", "STATUS", "SERIAL", "NOT AFTER", "DAYS", "RENEW AT", "WHY", "ATTEMPTS",
              "DEPLOYED", "DOMAINS")
    table = [header] + [
        (r["name"], r["status"], (r["serial"] or "-")[:16], (r["not_after"] or "-")[:19],
         "-" if r["days_left"] is None else f"{r['days_left']:.1f}",
         (r["next_attempt_at"] or r["renewal_at"] or "-")[:19],
         "retry" if r["next_attempt_at"] else (r["renewal_reason"] or "-"),
         str(r["attempts"]), ",".join(r["deployed_nodes"]) or "-", ",".join(r["domains"]))
        for r in rows
    ]
    if len(cfg.acme.issuer_list()) > 1:  # several CAs: which one issued each
        table = [row + (("ISSUER",) if i == 0 else
                        (rows[i - 1]["issuer_name"] or rows[i - 1]["issuer"] or "-",))
                 for i, row in enumerate(table)]
    if any(r["profile"] or r["profile_wanted"] for r in rows):  # ACME profiles in use
        table = [row + (("PROFILE",) if i == 0 else
                        (rows[i - 1]["profile"] or rows[i - 1]["profile_wanted"] or "-",))
                 for i, row in enumerate(table)]
    for line in text_table(table):
        print(line)
    for r in rows:
        if r["last_error"]:
            print(f"{r['name']}: last error: {r['last_error']}", file=sys.stderr)
    if len(cas) > 1:  # several CAs: which ones new orders skip, until when and why
        print()
        for ca in cas:
            print(f"issuer {ca['name']} ({ca['directory']}): " + (
                "healthy" if ca["healthy"] else
                f"cooling down until {ca['cooling_until'][:19]} ({ca['reason']})"))
    print()
    _print_instances(alive)
    return 0


def _print_instances(view: dict) -> None:
    store = view["store"]
    health = (f"store ok ({store['seconds'] * 1000:.0f} ms)" if store["ok"]
              else f"store unreachable: {store['error']}")
    print(f"instances: {view['alive']} alive; {health}")
    table = [("ID", "HOST", "PID", "STARTED", "LAST SEEN", "ALIVE", "LEASES")] + [
        (i["id"], i["host"], str(i["pid"]), i["started_at"][:19], i["last_seen_at"][:19],
         "yes" if i["alive"] else "no", ",".join(i["leases"]) or "-")
        for i in view["instances"]]
    if len(table) > 1:
        for line in text_table(table):
            print(f"  {line}")


def cmd_renew(cfg: Config, args: argparse.Namespace) -> int:
    if args.all == bool(args.names):
        raise CertdError("renew: name certificates or give --all (not both)")
    names = [c.name for c in cfg.certificates] if args.all else args.names
    _check_names(cfg, names)

    async def main() -> int:
        requested_at = args.started
        progress = Progress(len(names), "renew")
        failed = 0
        async with open_certd(cfg) as certd, challenge_listener(cfg, certd, shared=True):

            async def one(name: str) -> int:
                try:
                    cert = await certd.renew(name, force=args.force, wait=True,
                                             requested_at=requested_at)
                    if cert is None:
                        progress.line(f"{name}: another certd holds it; try again later")
                        return 1
                    progress.line(f"{name}: serial {cert.serial}, valid until "
                                  f"{cert.not_after.isoformat()}")
                    results = await certd.deploy(name, only_stale=not args.force)
                    for r in results:
                        progress.line(f"{name}: {r.target.frontend}/{r.target.node}: "
                                      f"{'ok' if r.ok else 'FAILED'}: {r.message}")
                    return 0 if all(r.ok for r in results) else 1
                except CertdError as exc:
                    progress.line(f"{name}: failed: {exc}", error=True)
                    return 1
                finally:
                    progress.advance()

            failed = sum(await asyncio.gather(*(one(n) for n in names)))
        progress.done()
        return EXIT_FAILED if failed else 0

    return asyncio.run(main())


class Progress:
    """A one-line progress bar on a terminal's stderr; plain lines otherwise."""

    def __init__(self, total: int, what: str):
        self.total, self.what, self.count = total, what, 0
        self.bar = sys.stderr.isatty() and total > 1

    def line(self, text: str, error: bool = False) -> None:
        if self.bar:
            sys.stderr.write("\r\033[K")
        print(text, file=sys.stderr if error else sys.stdout, flush=True)
        self._draw()

    def advance(self) -> None:
        self.count += 1
        self._draw()

    def _draw(self) -> None:
        if self.bar:
            filled = int(30 * self.count / self.total)
            sys.stderr.write(f"\r{self.what} [{'#' * filled}{'.' * (30 - filled)}] "
                             f"{self.count}/{self.total}")
            sys.stderr.flush()

    def done(self) -> None:
        if self.bar:
            sys.stderr.write("\n")


def cmd_deploy(cfg: Config, args: argparse.Namespace) -> int:
    _check_names(cfg, args.names)

    async def main() -> int:
        async with open_certd(cfg) as certd:
            names = args.names
            if args.all:
                stored = await certd.store.overview()
                names = [s.name for s in certd.specs()
                         if (stored.get(s.name) or (None,))[0] is not None]
            # all at once: they go out together, in batches of deploy.batch_max
            outcomes = await asyncio.gather(*(certd.deploy(n) for n in names),
                                            return_exceptions=True)
        failed = 0
        for name, outcome in zip(names, outcomes):
            if isinstance(outcome, CertdError):
                print(f"{name}: failed: {outcome}", file=sys.stderr)
                failed += 1
            elif isinstance(outcome, BaseException):
                raise outcome
            else:
                failed += _print_deploy(name, outcome)
        return EXIT_FAILED if failed else 0

    return asyncio.run(main())


def _print_deploy(name: str, results) -> int:
    failed = 0
    for r in results:
        print(f"{name}: {r.target.frontend}/{r.target.node}: "
              f"{'ok' if r.ok else 'FAILED'}: {r.message}")
        failed += not r.ok
    return 1 if failed else 0
