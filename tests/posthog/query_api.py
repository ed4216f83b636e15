"""A PostHog query API for the tests: `POST /api/projects/<id>/query/` with a
HogQLQuery. The HTTP layer and the HogQL-to-ClickHouse printing are stand-ins;
the parser is PostHog's own (PyPI `hogql-parser`, its JSON API), and the
engine is real ClickHouse: the printed query runs on the ClickHouse stand-in
(tests/clickhouse/standin.py, chdb) holding PostHog's `events` table.

What it refuses, as PostHog does:
- no `Authorization: Bearer <key>`, or an unknown key: 401;
- a key without the `query:read` scope (`--unscoped-key`): 403;
- another project than `--project`: 404;
- `OFFSET` (refused for personal-key queries); a `LIMIT` above 50,000 rows
  is cut to 50,000 without a word, as PostHog's printer does;
- a field the HogQL `events` table does not expose (`_timestamp`,
  `inserted_at`, ...), a function outside the few printed here: 400;
- more than `--budget` requests per `--window` seconds per key: 429 with
  PostHog's throttled body ("Expected available in N seconds.") and, as
  PostHog's, no `Retry-After` header (`--retry-after-header` adds one, as a
  proxy in front might);
- with `--timeout-above-rows N`, a query asking more than N rows is taken
  to run past PostHog's 60 s: 504 with PostHog's "max execution time"
  answer (ClickHouseQueryTimeOut). Real cost follows the rows scanned, not
  the LIMIT: a project too large to scan in 60 s fails whatever the page.

It answers PostHog's shape: `results`, `columns`, `types`, `hasMore`
(from a LIMIT+1 read, as PostHog's paginator does), `limit`, `offset`. A
query without LIMIT gets HogQL's default, 100. DateTime columns are rendered
as PostHog renders them, ISO 8601 in the project's timezone (`--timezone`),
which is why the connector formats every time it reads in UTC itself; a
time literal without a timezone is read in the project's timezone too.
Not modelled: real query time, caching, async queries.

`GET /stats` answers {"requests", "throttled", "refused"} counts and the
HogQL of every query run, for the tests.

Usage: query_api.py --clickhouse http://127.0.0.1:PORT [--clickhouse-user U
--clickhouse-password P] --project N --key K [--unscoped-key K2]
[--budget N --window S [--retry-after-header]] [--timeout-above-rows N] [--timezone TZ] [--port N]. Prints
"listening on 127.0.0.1:PORT" when ready.
"""
import argparse
import json
import math
import os
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from zoneinfo import ZoneInfo

MAX_ROWS = 50_000
DEFAULT_LIMIT = 100


def load_parser():
    """hogql_parser imports posthog.hogql.ast and posthog.hogql.errors when it
    loads (for its object API); its JSON API needs neither, so empty modules
    stand in for them."""
    stub = tempfile.mkdtemp(prefix="hogql-stub-")
    os.makedirs(os.path.join(stub, "posthog", "hogql"))
    for name in ("posthog/__init__.py", "posthog/hogql/__init__.py", "posthog/hogql/ast.py"):
        open(os.path.join(stub, name), "w").close()
    with open(os.path.join(stub, "posthog/hogql/errors.py"), "w") as f:
        f.write("class BaseHogQLError(Exception):\n    pass\n"
                "class SyntaxError(BaseHogQLError):\n    pass\n"
                "class NotImplementedError(BaseHogQLError):\n    pass\n"
                "class ParsingError(BaseHogQLError):\n    pass\n")
    sys.path.insert(0, stub)
    import hogql_parser
    return hogql_parser


hogql_parser = load_parser()


class Refused(Exception):
    def __init__(self, status, body, headers=None):
        super().__init__(body.get("detail"))
        self.status, self.body, self.headers = status, body, headers or {}


def validation(detail):
    return Refused(400, {"type": "validation_error", "code": "query_error", "detail": detail,
                         "attr": None})


