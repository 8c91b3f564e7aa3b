"""The one error tree. Errors carry data; messages start with the component and name the object."""

from __future__ import annotations


class CertdError(Exception):
    """Base of every error certd raises on purpose."""


class ConfigError(CertdError):
    """The configuration is invalid. `problems` holds one line per bad key: 'key.path: reason'."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = problems
        super().__init__(f"config {source}: " + "; ".join(problems))


class StoreError(CertdError):
    """The store failed or holds data it cannot read.

    `unavailable`: the store as a whole cannot serve anyone now (not open, down, unreachable,
    not answering in time, its lock held beyond the timeout, its disk full or read-only): any
    other call would fail the same way, a later one may work. False: this call's own failure
    (a constraint, data it cannot read), the next call may well work."""

    def __init__(self, message: str = "", *, unavailable: bool = False):
        self.unavailable = unavailable
        super().__init__(message)


class AcmeError(CertdError):
    """The CA refused or failed a request.

    `type` is the RFC 8555 problem type (e.g. 'urn:ietf:params:acme:error:rateLimited'), or a
    certd-specific 'certd:...' string for transport failures; `retry_after` is in seconds.
    """

    def __init__(
        self,
        message: str,
        *,
        type: str = "certd:acme",
        detail: str = "",
        status: int | None = None,
        retry_after: float | None = None,
        transient: bool = False,
        identifier: str | None = None,
    ):
        self.type = type
        self.identifier = identifier  # the name whose validation failed, when one did
        self.detail = detail
        self.status = status
        self.retry_after = retry_after
        self.transient = transient
        super().__init__(message)

    @property
    def code(self) -> str:
        """The short problem code: 'badNonce', 'rateLimited', ... ('' when unknown)."""
        prefix = "urn:ietf:params:acme:error:"
        return self.type[len(prefix):] if self.type.startswith(prefix) else ""


class DeployError(CertdError):
    """Placing, reloading or verifying a certificate on a node failed."""

    def __init__(self, message: str, *, node: str, transient: bool = False, kind: str = ""):
        self.node = node
        self.transient = transient
        self.kind = kind  # host_key | auth | unreachable | ... ('' when unspecified)
        super().__init__(message)


class NotifyError(CertdError):
    """A notifier could not deliver a notification. `transient` errors are worth retrying."""

    def __init__(self, message: str, *, notifier: str, transient: bool = False):
        self.notifier = notifier  # 'webhook[hooks.example.org]', 'email[smtp.example.org]'
        self.transient = transient
        super().__init__(message)


class AliasError(CertdError):
    """A custom-domain alias cannot be added (or removed) as asked. `kind` says why, in the
    REST API's problem-type words: a name-policy slug ('invalid-domain', 'wildcard', ...),
    'invalid-frontends', 'quota' (with `retry_after` seconds), 'domain-removing' (with
    `retry_after`) or 'conflict'. The message never quotes what the client sent."""

    def __init__(self, message: str, *, kind: str, retry_after: int | None = None):
        self.kind = kind
        self.retry_after = retry_after
        super().__init__(message)
