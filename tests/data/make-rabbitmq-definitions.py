#!/usr/bin/env python3
"""Builds tests/data/rabbitmq-3.10.8-definitions.json from a real RabbitMQ.

Creates a realistic topology through the management API of the RabbitMQ at
http://127.0.0.1:15672 (guest/guest), exports it with GET /api/definitions,
keeps only what this script created (plus guest, so the file is a whole
broker's definitions), writes it pretty-printed, and deletes what it created.

Passwords of the users it creates (the file carries their hashes only):
  shop-admin / shop-admin-pw   (administrator)
  shop-monitor / monitor-pw    (monitoring)
  shop-app / app-secret        (no tags)

Usage: python3 tests/data/make-rabbitmq-definitions.py [--keep | --clean]
(--clean only deletes what the script would create.)
"""
import base64
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request

API = "http://127.0.0.1:15672/api"
AUTH = "Basic " + base64.b64encode(b"guest:guest").decode()
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                   "rabbitmq-3.10.8-definitions.json")


def call(method, path, body=None, ok=(200, 201, 204)):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(API + path, data=data, method=method)
    req.add_header("Authorization", AUTH)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req) as resp:
            status, text = resp.status, resp.read().decode()
    except urllib.error.HTTPError as e:
        status, text = e.code, e.read().decode()
    if status not in ok:
        sys.exit(f"{method} {path}: {status} {text}")
    return json.loads(text) if text else None


def q(s):
    return urllib.parse.quote(s, safe="")


USERS = [
    ("shop-admin", "shop-admin-pw", "administrator"),
    ("shop-monitor", "monitor-pw", "monitoring"),
    ("shop-app", "app-secret", ""),
]
PERMISSIONS = [
    ("guest", "shop", ".*", ".*", ".*"),
    ("shop-admin", "shop", ".*", ".*", ".*"),
    ("shop-admin", "/", ".*", ".*", ".*"),
    ("shop-monitor", "shop", "^$", "^$", ".*"),
    ("shop-app", "shop", "^app\\..*", "^(shop\\.orders|shop\\.events|app\\..*)$",
     "^(orders|app)\\..*"),
]
EXCHANGES = [
    ("shop", "shop.orders", "topic", False, {"alternate-exchange": "shop.unrouted"}),
    ("shop", "shop.unrouted", "fanout", False, {}),
    ("shop", "shop.dlx", "direct", False, {}),
    ("shop", "shop.internal", "topic", True, {}),
    ("shop", "shop.headers", "headers", False, {}),
    ("shop", "shop.events", "fanout", False, {}),
    ("/", "legacy.direct", "direct", False, {}),
]
QUEUES = [
    ("shop", "orders.created", {"x-dead-letter-exchange": "shop.dlx",
                                "x-dead-letter-routing-key": "orders.dead",
                                "x-message-ttl": 86400000}),
    ("shop", "orders.dead", {}),
    ("shop", "orders.limited", {"x-max-length": 1000, "x-overflow": "reject-publish"}),
    ("shop", "orders.ledger", {"x-queue-type": "quorum"}),
    ("shop", "orders.priority", {"x-max-priority": 10}),
    ("shop", "orders.audit", {}),
    ("shop", "orders.unrouted", {}),
    ("shop", "app.events", {}),
    ("shop", "app.reports", {}),
    ("/", "legacy.jobs", {"x-message-ttl": 3600000}),
]
BINDINGS = [
    ("shop", "shop.orders", "q", "orders.created", "order.created.*", {}),
    ("shop", "shop.orders", "q", "orders.ledger", "order.paid.*", {}),
    ("shop", "shop.orders", "e", "shop.internal", "order.#", {}),
    ("shop", "shop.internal", "q", "orders.audit", "#", {}),
    ("shop", "shop.dlx", "q", "orders.dead", "orders.dead", {}),
    ("shop", "shop.unrouted", "q", "orders.unrouted", "", {}),
    ("shop", "shop.headers", "q", "app.reports", "",
     {"x-match": "all", "format": "pdf", "type": "report"}),
    ("shop", "shop.headers", "q", "app.events", "",
     {"x-match": "any", "priority": "high"}),
    ("shop", "shop.events", "q", "app.events", "", {}),
    ("/", "legacy.direct", "q", "legacy.jobs", "job", {}),
]
POLICY = ("shop", "app-expiry", {"pattern": "^app\\.", "apply-to": "queues",
                                  "priority": 1,
                                  "definition": {"message-ttl": 3600000}})


