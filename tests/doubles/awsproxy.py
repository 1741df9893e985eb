#!/usr/bin/env python3
"""A recording, fault-injecting proxy in front of the moto server.

usage: awsproxy.py UPSTREAM_URL PORT_FILE LOG_FILE RULES_FILE

Every request is forwarded to UPSTREAM_URL and logged to LOG_FILE as one JSON line
{"service", "region", "action"} (and to LOG_FILE.all, which a test never resets). RULES_FILE (JSON, re-read on every request, may be absent)
holds a list of rules, applied to the first matching request(s):
  {"action": "ssm:GetCommandInvocation", "patch": {"Status": "Failed", ...}}
      merge keys into the upstream JSON response;
  {"action": "ec2:CreateImage", "error": {"status": 400, "code": "...", "message": "..."}}
      answer with an AWS error instead of forwarding (in the service's protocol: JSON,
      EC2 query or awsquery XML).
  {"action": "ec2:RunInstances", "delay": 5}
      forward, then hold the response this many seconds (an interrupt can land while a
      call that already took effect is in flight).
A rule with "body": S matches only requests whose body contains S (a parameter's name, say).
A rule with "times": N applies N times, then no more; with "after": N it lets the first N
matching requests through untouched.
"""
import http.client
import http.server
import json
import os
import re
import sys
import threading
import urllib.parse

UPSTREAM = urllib.parse.urlparse(sys.argv[1])
PORT_FILE, LOG_FILE, RULES_FILE = sys.argv[2], sys.argv[3], sys.argv[4]
lock = threading.Lock()
used = {}
seen = {}


def classify(headers, body):
    auth = headers.get("Authorization", "")
    m = re.search(r"Credential=[^/]+/\d+/([^/]+)/([^/]+)/", auth)
    region, service = (m.group(1), m.group(2)) if m else ("?", "?")
    target = headers.get("X-Amz-Target")
    if target:
        return service, region, target.split(".")[-1]
    if body:
        form = urllib.parse.parse_qs(body.decode("utf-8", "replace"))
        if "Action" in form:
            return service, region, form["Action"][0]
    return service, region, None


def matching_rule(service, region, action, body=b""):
    try:
        rules = json.load(open(RULES_FILE))
    except (OSError, ValueError):
        return None
    for r in rules:
        i = json.dumps(r, sort_keys=True)  # counts follow the rule, not its position
        if r["action"] != f"{service}:{action}":
            continue
        if "region" in r and r["region"] != region:
            continue
        if "body" in r and r["body"].encode() not in body:
            continue
        s = seen.get(i, 0)
        seen[i] = s + 1
        if s < r.get("after", 0):
            continue
        n = used.get(i, 0)
        if "times" in r and n >= r["times"]:
            continue
        used[i] = n + 1
        return r
    return None


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def handle_any(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        service, region, action = classify(self.headers, body)
        if action is None:
            action = f"{self.command} {urllib.parse.urlparse(self.path).path}"
        with lock:
            line = json.dumps({"service": service, "region": region, "action": action}) + "\n"
            # LOG_FILE is what the test resets; LOG_FILE.all keeps every call of the run.
            for name in (LOG_FILE, LOG_FILE + ".all"):
                with open(name, "a") as f:
                    f.write(line)
            rule = matching_rule(service, region, action, body or b"")
        if rule and "error" in rule:
            e = rule["error"]
            if self.headers.get("X-Amz-Target"):
                payload = json.dumps({"__type": e["code"], "message": e.get("message", "injected")}).encode()
                ctype = "application/x-amz-json-1.1"
            elif service == "ec2":
                payload = (f"<Response><Errors><Error><Code>{e['code']}</Code><Message>{e.get('message', 'injected')}"
                           f"</Message></Error></Errors><RequestID>injected</RequestID></Response>").encode()
                ctype = "text/xml"
            else:  # the awsquery protocol (autoscaling, elasticloadbalancing)
                payload = (f"<ErrorResponse><Error><Type>Sender</Type><Code>{e['code']}</Code><Message>"
                           f"{e.get('message', 'injected')}</Message></Error><RequestId>injected</RequestId>"
                           f"</ErrorResponse>").encode()
                ctype = "text/xml"
            self.send_response(e.get("status", 400))
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
            return
        conn = http.client.HTTPConnection(UPSTREAM.hostname, UPSTREAM.port, timeout=60)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("connection",)}
        conn.request(self.command, self.path, body=body, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        if rule and "delay" in rule:
            import time
            time.sleep(rule["delay"])
        if rule and "patch" in rule and data:
            doc = json.loads(data)
            doc.update(rule["patch"])
            data = json.dumps(doc).encode()
        self.send_response(resp.status)
        for k, v in resp.getheaders():
            if k.lower() not in ("content-length", "connection", "transfer-encoding", "server", "date"):
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
        conn.close()

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = handle_any


class Server(http.server.ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        # A client that went away mid-answer (a test interrupted it) is expected; anything
        # else is a defect of this proxy and is shown.
        if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            super().handle_error(request, client_address)


server = Server(("127.0.0.1", 0), Handler)
tmp = PORT_FILE + ".tmp"
with open(tmp, "w") as f:
    f.write(str(server.server_address[1]))
os.rename(tmp, PORT_FILE)
server.serve_forever()
