"""A ClickHouse server for the tests: the HTTP layer is a stand-in, the SQL
engine is real ClickHouse (chdb: ClickHouse embedded in-process, PyPI's
chdb-core).

Only the HTTP layer is written here, after ClickHouse's own HTTP handler:
the query comes from the `query` URL parameter and/or the POST body (joined
by a newline, so `INSERT ... FORMAT JSONEachRow` in the URL takes its rows
from the body); `database` from the URL or X-ClickHouse-Database; the user
from X-ClickHouse-User/X-ClickHouse-Key, HTTP basic auth or the user/password
URL parameters (else `default` with no password); other URL parameters are
settings and `param_NAME` are query parameters; output is TabSeparated unless
`default_format` or the query's FORMAT says otherwise. Errors are answered as
ClickHouse does: the status from the exception code (src/Server/HTTP/
exceptionCodeToHTTPStatus.cpp, sendExceptionToHTTPClient.cpp), the code in
X-ClickHouse-Exception-Code, the message in the body. GET is read-only.
`GET /ping` (and GET / without a query) answers "Ok.".

The data lives in a chdb Session at DATA_DIR, so a restarted process sees
what an earlier one wrote. One lock serialises the queries. Unlike a server,
SET or USE sent as a query outlives its request, and a result is sent whole,
with a Content-Length.

Usage: standin.py DATA_DIR [--port N] [--user U] [--password P] [--delay S]
(or CLICKHOUSE_STANDIN_PORT / _USER / _PASSWORD / _DELAY). Port 0 picks a free
one. Prints "listening on 127.0.0.1:PORT" when ready.
"""
import argparse
import base64
import json
import os
import re
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlsplit

from chdb import session as chdb_session

# exceptionCodeToHTTPStatus.cpp, by error name; anything else is a 500.
# REQUIRED_PASSWORD's 401 comes with WWW-Authenticate (sendExceptionToHTTPClient.cpp).
STATUS_OF_ERROR = {
    401: "REQUIRED_PASSWORD",
    403: "UNKNOWN_USER WRONG_PASSWORD AUTHENTICATION_FAILED SET_NON_GRANTED_ROLE ACCESS_DENIED",
    400: "BAD_ARGUMENTS CANNOT_COMPILE_REGEXP CANNOT_PARSE_TEXT CANNOT_PARSE_ESCAPE_SEQUENCE "
    "CANNOT_PARSE_QUOTED_STRING CANNOT_PARSE_DATE CANNOT_PARSE_DATETIME CANNOT_PARSE_NUMBER "
    "CANNOT_PARSE_DOMAIN_VALUE_FROM_STRING CANNOT_PARSE_IPV4 CANNOT_PARSE_IPV6 "
    "CANNOT_PARSE_INPUT_ASSERTION_FAILED CANNOT_PARSE_UUID DUPLICATE_COLUMN ILLEGAL_COLUMN "
    "UNKNOWN_ELEMENT_IN_AST UNKNOWN_TYPE_OF_AST_NODE THERE_IS_NO_COLUMN TOO_DEEP_AST TOO_BIG_AST "
    "UNEXPECTED_AST_STRUCTURE SYNTAX_ERROR INCORRECT_DATA TYPE_MISMATCH VALUE_IS_OUT_OF_RANGE_OF_DATA_TYPE",
    404: "UNKNOWN_TABLE UNKNOWN_FUNCTION UNKNOWN_IDENTIFIER UNKNOWN_TYPE UNKNOWN_STORAGE UNKNOWN_DATABASE "
    "UNKNOWN_SETTING UNKNOWN_DIRECTION_OF_SORTING UNKNOWN_AGGREGATE_FUNCTION UNKNOWN_FORMAT "
    "UNKNOWN_DATABASE_ENGINE UNKNOWN_TYPE_OF_QUERY UNKNOWN_ROLE",
    413: "QUERY_IS_TOO_LARGE",
    501: "NOT_IMPLEMENTED",
    503: "SOCKET_TIMEOUT CANNOT_OPEN_FILE CANNOT_SCHEDULE_TASK",
    411: "HTTP_LENGTH_REQUIRED",
    408: "TIMEOUT_EXCEEDED",
    415: "UNSUPPORTED_MEDIA_TYPE",
}
# URL parameters that are not settings (HTTPHandler.cpp's reserved names).
RESERVED = {"query", "database", "default_format", "user", "password", "quota_key", "query_id",
            "session_id", "session_timeout", "session_check", "compress", "decompress",
            "buffer_size", "wait_end_of_query", "role", "stacktrace"}
