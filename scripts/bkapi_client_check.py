"""Calls a ding-channel sandbox through BlueKing's own component client (the PyPI package
bkapi-component-open, on bkapi-client-core), the way bk-sops and bk-job build it: one component
base URL, the `cmsi` collection, app credentials in X-Bkapi-Authorization. Then asks the
sandbox's DingTalk simulator whether the messages arrived. Exits non-zero, saying what was
expected and what came, at the first difference.

Usage: bkapi_client_check.py COMPONENT_URL SIMULATOR_URL
"""

import json
import sys
import time
import urllib.request
import uuid

from bkapi_component.open.client import Client

APP_CODE = "demo"
APP_SECRET = "demo-secret"  # the sandbox's demo app; its secret is public by design


def fail(what, expected, got):
    print(f"FAIL: {what}\n  expected: {expected}\n  got:      {got}", file=sys.stderr)
    sys.exit(1)


def client(component_url, bk_api_ver):
    # What bkapi_client_core's get_client_by_username does, without Django settings.
    c = Client(endpoint=component_url, bk_api_ver=bk_api_ver, language="en")
    c.update_bkapi_authorization(
        bk_app_code=APP_CODE, bk_app_secret=APP_SECRET, bk_username="admin"
    )
    return c


def call(what, operation, *args):
    try:
        answer = operation(*args)
    except Exception as e:  # the client raises its own errors for HTTP and transport failures
        fail(what, "an ESB envelope", f"{type(e).__name__}: {e}")
    if not isinstance(answer, dict) or answer.get("result") is not True or answer.get("code") != 0:
        fail(what, "result true, code 0", json.dumps(answer, ensure_ascii=False))
    return answer


def check_msg_types(c, label):
    answer = call(f"get_msg_type ({label})", c.cmsi.get_msg_type)
    types = {t.get("type"): t for t in answer.get("data") or []}
    ding = types.get("ding")
    if not ding or ding.get("is_active") is not True:
        fail(f"get_msg_type ({label})", "an active 'ding' type", json.dumps(answer["data"]))


def simulator_messages(sim_url):
    with urllib.request.urlopen(f"{sim_url}/_sim/messages", timeout=5) as r:
        return json.load(r)


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    component_url, sim_url = sys.argv[1].rstrip("/"), sys.argv[2].rstrip("/")

    # bk-sops, ITSM and bk-monitor use the v2 paths; bk-job the v1 ones.
    v2, v1 = client(component_url, "v2"), client(component_url, "")
    check_msg_types(v2, "v2")
    check_msg_types(v1, "v1")

    marker = f"bkapi-client-check {uuid.uuid4().hex[:12]}"
    sent = call(
        "send_msg",
        v2.cmsi.send_msg,
        {
            "msg_type": "ding",
            "receiver__username": "alice,ops-robot",
            "title": "Disk full",
            "content": f"host-1 /data at 95% ({marker})",
        },
    )
    print(f"send_msg accepted: message {sent['data'].get('message_id')}")

    # The sandbox sends within the request when it can; a robot may wait for its slot, so
    # look for a bounded while.
    expected = {
        "batch_send to alice-ding": lambda m: m["api"] == "batch_send" and "alice-ding" in m["user_ids"],
        "robot_send to ops-robot": lambda m: m["api"] == "robot_send" and m["target"] == "ops-robot",
    }
    deadline = time.monotonic() + 20
    while True:
        ours = [m for m in simulator_messages(sim_url) if marker in json.dumps(m["body"], ensure_ascii=False)]
        missing = [name for name, match in expected.items() if not any(match(m) for m in ours)]
        if not missing:
            break
        if time.monotonic() > deadline:
            got = [(m["api"], m["target"], m["user_ids"]) for m in ours]
            fail("DingTalk (the simulator) received", ", ".join(expected), f"{got} (missing: {', '.join(missing)})")
        time.sleep(0.2)
    print("ok: get_msg_type (v1, v2) and send_msg through bkapi-component-open reached DingTalk: " + ", ".join(expected))


if __name__ == "__main__":
    main()
