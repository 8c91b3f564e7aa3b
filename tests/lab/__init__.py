"""certd's test lab: pebble -> haproxy -> two nginx frontends -> one challenge listener.

Typical use (or the session-scoped ``lab`` fixture from :mod:`tests.lab.fixtures`)::

    with Lab.start(tmp_path) as lab:
        lab.set_sites({"www": ["www.test"]})
        ...  # start certd with lab.challenge_listen, lab.pebble.directory_url,
             # lab.pebble.ca_bundle, lab.deploy_path_template, lab.reload_command
"""

from .a2c import WINDOWS, Acme2Certifier, AriWindow, ari_cert_id
from .certs import FALLBACK_CN
from .frontends import CERT_FILE, FALLBACK_DIR, KEY_FILE
from .lab import Lab, Node
from .pebble import DEFAULT_ENV, ISSUED_MARK, NEW_ORDER_MARK, ChallTestSrv, Pebble
from .procs import LabError, ManagedProcess, free_port, wait_until
from .responder import SeenRequest, StandInResponder
from .salt import SALT_VENV, SaltLab, salt_venv_missing
from .sshd import (
    ClientKey,
    SshLab,
    SshNode,
    SshServer,
    make_client_key,
    start_many,
    write_known_hosts,
)

__all__ = [
    "Acme2Certifier",
    "AriWindow",
    "CERT_FILE",
    "ChallTestSrv",
    "DEFAULT_ENV",
    "FALLBACK_CN",
    "FALLBACK_DIR",
    "ISSUED_MARK",
    "KEY_FILE",
    "Lab",
    "LabError",
    "ManagedProcess",
    "NEW_ORDER_MARK",
    "Node",
    "Pebble",
    "SeenRequest",
    "StandInResponder",
    "WINDOWS",
    "ari_cert_id",
    "free_port",
    "wait_until",
    "ClientKey",
    "SshLab",
    "SshNode",
    "SshServer",
    "make_client_key",
    "start_many",
    "write_known_hosts",
    "SALT_VENV",
    "SaltLab",
    "salt_venv_missing",
]