# A server's defaults where chdb's differ.
SERVER_SETTINGS = {"date_time_input_format": "basic", "implicit_select": "0"}
WRITES = re.compile(r"^\s*(INSERT|CREATE|DROP|ALTER|TRUNCATE|RENAME|OPTIMIZE|DELETE|UPDATE|ATTACH|"
                    r"DETACH|EXCHANGE|UNDROP|GRANT|REVOKE|SYSTEM|KILL|BACKUP|RESTORE)\b", re.I)


class Failure(Exception):
    def __init__(self, code, name, text):
        super().__init__(f"Code: {code}. DB::Exception: {text}. ({name})")


def quote(value):
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


class ClickHouse:
    def __init__(self, path, user, password, delay):
        self.session = chdb_session.Session(path)
        self.user, self.password, self.delay = user, password, delay
        self.lock = threading.Lock()
        self.version = self.run("SELECT version()").bytes().decode().strip()
        rows = self.run("SELECT DISTINCT name, code FROM system.errors "
                        "SETTINGS system_events_show_zero_values = 1").bytes().decode()
        codes = dict(line.split("\t") for line in rows.splitlines())
        self.status = {int(codes[name]): status
                       for status, names in STATUS_OF_ERROR.items() for name in names.split()}
        for name, value in SERVER_SETTINGS.items():
            self.run(f"SET {name} = {quote(value)}")

    def run(self, sql, fmt="TabSeparated", params=None):
        return self.session.query(sql, fmt, params=params or None)

    def execute(self, method, sql, database, settings, params, fmt):
        if not sql.strip():
            raise Failure(62, "SYNTAX_ERROR", "Empty query")
        if method == "GET" and WRITES.match(sql):
            raise Failure(164, "READONLY", "Cannot execute query in readonly mode. For queries over "
                          "HTTP, method GET implies readonly. You should use method POST for "
                          "modifying queries")
        if self.delay:
            time.sleep(self.delay)
        with self.lock:
            self.run(f"USE `{database.replace('`', '')}`")
            applied = []
            try:
                for name, value in settings.items():
                    self.run(f"SET {name} = {quote(value)}")
                    applied.append(name)
                return self.run(sql, fmt, params)
            finally:
                for name in applied:
                    default = SERVER_SETTINGS.get(name)
                    self.run(f"SET {name} = {quote(default) if default else 'DEFAULT'}")


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "ClickHouse-standin"

    def log_message(self, *args):
        pass

    def do_GET(self):
        self.handle_query("GET")

    def do_POST(self):
        self.handle_query("POST")

    def body(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            parts = []
            while size := int(self.rfile.readline().split(b";")[0], 16):
                parts.append(self.rfile.read(size))
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                pass
            return b"".join(parts)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def credentials(self, url):
        user, key = self.headers.get("X-ClickHouse-User", ""), self.headers.get("X-ClickHouse-Key", "")
        auth = self.headers.get("Authorization", "")
        if user or key:
            return user, key
        if auth.lower().startswith("basic "):
            user, _, key = base64.b64decode(auth[6:]).decode().partition(":")
            return user, key
        return url.get("user", "default"), url.get("password", "")

    def handle_query(self, method):
        ch: ClickHouse = self.server.clickhouse
        path, query_string = urlsplit(self.path)[2:4]
        url = dict(parse_qsl(query_string, keep_blank_values=True))
        body = self.body()
        if path == "/ping" or (path == "/" and method == "GET" and "query" not in url):
            return self.reply(200, b"Ok.\n", {"Content-Type": "text/html; charset=UTF-8"})
        if path != "/":
            message = f"There is no handle {path}\n\nUse / or /ping for health checks.\n"
            return self.reply(404, message.encode(), {"Content-Type": "text/plain; charset=UTF-8"})
        try:
            user, password = self.credentials(url)
            if (user, password) != (ch.user, ch.password):
                raise Failure(516, "AUTHENTICATION_FAILED", f"{user}: Authentication failed: password "
                              "is incorrect, or there is no user with such name")
            sql = "\n".join(p for p in (url.get("query", ""), body.decode()) if p)
            database = url.get("database") or self.headers.get("X-ClickHouse-Database") or "default"
            settings = {k: v for k, v in url.items() if k not in RESERVED and not k.startswith("param_")}
            bad = [k for k in settings if not re.fullmatch(r"\w+", k)]
            if bad:
                raise Failure(115, "UNKNOWN_SETTING", f"Unknown setting '{bad[0]}'")
            params = {k[6:]: v for k, v in url.items() if k.startswith("param_")}
            fmt = url.get("default_format", "TabSeparated")
            named = re.findall(r"\bFORMAT\s+(\w+)", sql, re.I)
            if named and not re.match(r"\s*INSERT\b", sql, re.I):
                fmt = named[-1]
            result = ch.execute(method, sql, database, settings, params, fmt)
        except Exception as error:  # chdb's errors and our Failures carry "Code: N."
            text = str(error).strip()
            found = re.search(r"Code: (\d+)\.", text)
            code = int(found.group(1)) if found else 1001
            if "(version " not in text[-60:]:
                text += f" (version {ch.version} (official build))"
            headers = {"X-ClickHouse-Exception-Code": str(code),
                       "Content-Type": "text/plain; charset=UTF-8"}
            status = ch.status.get(code, 500)
            if status == 401:
                headers["WWW-Authenticate"] = 'Basic realm="ClickHouse server HTTP API"'
            return self.reply(status, (text + "\n").encode(), headers)
        data = result.bytes()
        summary = {"read_rows": str(result.rows_read()), "read_bytes": str(result.bytes_read()),
                   "written_rows": str(result.rows_written()),
                   "written_bytes": str(result.bytes_written()),
                   "elapsed_ns": str(int(result.elapsed() * 1e9))}
        kind = ("application/json" if fmt.upper().startswith("JSON") else
                "text/tab-separated-values" if fmt.upper().startswith(("TSV", "TABSEPARATED")) else
                "text/plain")
        self.reply(200, data, {"Content-Type": f"{kind}; charset=UTF-8", "X-ClickHouse-Format": fmt,
                               "X-ClickHouse-Query-Id": url.get("query_id") or str(uuid.uuid4()),
                               "X-ClickHouse-Timezone": "UTC",
                               "X-ClickHouse-Summary": json.dumps(summary, separators=(",", ":"))})

    def reply(self, status, data, headers):
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def main():
    env = os.environ.get
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data_dir")
    parser.add_argument("--port", type=int, default=int(env("CLICKHOUSE_STANDIN_PORT", "8123")))
    parser.add_argument("--user", default=env("CLICKHOUSE_STANDIN_USER", "default"))
    parser.add_argument("--password", default=env("CLICKHOUSE_STANDIN_PASSWORD", ""))
    parser.add_argument("--delay", type=float, default=float(env("CLICKHOUSE_STANDIN_DELAY", "0")),
                        help="seconds to wait before each query")
    args = parser.parse_args()
    os.makedirs(args.data_dir, exist_ok=True)
    clickhouse = ClickHouse(args.data_dir, args.user, args.password, args.delay)
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.daemon_threads = True
    server.clickhouse = clickhouse
    print(f"listening on 127.0.0.1:{server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
