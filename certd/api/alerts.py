"""/api/v1/alerts (the active findings) and /metrics (Prometheus), on the API listener."""

from __future__ import annotations

from aiohttp import web

from certd import metrics
from certd.api.http import Problem, certd_of
from certd.model import SEVERITY_RANK, Alert, Severity

SOURCES = web.AppKey("metrics_sources", metrics.Sources)
# an API worker's: the daemon's main process renders /metrics (its counters live there)
RENDER = web.AppKey("metrics_render", object)


def alert_view(alert: Alert) -> dict:
    f = alert.finding
    iso = lambda t: t.isoformat() if t else None
    return {
        "check": f.check, "severity": f.severity.value, "domain": f.domain, "node": f.node,
        "certificate": f.certificate, "message": f.message, "serial": f.serial,
        "not_after": iso(f.not_after), "days_remaining": f.days_remaining,
        "first_seen": iso(alert.first_seen), "last_seen": iso(alert.last_seen),
        "notified_at": iso(alert.notified_at),
    }


async def list_alerts(request: web.Request) -> web.Response:
    raw = request.query.get("min_severity", "info")
    try:
        floor = SEVERITY_RANK[Severity(raw)]
    except ValueError:
        raise Problem(400, "bad-parameter", "min_severity must be one of "
                      + ", ".join(s.value for s in Severity)) from None
    # from the store: every process sharing it sees the daemon's alerts
    alerts = [a for a in await certd_of(request).store.active_alerts()
              if SEVERITY_RANK[a.finding.severity] >= floor]
    alerts.sort(key=lambda a: (-SEVERITY_RANK[a.finding.severity], a.finding.key))
    return web.json_response({"items": [alert_view(a) for a in alerts]})


async def serve_metrics(request: web.Request) -> web.Response:
    render = request.app.get(RENDER)
    body = await (render() if render is not None else metrics.render(request.app[SOURCES]))
    return web.Response(body=body, headers={"Content-Type": metrics.CONTENT_TYPE})


def add_routes(app: web.Application, sources: metrics.Sources) -> None:
    app[SOURCES] = sources
    app.router.add_get("/api/v1/alerts", list_alerts)
    app.router.add_get("/metrics", serve_metrics)
