"""ACME resource statuses (RFC 8555 §7.1.6), typed: what the order flow and the stored orders
compare, instead of bare strings."""

from __future__ import annotations

from enum import StrEnum


class AcmeStatus(StrEnum):
    """One enum for orders, authorizations and challenges (their value sets overlap; the
    groups below say which apply where). A StrEnum: equal to the wire string and to what the
    stores keep (`Order.status`)."""

    UNKNOWN = "unknown"  # absent or not understood
    PENDING = "pending"
    READY = "ready"  # orders
    PROCESSING = "processing"  # orders, challenges
    VALID = "valid"
    INVALID = "invalid"
    DEACTIVATED = "deactivated"  # authorizations
    EXPIRED = "expired"  # authorizations
    REVOKED = "revoked"  # authorizations

    @classmethod
    def of(cls, resource) -> "AcmeStatus":
        """The status of an `acme.messages` resource (Order, Authorization, ChallengeBody):
        UNKNOWN when it has none."""
        status = getattr(resource, "status", None)
        name = getattr(status, "name", None)
        try:
            return cls(name) if name is not None else cls.UNKNOWN
        except ValueError:
            return cls.UNKNOWN


# an order a run can pick up again (a crash, a CA outage)
ORDER_UNFINISHED = (AcmeStatus.PENDING, AcmeStatus.READY, AcmeStatus.PROCESSING)
ORDER_DONE = (AcmeStatus.VALID, AcmeStatus.INVALID)
# an authorization the CA is done with, one way or the other
AUTHZ_FINAL = (AcmeStatus.VALID, AcmeStatus.INVALID, AcmeStatus.DEACTIVATED,
               AcmeStatus.EXPIRED, AcmeStatus.REVOKED)
