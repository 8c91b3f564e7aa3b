"""Monitoring (issue 6): probe what every node really serves (`probe`), judge it (`checks`),
and turn findings into alerts. Nothing here runs at import time."""
