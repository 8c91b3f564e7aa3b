"""`certd import`: bring certificates another ACME client obtained under certd's management
without a new order (certd/importer/ holds the rules; this module parses and prints).

    certd import --certbot [DIR] [--only LINEAGE]...     (DIR: /etc/letsencrypt)
    certd import --acme-sh [DIR] [--only NAME]...        (DIR: ~/.acme.sh)
    certd import NAME --cert FULLCHAIN --key KEY [--chain CHAIN]

Common options: --dry-run (say what would happen, write nothing), --replace (import over a
valid certificate certd already holds), --no-account (leave certbot's ACME account),
--deploy (push what was imported to its nodes now; otherwise the next sweep of a running
daemon, or `certd deploy NAME`, does). Exit 1 if anything is wrong: then nothing is written.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from certd import importer
from certd.config import Config
from certd.errors import CertdError
from certd.importer import acmesh, certbot
from certd.importer.plan import ALREADY, ERROR, IMPORT, SKIP, UNMATCHED
from certd.store import location

EXIT_FAILED, EXIT_CONFIG = 1, 2


def add_parser(sub: argparse._SubParsersAction) -> None:
    c = sub.add_parser("import", help="bring certificates from certbot, acme.sh or files under "
                       "certd's management, with no new order")
    c.add_argument("name", nargs="?", metavar="NAME",
                   help="with --cert and --key: the configured certificate they are for")
    source = c.add_mutually_exclusive_group(required=True)
    source.add_argument("--certbot", nargs="?", type=Path, const=certbot.DEFAULT_DIR,
                        metavar="DIR", help=f"certbot's config directory ({certbot.DEFAULT_DIR})")
    source.add_argument("--acme-sh", nargs="?", type=Path, const=acmesh.DEFAULT_DIR,
                        metavar="DIR", help=f"acme.sh's home ({acmesh.DEFAULT_DIR})")
    source.add_argument("--cert", type=Path, metavar="FULLCHAIN",
                        help="the certificate and its chain (PEM)")
    c.add_argument("--key", type=Path, metavar="KEY", help="with --cert: its private key")
    c.add_argument("--chain", type=Path, metavar="CHAIN",
                   help="with --cert holding the leaf alone: the intermediates")
    c.add_argument("--only", action="append", default=[], metavar="LINEAGE",
                   help="only this lineage (repeat for more)")
    c.add_argument("--dry-run", action="store_true", help="say what would happen; write nothing")
    c.add_argument("--replace", action="store_true",
                   help="import even where certd holds a valid certificate")
    c.add_argument("--no-account", action="store_true", help="leave certbot's ACME account")
    c.add_argument("--deploy", action="store_true", help="deploy what was imported now")
    c.set_defaults(func=cmd_import)


def _source(args: argparse.Namespace) -> importer.Source:
    if args.cert is not None:
        if not args.name or args.key is None or args.only:
            raise CertdError("import: --cert takes NAME and --key (and no --only)")
        return importer.pair(args.name, args.cert, args.key, args.chain)
    if args.name or args.key or args.chain:
        raise CertdError("import: NAME, --key and --chain go with --cert")
    if args.certbot is not None:
        return certbot.read(args.certbot, args.only)
    return acmesh.read(args.acme_sh, args.only)


def cmd_import(cfg: Config, args: argparse.Namespace) -> int:
    source = _source(args)
    if not args.dry_run:
        problems = location.problems(cfg.state_dir, cfg.database_path)
        for problem in problems:
            print(f"certd: {problem}", file=sys.stderr)
        if problems:
            return EXIT_CONFIG
    outcome = asyncio.run(importer.run(cfg, source, dry_run=args.dry_run, replace=args.replace,
                                       account=not args.no_account, deploy=args.deploy))
    _print_plan(outcome.plan, args.dry_run)
    if not outcome.plan.ok:
        print("nothing imported: fix what is listed above, or leave those out with --only",
              file=sys.stderr)
        return EXIT_FAILED
    return _print_outcome(outcome, args.dry_run)


LABELS = {IMPORT: ("would import", "imported"), ALREADY: ("", ""), SKIP: ("skipped", "skipped"),
          UNMATCHED: ("not imported", "not imported"), ERROR: ("ERROR", "ERROR")}


def _print_plan(plan: importer.Plan, dry_run: bool) -> None:
    print(f"{plan.source}: {len(plan.items)} certificate(s)")
    for item in plan.items:
        label = LABELS[item.action][0 if dry_run else 1]
        arrow = f" -> {item.target}" if item.target else ""
        line = f"  {item.where}{arrow}: {label + ': ' if label else ''}{item.message}"
        print(line, file=sys.stderr if item.action == ERROR else sys.stdout)
        for note in item.notes:
            print(f"      {note}")
        for snippet_line in (item.snippet or "").splitlines():
            print(f"      {snippet_line}")
    for problem in plan.problems:
        print(f"  ERROR: {problem}", file=sys.stderr)
    step = plan.account
    if step is not None:
        verb = ("would import " if dry_run else "imported ") if step.action == "import" else ""
        print(f"  ACME account: {verb}{step.message}")


def _print_outcome(outcome: importer.Outcome, dry_run: bool) -> int:
    new = [i.target for i in outcome.plan.items if i.action == IMPORT]
    if dry_run:
        print(f"dry run: nothing written ({len(new)} certificate(s) would be imported)")
        return 0
    if not new:
        print("nothing new imported")
    else:
        print(f"imported {len(new)} certificate(s): {', '.join(new)}")
    if new and not outcome.deployed:
        print("not deployed yet: a running daemon deploys them at its next sweep; now: "
              f"certd deploy {' '.join(new)}")
        return 0
    from certd.cli import _print_deploy  # cli imports this module

    failed = 0
    for name, results in outcome.deployed.items():
        if isinstance(results, BaseException):
            print(f"{name}: deploy failed: {results}", file=sys.stderr)
            failed += 1
        else:
            failed += _print_deploy(name, results)
    return EXIT_FAILED if failed else 0
