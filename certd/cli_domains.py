"""`certd domains ...`: the alias endpoints of the running daemon's API, from the shell.
The token comes from $CERTD_API_TOKEN, else the first plain token of the tokens file."""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import sys
import time
import urllib.parse

import aiohttp

from certd.config import Config, split_listen
from certd.errors import CertdError
from certd.text import one_line

WAIT_LIMIT = 600.0  # seconds --wait follows a domain at most
SPINNER = "|/-\\"


def add_parser(sub) -> None:
    p = sub.add_parser("domains", help="custom-domain aliases, through the running API")
    dsub = p.add_subparsers(dest="domains_command", metavar="ACTION", required=True)
    c = dsub.add_parser("add", help="add an alias (certificate issued and deployed)")
    c.add_argument("domain")
    c.add_argument("--frontends", help="comma-separated frontend groups")
    c.add_argument("--validation", choices=("http-01", "dns-persist"),
                   help="http-01 (default): through the frontends; dns-persist: the customer "
                        "publishes the printed TXT record once")
    c.add_argument("--profile", help="the ACME profile to order (e.g. shortlived); one the "
                                     "CA offers (default: acme.profile)")
    c.add_argument("--wait", action="store_true", help="follow until deployed or failed")
    c = dsub.add_parser("list", help="every alias")
    c.add_argument("--json", action="store_true")
    c = dsub.add_parser("show", help="one alias as JSON")
    c.add_argument("domain")
    c = dsub.add_parser("remove", help="stop renewing, delete files from every node")
    c.add_argument("domain")
    c.add_argument("--revoke", action="store_true", help="also revoke at the CA")
    p.set_defaults(func=cmd_domains)


def _token(cfg: Config) -> str:
    token = os.environ.get("CERTD_API_TOKEN")
    if token:
        return token
    try:
        for line in cfg.tokens_path.read_text().splitlines():
            parts = line.split()
            if parts and not line.lstrip().startswith("#") and not parts[-1].startswith("sha256:"):
                return parts[-1]
    except OSError as exc:
        raise CertdError(f"domains: no $CERTD_API_TOKEN and cannot read "
                         f"{cfg.tokens_path}: {exc.strerror}") from None
    raise CertdError(f"domains: set $CERTD_API_TOKEN ({cfg.tokens_path} holds no plain token)")


class Api:
    def __init__(self, cfg: Config):
        host, port = split_listen(cfg.api.listen)
        self.base = f"http://{host}:{port}"
        self.headers = {"Authorization": f"Bearer {_token(cfg)}"}

    async def call(self, session: aiohttp.ClientSession, method: str, path: str,
                   body: dict | None = None) -> tuple[int, dict]:
        try:
            async with session.request(method, self.base + path, json=body,
                                       headers=self.headers,
                                       timeout=aiohttp.ClientTimeout(total=30)) as resp:
                try:
                    return resp.status, await resp.json(content_type=None)
                except ValueError:
                    return resp.status, {}
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            raise CertdError(f"domains: API at {self.base} unreachable ({exc}); is certd "
                             "running?") from None


def _domain_path(domain: str) -> str:
    """The domain as one path segment: '/', '?', '#', '..' or '%' in what was typed cannot
    reach another resource or add a query (`remove 'x?revoke=true'`)."""
    if not domain.strip("."):  # '.' or '..' would climb the path, even quoted
        raise CertdError(f"domains: {domain!r} is not a domain name")
    return "/api/v1/domains/" + urllib.parse.quote(domain, safe="")


def _fail(status: int, body: dict) -> int:
    detail = body.get("detail") or body.get("title") or f"HTTP {status}"
    line = f"certd: {detail} ({body.get('type', 'error')})"
    print(one_line(line, 500, replace="?"), file=sys.stderr)
    return 1


def cmd_domains(cfg: Config, args: argparse.Namespace) -> int:
    return asyncio.run(_domains(Api(cfg), args))  # the token file is read before the loop


async def _domains(api: Api, args: argparse.Namespace) -> int:
    async with aiohttp.ClientSession() as session:
        action = args.domains_command
        if action == "add":
            body: dict = {"domain": args.domain}
            if args.frontends:
                body["frontends"] = [f.strip() for f in args.frontends.split(",") if f.strip()]
            if args.validation:
                body["validation"] = args.validation
            if args.profile:
                body["profile"] = args.profile
            status, doc = await api.call(session, "POST", "/api/v1/domains", body)
            if status not in (200, 202):
                return _fail(status, doc)
            print(f"{doc['domain']}: {doc['status']}")
            record = doc.get("dns_record")
            if isinstance(record, dict):  # dns-persist: what the customer publishes, once
                print(f"publish: {one_line(record.get('name'), 300)}. TXT "
                      f"\"{one_line(record.get('value'), 300)}\"")
            elif doc.get("validation") == "dns-persist":
                print("publish: the TXT record is shown once certd's ACME account exists "
                      f"(certd domains show {doc['domain']})")
            if args.wait:
                return await _wait(api, session, doc["domain"])
            return 0
        if action == "list":
            items, cursor = [], None
            while True:
                path = "/api/v1/domains?limit=500" + (f"&cursor={cursor}" if cursor else "")
                status, doc = await api.call(session, "GET", path)
                if status != 200:
                    return _fail(status, doc)
                items += doc["items"]
                cursor = doc.get("next_cursor")
                if not cursor:
                    break
            if args.json:
                print(json.dumps(items, indent=2))
            else:
                for d in items:
                    serial = (d.get("certificate") or {}).get("serial") or "-"
                    print(f"{d['domain']}  {d['status']}  {serial[:16]}  "
                          f"{','.join(d['frontends'])}")
            return 0
        if action == "show":
            status, doc = await api.call(session, "GET", _domain_path(args.domain))
            if status != 200:
                return _fail(status, doc)
            print(json.dumps(doc, indent=2))
            return 0
        path = _domain_path(args.domain) + ("?revoke=true" if args.revoke else "")
        status, doc = await api.call(session, "DELETE", path)
        if status != 202:
            return _fail(status, doc)
        print(f"{args.domain}: removing")
        return 0


async def _wait(api: Api, session: aiohttp.ClientSession, domain: str) -> int:
    spin = itertools.cycle(SPINNER)
    tty = sys.stderr.isatty()
    deadline = time.monotonic() + WAIT_LIMIT
    last = None
    reason = None
    while time.monotonic() < deadline:
        status, doc = await api.call(session, "GET", _domain_path(domain))
        if status != 200:
            return _fail(status, doc)
        state = doc["status"]
        if state != last and not tty:
            print(f"{domain}: {state}", file=sys.stderr)
        last = state
        if tty:
            sys.stderr.write(f"\r{next(spin)} {domain}: {state}   ")
            sys.stderr.flush()
        if state == "awaiting_dns" and doc.get("last_error") != reason:  # what DNS lacks
            reason = doc.get("last_error")
            print(("\n" if tty else "") + f"{domain}: {one_line(reason, 300)}",
                  file=sys.stderr)
        if state in ("deployed", "failed"):
            if tty:
                sys.stderr.write("\n")
            if state == "failed":
                print(f"{domain}: failed: {doc.get('last_error')}", file=sys.stderr)
                return 1
            print(f"{domain}: deployed, serial {doc['certificate']['serial']}")
            return 0
        await asyncio.sleep(0.5)
    print(f"{domain}: still {last} after {WAIT_LIMIT:g}s", file=sys.stderr)
    return 1
