"""The REST API described as an OpenAPI 3.0.3 document, served at GET /api/v1/openapi.json
(behind the bearer token, like the rest of /api). tests/test_openapi.py checks it lists exactly
the routes build_app registers and fuzzes the live API against it with schemathesis, so a
change to a handler that is not reflected here fails the tests."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from certd import __version__
from certd.api import scopes
from certd.api.dashboard import MAX_DAYS, MAX_EVENTS, MAX_MOMENTS
from certd.api.domains import MAX_LIMIT, STATUSES
from certd.api.http import PROBLEM
from certd.api.tokens import SCOPES
from certd.dashboard import CELL_STATES, MAX_ALIAS_ROWS, MAX_FINDINGS
from certd.issuance.dns_persist import VALIDATIONS
from certd.issuance.profiles import PROFILE_RE
from certd.model import CertStatus, DeployStatus

JSON = "application/json"
PROBLEM_JSON = "application/problem+json"
PROFILE_PATTERN = PROFILE_RE.pattern


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(schema: dict) -> dict:
    return {**schema, "nullable": True}


def _object(properties: dict, required: list[str] | None = None) -> dict:
    return {"type": "object", "required": list(properties) if required is None else required,
            "properties": properties}


TIME = {"type": "string", "format": "date-time"}
STR = {"type": "string"}
STRINGS = {"type": "array", "items": STR}


def _schemas() -> dict:
    return {
        "Problem": {
            "type": "object",
            "description": "An RFC 7807 problem document; `type` is a stable "
                           f"'{PROBLEM}<slug>'. Extra members may appear.",
            "required": ["type", "title", "status"],
            "properties": {
                "type": {"type": "string", "pattern": f"^{PROBLEM}[a-z0-9-]+$"},
                "title": STR,
                "status": {"type": "integer", "minimum": 400, "maximum": 599},
                "detail": STR,
            },
        },
        "Health": _object({"status": {"type": "string", "enum": ["ok"]}, "version": STR,
                           "store": {"type": "string", "enum": ["ok"]},
                           # which process answered: an API worker's index, or null
                           "pid": {"type": "integer"},
                           "worker": _nullable({"type": "integer"})}),
        "Deployment": _object({
            "frontend": STR, "node": STR, "serial": STR,
            "status": {"type": "string", "enum": [s.value for s in DeployStatus]},
            "current": {"type": "boolean"}, "message": STR, "updated_at": TIME,
            # deployed and seen served by the node after the reload (frontends.*.verify),
            # and when (null: not verified)
            "verified": {"type": "boolean"}, "verified_at": _nullable(TIME),
            # the batch it went out in, and seconds from the batch's start on the node
            "batch": _nullable(STR), "seconds": _nullable({"type": "number"}),
        }),
        "Certificate": _object({
            "name": STR,
            "domains": STRINGS,
            "frontends": STRINGS,
            "status": {"type": "string", "enum": [s.value for s in CertStatus]},
            "serial": _nullable(STR),
            "not_before": _nullable(TIME),
            "not_after": _nullable(TIME),
            "fingerprint_sha256": _nullable(STR),
            # the CA that issued it (acme.issuers): its directory URL and configured name
            "issuer": _nullable(STR), "issuer_name": _nullable(STR),
            # the ACME profile the current certificate was ordered with; the one the next
            # order asks for (certificates[].profile or acme.profile)
            "profile": _nullable(STR), "profile_wanted": _nullable(STR),
            "days_left": _nullable({"type": "number"}),
            "renewal_at": _nullable(TIME),
            "renewal_reason": _nullable(STR),
            "deployed_nodes": {**STRINGS, "description": "'frontend/node' holding the current "
                                                         "certificate"},
            "deployments": {"type": "array", "items": _ref("Deployment")},
            "last_error": _nullable(STR),
            "attempts": {"type": "integer", "minimum": 0},
            "next_attempt_at": _nullable(TIME),
        }),
        "CertificateList": _object({"items": {"type": "array", "items": _ref("Certificate")}}),
        "Accepted": _object({"accepted": {"type": "boolean", "enum": [True]},
                             "certificate": STR}),
        "DomainCertificate": _nullable(_object({
            "serial": STR, "not_before": TIME, "not_after": TIME, "fingerprint_sha256": STR,
            "issuer": _nullable(STR), "issuer_name": _nullable(STR),
            "profile": _nullable({**STR, "description": "the ACME profile it was ordered "
                                                        "with"}),
        })),
        "DomainDeployment": _object({
            "frontend": STR, "node": STR,
            "status": {"type": "string", "enum": [s.value for s in DeployStatus]},
            "serial": STR, "updated_at": TIME,
            "verified": {"type": "boolean", "description": "deployed and seen served by the "
                                                           "node after the reload"},
        }),
        "Domain": _object({
            "domain": STR,
            "status": {"type": "string", "enum": list(STATUSES)},
            "frontends": STRINGS,
            "certificate": _ref("DomainCertificate"),
            "deployments": {"type": "array", "items": _ref("DomainDeployment")},
            "renewal_at": _nullable(TIME),
            "last_error": _nullable(STR),
            "next_attempt_at": _nullable(TIME),
            "created_at": TIME,
            "validation": {"type": "string", "enum": list(VALIDATIONS)},
            "dns_record": _ref("DnsRecord"),
            "profile": _nullable({**STR, "description": "the ACME profile asked for; null: "
                                                        "acme.profile"}),
        }),
        "DnsRecord": {**_nullable(_object({
            "name": {**STR, "description": "_validation-persist.<domain>"},
            "type": {"type": "string", "enum": ["TXT"]},
            "value": {**STR, "description": "'<CA issuer domain name>; accounturi=<certd's "
                                            "ACME account>' (draft-ietf-acme-dns-persist-01)"},
        })), "description": "validation dns-persist: the TXT record the customer publishes "
                            "once; null for http-01, and while certd's ACME account (which "
                            "the record names) cannot be registered (the CA unreachable: "
                            "read the domain again later)"},
        "DomainList": _object({
            "items": {"type": "array", "items": _ref("Domain")},
            "next_cursor": _nullable({**STR, "description": "pass as ?cursor= for the next "
                                                            "page; null on the last page"}),
        }),
        "Alert": _object({
            "check": {**STR, "description": "stable id: expiry, stale, chain, hostname, "
                                            "unreachable, posture.*, protocol.*, hsts ...; "
                                            "pending (info): the deployment to that node "
                                            "has not finished, not judged yet"},
            "severity": {"type": "string", "enum": ["info", "warning", "error", "critical"]},
            "domain": {**STR, "description": "the name probed; '*' for a whole node"},
            "node": {**STR, "description": "frontend/node, or address:port of an endpoint"},
            "certificate": _nullable(STR), "message": STR, "serial": _nullable(STR),
            "not_after": _nullable(TIME), "days_remaining": _nullable({"type": "number"}),
            "first_seen": TIME, "last_seen": TIME, "notified_at": _nullable(TIME),
        }),
        "AlertList": _object({"items": {"type": "array", "items": _ref("Alert")}}),
        "WhoAmI": _object({"name": {**STR, "description": "the token's name in the tokens "
                                                          "file"},
                           "scope": {"type": "string", "enum": list(SCOPES)}}),
        "MatrixRow": _object({
            "name": STR, "status": {"type": "string", "enum": [s.value for s in CertStatus]},
            "alias": {"type": "boolean", "description": "an API alias (not deployed, worst "
                                                        "first), not a configured certificate"},
            "days_left": _nullable({"type": "number"}),
            "cells": {"type": "array", "description": "one per entry of `nodes`: what that "
                                                      "node serves of this certificate; null "
                                                      "where the certificate does not go",
                      "items": _nullable({"type": "string", "enum": list(CELL_STATES)})},
        }),
        "Overview": _object({
            "counts": {"type": "object", "description": "certificates (configured and "
                                                        "aliases) by status",
                       "additionalProperties": {"type": "integer", "minimum": 0}},
            "certificates": {"type": "integer", "minimum": 0},
            "aliases": {"type": "integer", "minimum": 0},
            "aliases_not_deployed": {"type": "integer", "minimum": 0},
            "aliases_not_shown": {"type": "integer", "minimum": 0, "description":
                                  "aliases not deployed that the matrix leaves out"},
            "nodes": {**STRINGS, "description": "every configured 'frontend/node'"},
            "matrix": {"type": "array", "items": _ref("MatrixRow"),
                       "description": "the configured certificates, then up to "
                                      f"{MAX_ALIAS_ROWS} aliases not deployed (worst first), "
                                      "x nodes"},
            "alerts": {"type": "integer", "minimum": 0},
            "worst": {"type": "array", "items": _ref("Alert"),
                      "description": f"the {MAX_FINDINGS} worst active findings, worst first"},
        }),
        "TimelineItem": _object({
            "certificate": STR,
            "kind": {"type": "string", "enum": ["expiry", "renewal", "retry"]},
            "at": TIME,
            "reason": _nullable({**STR, "description": "a renewal's plan (ari, before_expiry, "
                                                       "...); backoff for a retry"}),
            "overdue": {"type": "boolean"},
        }),
        "Timeline": _object({
            "now": TIME, "days": {"type": "integer"},
            "as_of": {**TIME, "description": "when the moments were read from the store: "
                                             "kept per process, read again after a change "
                                             "(answered meanwhile, up to a minute old)"},
            "total": {"type": "integer", "minimum": 0, "description": "moments in the window"},
            "overdue": {"type": "integer", "minimum": 0},
            "per_day": {"type": "object", "description": "kind -> days+1 counts, day 0 "
                                                         "(today) with the overdue ones",
                        "additionalProperties": {"type": "array",
                                                 "items": {"type": "integer", "minimum": 0}}},
            "by_reason": {"type": "object", "description": "'kind:reason' (or 'kind') -> "
                                                           "count in the window",
                          "additionalProperties": {"type": "integer", "minimum": 0}},
            "items": {"type": "array", "items": _ref("TimelineItem"),
                      "description": "the first `limit` moments, oldest first"}}),
        "Event": _object({
            "id": _nullable({"type": "integer"}), "at": TIME, "kind": STR,
            "severity": {"type": "string", "enum": ["info", "warning", "error", "critical"]},
            "certificate": _nullable(STR), "node": _nullable(STR), "message": STR,
            "token": _nullable({**STR, "description": "the API token's name, for a change "
                                                      "made through the API"}),
        }),
        "EventList": _object({"items": {"type": "array", "items": _ref("Event")},
                              "next_cursor": _nullable({**STR, "description": "the cursor of "
                                                        "the next (older) page"})}),
        "HistoryItem": _object({
            "serial": STR, "not_before": TIME, "not_after": TIME, "issued_at": TIME,
            "fingerprint_sha256": STR,
            "issuer": _nullable({**STR, "description": "the ACME directory it came from"}),
            "issuer_name": _nullable({**STR, "description": "the issuing CA's name (RFC "
                                                            "4514), from the certificate"}),
        }),
        "History": _object({"items": {"type": "array", "items": _ref("HistoryItem")}}),
        "DomainRemoval": _object({"domain": STR,
                                  "status": {"type": "string", "enum": ["removing"]},
                                  "revoke": {"type": "boolean"}}),
        "NewDomain": {
            "type": "object",
            "required": ["domain"],
            "additionalProperties": False,
            "properties": {
                "domain": {**STR, "description": "a host name; normalised (case, trailing "
                                                 "dot, IDN to A-label)"},
                "frontends": {**STRINGS, "minItems": 1,
                              "description": "configured frontend groups; defaults to "
                                            "domains.default_frontends"},
                "validation": {"type": "string", "enum": list(VALIDATIONS),
                               "default": "http-01",
                               "description": "http-01: through the frontends once DNS "
                                              "points at them; dns-persist: the customer "
                                              "publishes the TXT record of `dns_record` "
                                              "once (status awaiting_dns until certd sees "
                                              "it), no HTTP path needed"},
                "profile": _nullable({**STR, "pattern": PROFILE_PATTERN,
                                      "description": "the ACME profile to order (e.g. "
                                                     "classic, tlsserver, shortlived); one "
                                                     "the CA's directory lists "
                                                     "(meta.profiles), else 422 "
                                                     "invalid-profile; null or absent: "
                                                     "acme.profile"}),
            },
        },
    }


def _problem(description: str, headers: dict | None = None) -> dict:
    out: dict[str, Any] = {"description": description,
                           "content": {PROBLEM_JSON: {"schema": _ref("Problem")}}}
    if headers:
        out["headers"] = headers
    return out


def _ok(description: str, schema: str, headers: dict | None = None) -> dict:
    out: dict[str, Any] = {"description": description, "content": {JSON: {"schema": _ref(schema)}}}
    if headers:
        out["headers"] = headers
    return out


LOCATION = {"Location": {"description": "the resource's URL path", "schema": STR}}
UNAUTHORIZED = {"$ref": "#/components/responses/Unauthorized"}
FORBIDDEN = {"$ref": "#/components/responses/Forbidden"}
STORE_UNAVAILABLE = {"$ref": "#/components/responses/StoreUnavailable"}


def _op(op_id: str, summary: str, responses: dict, *, params: list | None = None,
        body: dict | None = None, public: bool = False, bundle: bool = False) -> dict:
    op: dict[str, Any] = {"operationId": op_id, "summary": summary}
    if params:
        op["parameters"] = params
    if body:
        op["requestBody"] = body
    if public:
        op["security"] = []
    elif bundle:  # its own one-shot token; no API token, so never a 403
        op["security"] = [{"bundleToken": []}]
        responses = {**responses, "401": UNAUTHORIZED, "503": STORE_UNAVAILABLE}
    else:
        responses = {**responses, "401": UNAUTHORIZED, "403": FORBIDDEN,
                     "503": STORE_UNAVAILABLE}
    op["responses"] = dict(sorted(responses.items()))
    return op


def _path(name: str, description: str, example: str) -> dict:
    return {"name": name, "in": "path", "required": True, "description": description,
            "schema": {"type": "string", "minLength": 1}, "example": example}


def _int_query(name: str, maximum: int, default: int) -> dict:
    """An optional integer query parameter, 1..maximum."""
    return {"name": name, "in": "query", "required": False,
            "schema": {"type": "integer", "minimum": 1, "maximum": maximum, "default": default}}


BOOL_PATTERN = "^(1|0|[tT][rR][uU][eE]|[fF][aA][lL][sS][eE]|[yY][eE][sS]|[nN][oO])$"


def _flag(name: str, default: str, description: str) -> dict:
    # any string is accepted (see the description), so the schema is a string, not a boolean
    return {"name": name, "in": "query", "required": False, "description": description,
            "schema": {"type": "string", "default": default}}


def document() -> dict:
    """The document, each operation marked with the token scope it needs (`x-certd-scope`,
    from certd/api/scopes.py, the table the middleware enforces)."""
    doc = _document()
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            need = scopes.needed(method.upper(), path)
            if need == scopes.BUNDLE:
                op["x-certd-scope"] = need
                op["description"] = ("Needs the one-shot bundle token the Salt deployer gave "
                                     "this minion for this batch; API tokens are refused.")
            elif need not in (None, scopes.PUBLIC):
                op["x-certd-scope"] = need
                op["description"] = f"Needs a token with the `{need}` scope (or above)."
    return doc


def _document() -> dict:
    cert = _path("name", "the certificate's configured name", "portal")
    domain = _path("domain", "the custom domain (normalised before lookup)",
                   "shop.example.com")
    unknown_cert = _problem("unknown-certificate")
    unknown_domain = _problem("unknown-domain")
    accepted = _ok("accepted; runs in the background", "Accepted", LOCATION)
    return {
        "openapi": "3.0.3",
        "info": {"title": "certd", "version": __version__,
                 "description": "certd's REST API. Errors are RFC 7807 problem documents "
                                f"whose `type` is '{PROBLEM}<slug>'."},
        "security": [{"bearerAuth": []}],
        "paths": {
            "/healthz": {"get": _op(
                "healthz", "Health for load balancers (the store answers a query); no token",
                {"200": _ok("up", "Health"),
                 "503": _problem("store-unavailable: the store cannot be reached (a fixed "
                                 "body)")},
                public=True)},
            "/metrics": {"get": _op(
                "metrics", "Prometheus text format (bearer token unless api.metrics_auth is "
                "false)",
                {"200": {"description": "metrics",
                         "content": {"text/plain": {"schema": STR}}}})},
            "/api/v1/alerts": {"get": _op(
                "listAlerts", "Active findings of the monitor, most severe first",
                {"200": _ok("active alerts", "AlertList"), "400": _problem("bad-parameter")},
                params=[{"name": "min_severity", "in": "query", "required": False,
                         "schema": {"type": "string", "default": "info",
                                    "enum": ["info", "warning", "error", "critical"]}}])},
            "/api/v1/openapi.json": {"get": _op(
                "openapi", "This document",
                {"200": {"description": "the OpenAPI document",
                         "content": {JSON: {"schema": {"type": "object"}}}}})},
            "/api/v1/salt/bundles/{batch}": {"get": _op(
                "getSaltBundle", "A minion fetches its batch's files (Salt pull mode)",
                {"200": {"description": "a tar of `<i>/fullchain.pem`, `privkey.pem`, "
                                        "`cert.pem`, `chain.pem`, `combined.pem`, `.certd` "
                                        "per certificate of the batch",
                         "content": {"application/x-tar": {"schema": {
                             "type": "string", "format": "binary"}}}}},
                params=[{**_path("batch", "the batch id (16 hex digits)", "0123456789abcdef"),
                         "schema": {"type": "string", "pattern": "^[0-9a-f]{16}$"}}],
                bundle=True)},
            "/api/v1/whoami": {"get": _op(
                "whoAmI", "The presented token's name and scope (what the dashboard may show)",
                {"200": _ok("the token", "WhoAmI")})},
            "/api/v1/overview": {"get": _op(
                "getOverview", "Counts by status, the certificate x node matrix, the worst "
                "findings (the dashboard's first page)",
                {"200": _ok("the overview", "Overview")})},
            "/api/v1/timeline": {"get": _op(
                "getTimeline", "Expiries, planned renewals and retries of the coming days, "
                "oldest first (overdue ones included, marked)",
                {"200": _ok("the timeline", "Timeline"), "400": _problem("bad-parameter")},
                params=[_int_query("days", MAX_DAYS, 90),
                        {"name": "limit", "in": "query", "required": False,
                         "description": "moments listed (the counts cover all)",
                         "schema": {"type": "integer", "minimum": 0,
                                    "maximum": MAX_MOMENTS, "default": 300}}])},
            "/api/v1/events": {"get": _op(
                "listEvents", "The event log (the audit trail: who changed what, with which "
                "token), newest first",
                {"200": _ok("events", "EventList"), "400": _problem("bad-parameter")},
                params=[_int_query("limit", MAX_EVENTS, 100),
                        {"name": "cursor", "in": "query", "required": False,
                         "description": "next_cursor from the previous page",
                         "schema": {"type": "string", "pattern": "^[0-9]{1,18}$"}},
                        {"name": "certificate", "in": "query", "required": False,
                         "schema": {"type": "string", "maxLength": 255}},
                        {"name": "kind", "in": "query", "required": False,
                         "description": "e.g. api.domain.add, issue.failed",
                         "schema": {"type": "string", "maxLength": 255}}])},
            "/api/v1/certificates": {"get": _op(
                "listCertificates", "Every configured certificate",
                {"200": _ok("all certificates", "CertificateList")})},
            "/api/v1/certificates/{name}": {"get": _op(
                "getCertificate", "One certificate",
                {"200": _ok("the certificate", "Certificate"), "404": unknown_cert},
                params=[cert])},
            "/api/v1/certificates/{name}/history": {"get": _op(
                "getCertificateHistory", "The name's certificates, newest first (the last 20; "
                "never a key)",
                {"200": _ok("the history", "History"), "404": unknown_cert}, params=[cert])},
            "/api/v1/certificates/{name}/renew": {"post": _op(
                "renewCertificate", "Renew, then deploy",
                {"202": accepted, "404": unknown_cert},
                params=[cert, _flag("force", "true", "renew even if not due; any value but "
                                                     "0/false/no (any case) counts as true")])},
            "/api/v1/certificates/{name}/deploy": {"post": _op(
                "deployCertificate", "Deploy the current certificate",
                {"202": accepted, "404": unknown_cert}, params=[cert])},
            "/api/v1/domains": {
                "post": _op(
                    "addDomain", "Add a custom domain (one certificate per domain)",
                    {"202": _ok("created; issuance runs in the background", "Domain", LOCATION),
                     "200": _ok("already present (idempotent)", "Domain", LOCATION),
                     "400": _problem("malformed-json or unknown-field"),
                     "409": _problem("conflict with a configured certificate, or "
                                     "domain-removing (Retry-After)"),
                     "413": _problem("body-too-large"),
                     "415": _problem("unsupported-media-type: send application/json"),
                     "422": _problem("invalid-domain, domain-special-use, domain-unknown-tld, "
                                     "domain-mixed-script, domain-script, domain-confusable, "
                                     "domain-denied, domain-not-allowed, invalid-frontends or "
                                     "invalid-validation or dns-persist-unavailable (no CA "
                                     "identity configured), invalid-profile (malformed, or "
                                     "not offered by the CA)"),

                     "429": _problem("quota: too many new domains for this token",
                                     {"Retry-After": {"description": "seconds",
                                                      "schema": {"type": "integer",
                                                                 "minimum": 1}}})},
                    body={"required": True,
                          "content": {JSON: {"schema": _ref("NewDomain"), "example": {
                              "domain": "shop.example.com", "frontends": ["web"]}}}}),
                "get": _op(
                    "listDomains", "Custom domains, ordered by name, paginated",
                    {"200": _ok("one page", "DomainList"),
                     "400": _problem("bad-parameter")},
                    params=[
                        {"name": "limit", "in": "query", "required": False,
                         "schema": {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT,
                                    "default": 100}},
                        {"name": "cursor", "in": "query", "required": False,
                         "description": "next_cursor from the previous page",
                         "schema": STR},
                        {"name": "status", "in": "query", "required": False,
                         "schema": {"type": "string", "enum": list(STATUSES)}},
                        {"name": "q", "in": "query", "required": False,
                         "description": "only names containing this text (any case)",
                         "schema": {"type": "string", "maxLength": 253}},
                    ]),
            },
            "/api/v1/domains/{domain}": {
                "get": _op("getDomain", "One custom domain",
                           {"200": _ok("the domain", "Domain"), "404": unknown_domain},
                           params=[domain]),
                "delete": _op(
                    "removeDomain", "Remove a custom domain (undeploy, then forget)",
                    {"202": _ok("removal runs in the background", "DomainRemoval"),
                     "400": _problem("bad-parameter"),
                     "404": unknown_domain},
                    params=[domain, {**_flag("revoke", "false", "true/yes/1 or false/no/0 (any "
                                                                "case): also revoke the "
                                                                "certificate at the CA, "
                                                                "reason cessationOfOperation"),
                                     "schema": {"type": "string", "default": "false",
                                                "pattern": BOOL_PATTERN}}]),
            },
        },
        "components": {
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer",
                                               "description": "a token from api.tokens_file"},
                                "bundleToken": {"type": "http", "scheme": "bearer",
                                                "description": "a one-shot Salt bundle token "
                                                "(cdb_...), valid once, for one minion and "
                                                "one batch, for pull_token_ttl"}},
            "responses": {"Unauthorized": _problem(
                "unauthorized: missing or unknown bearer token",
                {"WWW-Authenticate": {"schema": STR}}),
                "Forbidden": _problem(
                    "forbidden: the token's scope does not grant this request. Tokens "
                    "(api.tokens_file, `NAME TOKEN [SCOPE]` or `NAME sha256:HEX [SCOPE]`) have "
                    "one scope: `read` (GET and /metrics), `aliases` (read, plus POST and "
                    "DELETE of /api/v1/domains) or `admin` (everything; the default). The "
                    "problem's `scope` member names the scope needed"),
                "StoreUnavailable": _problem(
                    "store-unavailable: certd cannot use its store right now (another "
                    "process held the write lock for seconds, a full disk, a read-only file); "
                    "the log says which. Try again after Retry-After",
                    {"Retry-After": {"description": "seconds",
                                     "schema": {"type": "integer", "minimum": 1}}})},
            "schemas": _schemas(),
        },
    }


async def serve(request: web.Request) -> web.Response:
    return web.json_response(document())
