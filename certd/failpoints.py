"""Named crash points for testing crash safety: with CERTD_FAILPOINT=<name> in its
environment, certd kills itself with SIGKILL when it reaches that point — the same as a power
cut or `kill -9` there. Unset (always, in production), `hit()` only reads a dict.

Points: issue:key-saved (certificate key stored, finalize not sent), issue:finalized (the CA
issued, nothing stored yet), issue:stored (inside the unit of work that stores it: the
certificate row written, the order, state and event not yet; nothing of it commits), deploy:writing (part of the new set written), deploy:switched
(the new set in place, not reloaded yet), import:stored (inside the unit of work that
imports a certificate: its row written, its state and event not yet; nothing of it commits).

With CERTD_FAILPOINT_ACTION=stop as well, the process stops itself (SIGSTOP) at that point
instead, once, and carries on when it gets SIGCONT.
"""

import os
import signal


def hit(name: str) -> None:
    if os.environ.get("CERTD_FAILPOINT") == name:
        if os.environ.get("CERTD_FAILPOINT_ACTION") == "stop":
            # stalled there (SIGSTOP: a long pause, as a partition or a frozen VM) until
            # someone sends SIGCONT; once: it carries on from there like any process
            del os.environ["CERTD_FAILPOINT"]
            os.kill(os.getpid(), signal.SIGSTOP)
            return
        os.kill(os.getpid(), signal.SIGKILL)