# HogQL's `events` fields (posthog/hogql/database/schema/events.py) and the
# ClickHouse columns they are.
FIELDS = {
    ("uuid",): "uuid", ("event",): "event", ("properties",): "properties",
    ("timestamp",): "timestamp", ("team_id",): "team_id", ("distinct_id",): "distinct_id",
    ("elements_chain",): "elements_chain", ("created_at",): "created_at",
    ("person_mode",): "person_mode", ("$session_id",): "`$session_id`",
    ("$window_id",): "`$window_id`",
    ("poe", "id"): "person_id", ("poe", "properties"): "person_properties",
    ("poe", "created_at"): "person_created_at",
}
for n in range(5):
    FIELDS[(f"goe_{n}", "properties")] = f"group{n}_properties"
    FIELDS[(f"goe_{n}", "created_at")] = f"group{n}_created_at"
    FIELDS[(f"$group_{n}",)] = f"`$group_{n}`"

COMPARE = {"==": "=", "!=": "!=", "<": "<", "<=": "<=", ">": ">", ">=": ">="}


class Printer:
    """HogQL's JSON AST to ClickHouse SQL, for the subset the connector uses."""

    def __init__(self, project_tz, timeout_above):
        self.tz = project_tz
        self.timeout_above = timeout_above

    def call(self, node):
        name, args = node["name"], [self.expr(a) for a in node["args"]]
        if node.get("distinct") or node.get("params") or node.get("filter_expr"):
            raise validation(f"Unsupported function call '{name}(...)'")
        simple = {"formatDateTime": (2, 3), "toString": (1, 2), "nullIf": (2, 2),
                  "nullif": (2, 2), "count": (0, 1), "countIf": (1, 1), "coalesce": (1, 9)}
        if name in simple:
            low, high = simple[name]
            if not low <= len(args) <= high:
                raise validation(f"Function '{name}' expects {low} to {high} arguments")
            return f"{'nullIf' if name == 'nullif' else name}({', '.join(args)})"
        if name == "toDateTime":
            # HogQL: 1 or 2 arguments (the second a timezone, else the
            # project's), printed as parseDateTime64BestEffortOrNull(text, 6, tz).
            if not 1 <= len(args) <= 2:
                raise validation(f"Function 'toDateTime' expects 1 to 2 arguments, got {len(args)}")
            zone = args[1] if len(args) == 2 else quote(self.tz)
            return f"parseDateTime64BestEffortOrNull({args[0]}, 6, {zone})"
        if name == "toUUID":
            return f"accurateCastOrNull({args[0]}, 'UUID')"
        raise validation(f"Unsupported function call '{name}(...)'")

    def expr(self, node):
        kind = node["node"]
        if kind == "Constant":
            value = node["value"]
            if value is None:
                return "NULL"
            if isinstance(value, bool):
                return "true" if value else "false"
            if isinstance(value, (int, float)):
                return repr(value)
            return quote(value)
        if kind == "Field":
            chain = tuple(node["chain"])
            if chain[:1] == ("events",):
                chain = chain[1:]
            if chain not in FIELDS:
                raise validation(f"Unable to resolve field: {'.'.join(map(str, chain))}")
            return FIELDS[chain]
        if kind == "Call":
            return self.call(node)
        if kind == "CompareOperation":
            if node["op"] not in COMPARE:
                raise validation(f"Unsupported comparison {node['op']}")
            return f"({self.expr(node['left'])} {COMPARE[node['op']]} {self.expr(node['right'])})"
        if kind in ("And", "Or"):
            return "(" + f" {kind.upper()} ".join(self.expr(e) for e in node["exprs"]) + ")"
        if kind == "Not":
            return f"(NOT {self.expr(node['expr'])})"
        if kind == "Alias":
            return f"{self.expr(node['expr'])} AS `{node['alias']}`"
        raise validation(f"Unsupported node: {kind}")

    def select(self, ast, project):
        if ast.get("node") != "SelectQuery":
            raise validation("Only SELECT queries are supported")
        for clause in ("ctes", "distinct", "group_by", "having", "prewhere", "qualify",
                       "limit_by", "window_exprs", "array_join_op"):
            if ast.get(clause):
                raise validation(f"The stand-in does not print {clause}")
        if ast.get("offset") is not None:
            raise validation("OFFSET is not allowed with a personal API key: paginate on a "
                             "keyset (WHERE ... ORDER BY ... LIMIT) instead")
        source = ast.get("select_from") or {}
        table = (source.get("table") or {}).get("chain")
        if table != ["events"] or source.get("next_join") or source.get("sample"):
            raise validation("The stand-in reads the events table only")
        limit = DEFAULT_LIMIT
        if ast.get("limit") is not None:
            if ast["limit"].get("node") != "Constant" or not isinstance(ast["limit"]["value"], int):
                raise validation("LIMIT must be a number")
            limit = ast["limit"]["value"]
        limit = min(limit, MAX_ROWS)
        if self.timeout_above and limit > self.timeout_above:
            raise Refused(504, {"type": "server_error", "code": "timeout",
                                "detail": "Query has hit the max execution time before "
                                          "completing. See our docs for how to improve your "
                                          "query performance. You may need to materialize or "
                                          "add filters to the query.", "attr": None})
        columns = [self.expr(e) for e in ast["select"]]
        where = f"team_id = {int(project)}"
        if ast.get("where"):
            where += f" AND {self.expr(ast['where'])}"
        order = ""
        if ast.get("order_by"):
            order = " ORDER BY " + ", ".join(
                f"{self.expr(o['expr'])} {o.get('order') or 'ASC'}" for o in ast["order_by"])
        sql = (f"SELECT {', '.join(columns)} FROM events WHERE {where}{order} LIMIT {limit + 1} "
               "SETTINGS output_format_json_quote_64bit_integers = 0, "
               "output_format_json_quote_denormals = 0 FORMAT JSONCompact")
        return sql, limit