def clean():
    for user, _, _ in USERS:
        call("DELETE", f"/users/{q(user)}", ok=(204, 404))
    call("DELETE", "/vhosts/shop", ok=(204, 404))
    for vhost, name, _, _, _ in EXCHANGES:
        if vhost == "/":
            call("DELETE", f"/exchanges/%2F/{q(name)}", ok=(204, 404))
    for vhost, name, _ in QUEUES:
        if vhost == "/":
            call("DELETE", f"/queues/%2F/{q(name)}", ok=(204, 404))


def create():
    call("PUT", "/vhosts/shop", {"description": "Online shop", "tags": "production"})
    for user, password, tags in USERS:
        call("PUT", f"/users/{q(user)}", {"password": password, "tags": tags})
    for user, vhost, conf, write, read in PERMISSIONS:
        call("PUT", f"/permissions/{q(vhost)}/{q(user)}",
             {"configure": conf, "write": write, "read": read})
    for vhost, name, kind, internal, args in EXCHANGES:
        call("PUT", f"/exchanges/{q(vhost)}/{q(name)}",
             {"type": kind, "durable": True, "auto_delete": False,
              "internal": internal, "arguments": args})
    for vhost, name, args in QUEUES:
        call("PUT", f"/queues/{q(vhost)}/{q(name)}",
             {"durable": True, "auto_delete": False, "arguments": args})
    for vhost, src, kind, dst, key, args in BINDINGS:
        call("POST", f"/bindings/{q(vhost)}/e/{q(src)}/{kind}/{q(dst)}",
             {"routing_key": key, "arguments": args})
    vhost, name, body = POLICY
    call("PUT", f"/policies/{q(vhost)}/{q(name)}", body)


def mine(defs):
    users = {"guest"} | {u for u, _, _ in USERS}
    vhosts = {"/", "shop"}
    names = {(v, n) for v, n, *_ in EXCHANGES} | {(v, n) for v, n, _ in QUEUES}
    keep = dict(defs)
    keep["users"] = [u for u in defs["users"] if u["name"] in users]
    keep["vhosts"] = [v for v in defs["vhosts"] if v["name"] in vhosts]
    keep["permissions"] = [p for p in defs["permissions"]
                           if p["user"] in users and p["vhost"] in vhosts]
    keep["topic_permissions"] = [p for p in defs["topic_permissions"]
                                 if p["user"] in users and p["vhost"] in vhosts]
    keep["parameters"] = [p for p in defs["parameters"] if p["vhost"] == "shop"]
    keep["policies"] = [p for p in defs["policies"] if p["vhost"] == "shop"]
    keep["queues"] = [x for x in defs["queues"] if (x["vhost"], x["name"]) in names]
    keep["exchanges"] = [x for x in defs["exchanges"] if (x["vhost"], x["name"]) in names]
    keep["bindings"] = [b for b in defs["bindings"]
                        if (b["vhost"], b["source"]) in names]
    return keep


def main():
    clean()
    if "--clean" in sys.argv:
        return
    create()
    defs = mine(call("GET", "/definitions"))
    with open(OUT, "w") as f:
        json.dump(defs, f, indent=2)
        f.write("\n")
    print(f"wrote {OUT}")
    if "--keep" not in sys.argv:
        clean()


main()
