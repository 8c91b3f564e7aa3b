"""`certd backup FILE` and `certd restore FILE`: parsing and printing; the work (and what
state lives where) is in certd/store/backup.py.

A passphrase is read from a file (`--passphrase-file`), never taken on the command line,
where `ps` and shell history would show it."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

from certd.config import Config
from certd.errors import CertdError
from certd.store import backup, storage_scheme

MIN_PASSPHRASE = 8  # bytes


class _NoPassphrase(argparse.Action):
    """`--passphrase VALUE` (or `--passphrase=VALUE`): refused without repeating the value,
    as argparse would for an unknown option."""

    def __call__(self, parser, namespace, values, option_string=None):
        parser.error("a passphrase is never taken on the command line: put it in a file "
                     "(mode 0600) and give --passphrase-file")


def add_parser(sub: argparse._SubParsersAction) -> None:
    c = _command(sub, "backup", "copy the store to FILE while certd runs (mode 0600; encrypted "
                 "with --passphrase-file)",
                 "encrypt with the passphrase F holds (less one trailing newline)")
    c.add_argument("--force", action="store_true", help="replace FILE if it exists")
    c.set_defaults(func=cmd_backup)
    c = _command(sub, "restore", "put a backup in place as the store of an empty state_dir "
                 "(certd stopped)", "the passphrase file the backup was encrypted with")
    c.set_defaults(func=cmd_restore)


def _command(sub: argparse._SubParsersAction, name: str, what: str, passphrase: str
             ) -> argparse.ArgumentParser:
    # allow_abbrev=False: `--passphrase SECRET` must not pass for `--passphrase-file SECRET`
    c = sub.add_parser(name, allow_abbrev=False, help=what)
    c.add_argument("file", type=Path, metavar="FILE")
    c.add_argument("--passphrase-file", type=Path, metavar="F", help=passphrase)
    c.add_argument("--passphrase", nargs="?", action=_NoPassphrase, help=argparse.SUPPRESS)
    return c


def state_paths(cfg: Config) -> backup.StatePaths:
    if cfg.database_path is None:  # backup/restore copy a SQLite file
        raise CertdError(f"backup: storage {storage_scheme(cfg.storage)}:// is not a SQLite "
                         "file: certd backup and restore handle sqlite:/// stores only (back "
                         "up PostgreSQL with its own tools, e.g. pg_dump)")
    return backup.StatePaths(cfg.state_dir, cfg.database_path, cfg.tokens_path)


def read_passphrase(path: Path | None) -> bytes | None:
    if path is None:
        return None
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CertdError(f"passphrase file {path}: cannot read it: {exc.strerror or exc}"
                         ) from None
    data = data.removesuffix(b"\n").removesuffix(b"\r")
    if len(data) < MIN_PASSPHRASE:
        raise CertdError(f"passphrase file {path}: {len(data)} bytes; use at least "
                         f"{MIN_PASSPHRASE} (e.g. `head -c 32 /dev/urandom | base64 > {path}`)")
    return data


def cmd_backup(cfg: Config, args: argparse.Namespace) -> int:
    passphrase = read_passphrase(args.passphrase_file)
    started = time.monotonic()
    result = asyncio.run(backup.backup(state_paths(cfg), args.file, passphrase=passphrase,
                                       force=args.force))
    s = result.summary
    tokens = "API tokens included" if s.tokens else "no API tokens file"
    print(f"backup {result.path}: {result.size:,} bytes, "
          f"{'encrypted' if result.encrypted else 'not encrypted'}, store schema {s.schema}: "
          f"{s.certificates} certificates, {s.aliases} aliases, {tokens} "
          f"({time.monotonic() - started:.2f} s)")
    if result.tokens_outside is not None:
        print(f"certd: the API tokens file {result.tokens_outside} is outside state_dir: not "
              "in the backup (keep it with the config)", file=sys.stderr)
    return 0


def cmd_restore(cfg: Config, args: argparse.Namespace) -> int:
    passphrase = read_passphrase(args.passphrase_file)
    paths = state_paths(cfg)
    result = asyncio.run(backup.restore(args.file, paths, passphrase=passphrase))
    s = result.summary
    taken = s.created_at.isoformat(timespec="seconds") if s.created_at else "at an unknown time"
    migrated = f", migrated to {result.schema}" if result.schema != s.schema else ""
    print(f"restored {args.file} (taken {taken} by certd {s.certd_version or '?'}, schema "
          f"{s.schema}{migrated}) into {paths.database}: {s.certificates} certificates, "
          f"{s.aliases} aliases"
          + (f"; API tokens into {result.tokens_restored}" if result.tokens_restored else ""))
    if result.tokens_not_restored is not None:
        print(f"certd: the backup holds certd's API tokens file, but this config reads "
              f"{result.tokens_not_restored}: not restored (restore writes only in state_dir)",
              file=sys.stderr)
    elif not s.tokens and paths.own_tokens:
        print("certd: the backup holds no API tokens file: certd makes one with a new admin "
              "token when it starts", file=sys.stderr)
    return 0