def quote(value):
    return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"


class Api:
    def __init__(self, args):
        self.args = args
        self.printer = Printer(args.timezone, args.timeout_above_rows)
        self.lock = threading.Lock()
        self.windows = {}  # key -> (window start, requests in it)
        self.stats = {"requests": 0, "throttled": 0, "refused": 0, "queries": []}

    def authorize(self, header, project):
        key = header[7:].strip() if header.lower().startswith("bearer ") else ""
        if not key:
            raise Refused(401, {"type": "authentication_error", "code": "not_authenticated",
                                "detail": "Authentication credentials were not provided.",
                                "attr": None})
        if key not in (self.args.key, self.args.unscoped_key):
            raise Refused(401, {"type": "authentication_error", "code": "authentication_failed",
                                "detail": "Personal API key found in request Authorization "
                                          "header is invalid.", "attr": None})
        if key == self.args.unscoped_key:
            raise Refused(403, {"type": "authentication_error", "code": "permission_denied",
                                "detail": "API key missing required scope 'query:read'",
                                "attr": None})
        if project != str(self.args.project):
            raise Refused(404, {"type": "invalid_request", "code": "not_found",
                                "detail": "Not found.", "attr": None})
        self.throttle(key)

    def throttle(self, key):
        if not self.args.budget:
            return
        with self.lock:
            now = time.monotonic()
            start, used = self.windows.get(key, (now, 0))
            if now - start >= self.args.window:
                start, used = now, 0
            if used >= self.args.budget:
                wait = max(1, math.ceil(start + self.args.window - now))
                self.stats["throttled"] += 1
                raise Refused(429, {"type": "throttled_error", "code": "throttled",
                                    "detail": f"Request was throttled. Expected available in "
                                              f"{wait} seconds.", "attr": None},
                              {"Retry-After": str(wait)} if self.args.retry_after_header else {})
            self.windows[key] = (start, used + 1)

    def clickhouse(self, sql):
        request = urllib.request.Request(
            self.args.clickhouse.rstrip("/") + "/?database=" + self.args.database,
            data=sql.encode(), method="POST",
            headers={"X-ClickHouse-User": self.args.clickhouse_user,
                     "X-ClickHouse-Key": self.args.clickhouse_password})
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as error:
            text = error.read().decode(errors="replace")
            status = 400 if error.code < 500 else 500
            raise Refused(status, {"type": "validation_error" if status == 400 else "server_error",
                                   "code": "clickhouse", "detail": text.strip(), "attr": None})
        except OSError as error:
            raise Refused(500, {"type": "server_error", "code": "error",
                                "detail": f"ClickHouse is unreachable: {error}", "attr": None})

    def render(self, value, kind):
        if value is not None and "DateTime" in kind:
            t = datetime.fromisoformat(value).replace(tzinfo=timezone.utc)
            return t.astimezone(ZoneInfo(self.args.timezone)).isoformat()
        return value

    def query(self, project, body):
        query = (body or {}).get("query") or {}
        if query.get("kind") != "HogQLQuery" or not isinstance(query.get("query"), str):
            raise validation("Expected a HogQLQuery")
        hogql = query["query"]
        ast = json.loads(hogql_parser.parse_select_json(hogql))
        if ast.get("error"):
            raise validation(f"{ast.get('type', 'SyntaxError')}: {ast.get('message')}")
        sql, limit = self.printer.select(ast, project)
        answer = self.clickhouse(sql)
        kinds = [m["type"] for m in answer["meta"]]
        rows = [[self.render(v, k) for v, k in zip(row, kinds)] for row in answer["data"]]
        with self.lock:
            self.stats["queries"].append(hogql)
        return {"cache_key": None, "is_cached": False, "columns": [m["name"] for m in answer["meta"]],
                "types": [[m["name"], m["type"]] for m in answer["meta"]],
                "results": rows[:limit], "hasMore": len(rows) > limit, "limit": limit,
                "offset": 0, "hogql": hogql, "clickhouse": sql, "timings": [],
                "modifiers": {}, "query_status": None}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "PostHog-standin"

    def log_message(self, *args):
        pass

    def do_GET(self):
        api = self.server.api
        if self.path == "/stats":
            with api.lock:
                return self.reply(200, dict(api.stats))
        self.reply(404, {"type": "invalid_request", "code": "not_found", "detail": "Not found.",
                         "attr": None})

    def do_POST(self):
        api = self.server.api
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        parts = self.path.split("?")[0].strip("/").split("/")
        with api.lock:
            api.stats["requests"] += 1
        try:
            if len(parts) != 4 or parts[:2] != ["api", "projects"] or parts[3] != "query":
                raise Refused(404, {"type": "invalid_request", "code": "not_found",
                                    "detail": "Not found.", "attr": None})
            api.authorize(self.headers.get("Authorization", ""), parts[2])
            try:
                body = json.loads(raw or b"{}")
            except ValueError:
                raise validation("Malformed JSON body")
            self.reply(200, api.query(parts[2], body))
        except Refused as refused:
            if refused.status != 429:
                with api.lock:
                    api.stats["refused"] += 1
            self.reply(refused.status, refused.body, refused.headers)

    def reply(self, status, body, headers=None):
        data = json.dumps(body, ensure_ascii=False).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clickhouse", required=True)
    parser.add_argument("--clickhouse-user", default="default")
    parser.add_argument("--clickhouse-password", default="")
    parser.add_argument("--database", default="posthog")
    parser.add_argument("--project", type=int, required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--unscoped-key", default="")
    parser.add_argument("--budget", type=int, default=0, help="requests per window; 0: no limit")
    parser.add_argument("--window", type=float, default=60.0)
    parser.add_argument("--retry-after-header", action="store_true")
    parser.add_argument("--timezone", default="America/Los_Angeles")
    parser.add_argument("--timeout-above-rows", type=int, default=0)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.daemon_threads = True
    server.api = Api(args)
    print(f"listening on 127.0.0.1:{server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
