"""certd: keeps TLS certificates valid on a fleet of load-balanced frontends."""

__version__ = "0.1.0"
