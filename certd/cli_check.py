"""`certd check [--json] [NAME...]`: run a monitor sweep now (every node x every name, plus
`monitor.endpoints`), record the findings with alerting (notifiers hear what is new, as from
the daemon: the dedupe state is in the shared store), print them, and exit like a Nagios
plugin: 0 all good (or only info), 1 a warning, 2 an error or a critical finding.

A (certificate, node) pair whose deployment has not finished is not judged: each of its names
is listed with check `pending` (severity info, so it does not change the exit status), and
`--json` counts them in `pending`."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

from certd.app import open_certd, open_monitor
from certd.config import Config
from certd.errors import CertdError
from certd.model import SEVERITY_RANK, Finding, Severity
from certd.text import one_line
from certd.views import name_list, text_table

EXIT_OK, EXIT_WARNING, EXIT_CRITICAL = 0, 1, 2


def add_parser(sub: argparse._SubParsersAction) -> None:
    c = sub.add_parser("check", help="probe what every node serves now; print the findings")
    c.add_argument("names", nargs="*", metavar="NAME",
                   help="only these certificates (default: all, and monitor.endpoints)")
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=cmd_check)


def exit_status(findings: list[Finding]) -> int:
    worst = max((SEVERITY_RANK[f.severity] for f in findings), default=0)
    if worst >= SEVERITY_RANK[Severity.ERROR]:
        return EXIT_CRITICAL
    return EXIT_WARNING if worst >= SEVERITY_RANK[Severity.WARNING] else EXIT_OK


def cmd_check(cfg: Config, args: argparse.Namespace) -> int:
    async def main():
        async with open_certd(cfg) as certd, open_monitor(cfg, certd) as monitor:
            known = {s.name for s in certd.specs()}
            unknown = [n for n in args.names if n not in known]
            if unknown:
                raise CertdError(f"unknown certificate {name_list(unknown)}")
            return await monitor.sweep(args.names or None)

    report = asyncio.run(main())
    findings = sorted(report.findings, key=lambda f: (-SEVERITY_RANK[f.severity], f.key))
    if args.json:
        json.dump({"probes": report.probes, "seconds": round(report.duration, 3),
                   "pending": report.pending, "findings": [_row(f) for f in findings]},
                  sys.stdout, indent=2)
        print()
    else:
        _table(findings)
        waiting = (f" ({report.pending} pending: deployment not finished, not judged)"
                   if report.pending else "")
        print(f"{report.probes} probes, {len(findings)} findings in {report.duration:.1f} s"
              + waiting)
    return exit_status(findings)


def _row(f: Finding) -> dict:
    return {"check": f.check, "severity": f.severity.value, "domain": f.domain,
            "node": f.node, "certificate": f.certificate, "message": f.message,
            "serial": f.serial, "days_remaining": f.days_remaining,
            "not_after": f.not_after.isoformat() if f.not_after else None}


def _table(findings: list[Finding]) -> None:
    if not findings:
        print("no findings")
        return
    header = ("SEVERITY", "CHECK", "DOMAIN", "NODE", "MESSAGE")
    rows = [(f.severity.value, f.check, f.domain, f.node, _clean(f.message)) for f in findings]
    for line in text_table([header, *rows]):
        print(line)


def _clean(text: str) -> str:
    """One line, printable: messages may quote what a node sent."""
    return one_line(text, 200, replace="?")
