#!/usr/bin/env python3
"""The verdict of a chaos run (scripts/chaos.sh): what callers were told against what DingTalk
(the simulator) received and what the database recorded.

    chaos_check.py WORKDIR     reads the run's records in WORKDIR, prints the summary, exits 1
                               on a lost delivery, an unexplained duplicate, an undrained queue,
                               an unexpected failure, a DingTalk call loop or a throttled robot
    chaos_check.py --self-test the verdicts on small made-up runs (each kind of defect is caught)

WORKDIR holds: answers.jsonl (loadgen --answers: each send's last ESB answer), receivers.json
(username -> the simulator's name for it: the robot's name, or the person's userid),
messages.json and stats.json (the simulator's /_sim/messages and /_sim/stats), deliveries.json
(the database's deliveries: id, message_id, receiver, status, attempts, last_error),
attempts.json (its delivery_attempts: delivery_id, at, outcome), db_messages.json (its
messages: id, body), kills.json (each SIGKILL: at_ms, server) and meta.json (backend, seed,
sends, rate, load_started_ms, load_ended_ms, drained_ms, window_ms, throttle_window_ms,
max_attempts, max_calls_per_delivery).

A delivery is the pair (send number, receiver); every load text carries `chaos-<send number>`.
A copy beyond the first is explained when the call that made an earlier copy lost its answer
(the simulator marks it: timed out, or the connection closed after DingTalk carried it out),
or when a server was killed within window_ms after DingTalk received it (or up to IN_FLIGHT_MS
before: a request written just before the kill is read after it) and no outcome of that
delivery was recorded in between (its outcome was not recorded before the kill, so the queue
sent it again). A send stored as two messages (the idempotency key not honoured) is a defect.
"""
import collections
import json
import os
import re
import sys
import tempfile

ID = re.compile(r"chaos-(\d+)(?!\d)")
# How long a request a killed server had written may wait to be read by DingTalk (the
# simulator) on a busy machine: a copy that arrived this long after a kill is still the kill's.
IN_FLIGHT_MS = 1000
# The engine's words for a delivery given up past DING_CHANNEL_MAX_AGE_S (outbox/policy.rs).
GIVEN_UP = "gave up after"


def load(work):
    def read(name):
        with open(os.path.join(work, name)) as f:
            return json.load(f)

    with open(os.path.join(work, "answers.jsonl")) as f:
        answers = [json.loads(line) for line in f if line.strip()]
    return {
        "answers": answers,
        "receivers": read("receivers.json"),
        "messages": read("messages.json"),
        "stats": read("stats.json"),
        "deliveries": read("deliveries.json"),
        "attempts": read("attempts.json"),
        "db_messages": read("db_messages.json"),
        "kills": read("kills.json"),
        "meta": read("meta.json"),
    }


def copies_by_delivery(messages):
    """(send number, receiver's simulator name) -> the simulator's records of it, in order."""
    copies = collections.defaultdict(list)
    for m in sorted(messages, key=lambda m: m["seq"]):
        ids = {int(i) for i in ID.findall(json.dumps(m["body"], ensure_ascii=False))}
        to = [m["target"]] if m["api"] == "robot_send" else m["user_ids"]
        for i in ids:
            for r in to:
                copies[(i, r)].append(m)
    return copies


def check(run):
    meta, receivers = run["meta"], run["receivers"]
    lines, problems = [], []

    # What callers were told: accepted = answered with a message id; its receivers sent or queued.
    accepted, refused, unanswered, replays, retried = {}, [], 0, 0, 0
    kinds = collections.Counter()
    for a in run["answers"]:
        data = (a.get("answer") or {}).get("data") if isinstance(a.get("answer"), dict) else None
        retried += a.get("tries", 1) > 1
        if not isinstance(data, dict) or not isinstance(data.get("message_id"), str):
            unanswered += 1
            continue
        replays += bool(data.get("idempotent_replay"))
        for d in data.get("deliveries", []):
            if d["status"] in ("sent", "queued"):
                key = (a["i"], receivers[d["receiver"]])
                kinds[d.get("kind")] += key not in accepted
                accepted[key] = (data["message_id"], d["receiver"])
            else:
                refused.append(f"send {a['i']} to {d['receiver']}: {d.get('error')}")
    sends = len(run["answers"])
    lines.append(
        f"sends: {sends}; accepted {sends - unanswered} (retried by the client {retried}, "
        f"answered as idempotent replays {replays}); never accepted {unanswered}"
    )
    if refused:
        problems.append(f"{len(refused)} receivers refused at acceptance, e.g. {refused[:3]}")

    db = {(d["message_id"], d["receiver"]): d for d in run["deliveries"]}
    copies = copies_by_delivery(run["messages"])
    # Every stored message of a send number; more than one is a send accepted twice.
    stored = collections.defaultdict(list)
    for m in run["db_messages"]:
        for i in {int(i) for i in ID.findall(m["body"])}:
            stored[i].append(m["id"])
    twice = {i: ids for i, ids in stored.items() if len(ids) > 1}
    if twice:
        problems.append(f"{len(twice)} sends stored as several messages (idempotency key not honoured), e.g. {list(twice.items())[:3]}")
    # When the database recorded an outcome of each delivery, by (send number, receiver).
    recorded_at = collections.defaultdict(list)
    for a in run["attempts"]:
        recorded_at[a["delivery_id"]].append(a["at"])
    by_id = collections.defaultdict(list)
    for d in run["deliveries"]:
        by_id[d["message_id"]].append(d)
    def recorded(key, since, until):
        i, to = key
        return any(since <= at <= until for mid in stored.get(i, []) for d in by_id[mid]
                   if receivers.get(d["receiver"]) == to for at in recorded_at[d["id"]])

    # Lost: an accepted delivery that never arrived and is not recorded failed for a documented
    # reason. Undrained: still queued.
    lost, undrained, given_up, failed_odd = [], [], [], []
    for key, (mid, receiver) in sorted(accepted.items()):
        row = db.get((mid, receiver))
        status = row["status"] if row else None
        if status == "queued":
            undrained.append(key)
        elif status == "failed":
            (given_up if (row["last_error"] or "").startswith(GIVEN_UP) else failed_odd).append(
                (key, row["last_error"])
            )
        elif not copies.get(key):
            lost.append((key, status))
    queued_total = sum(d["status"] == "queued" for d in run["deliveries"])
    arrived = sum(1 for k in accepted if copies.get(k))
    lines.append(
        f"deliveries: {len(accepted)} accepted, {arrived} arrived, {len(given_up)} given up past "
        f"the maximum age, {len(failed_odd)} failed otherwise, {len(lost)} lost, "
        f"{queued_total} still queued"
    )
    if lost:
        problems.append(f"{len(lost)} deliveries lost, e.g. {lost[:5]} (send, receiver), status in the database")
    if failed_odd:
        problems.append(f"{len(failed_odd)} deliveries failed for an undocumented reason, e.g. {failed_odd[:3]}")
    if queued_total:
        problems.append(f"the queue did not drain: {queued_total} deliveries still queued, e.g. {undrained[:5]}")

    # Duplicates: every copy before the last needs a cause.
    kills = sorted(k["at_ms"] for k in run["kills"])
    window = meta["window_ms"]
    causes, unexplained, gaps = collections.Counter(), [], []
    for key, cs in copies.items():
        for c in cs[:-1]:
            if c.get("lost_answer"):
                causes[f"answer lost ({c['lost_answer']})"] += 1
                continue
            after = [k - c["at_ms"] for k in kills
                     if -IN_FLIGHT_MS <= k - c["at_ms"] <= window and not recorded(key, c["at_ms"], k)]
            if after:
                causes["server killed before recording the outcome"] += 1
                gaps.append(min(after))
            else:
                unexplained.append((key, c["seq"], c["at_ms"]))
    extra = sum(causes.values()) + len(unexplained)
    dup_keys = sum(1 for cs in copies.values() if len(cs) > 1)
    explained = ", ".join(f"{n} {why}" for why, n in sorted(causes.items())) or "none"
    gap = f"; the kill {min(gaps)} to {max(gaps)} ms after DingTalk received it" if gaps else ""
    lines.append(
        f"duplicates: {dup_keys} deliveries arrived more than once, {extra} extra copies: "
        f"{explained}; {len(unexplained)} unexplained{gap}"
    )
    if unexplained:
        problems.append(f"{len(unexplained)} unexplained duplicates, e.g. {unexplained[:5]} (delivery, seq, at_ms)")

    # Calls: what DingTalk was asked, per delivery; attempts the database recorded.
    req = run["stats"]["requests"]
    send_calls = req.get("robot_send", 0) + req.get("batch_send", 0)
    per = send_calls / max(len(accepted), 1)
    attempts = [d["attempts"] for d in run["deliveries"]]
    most = max(attempts, default=0)
    faults = run["stats"].get("faults", {})
    lines.append(
        "DingTalk requests: "
        + ", ".join(f"{k} {v}" for k, v in sorted(req.items()))
        + f"; faults injected {run['stats'].get('faults_injected', 0)} ("
        + ", ".join(f"{k} {v}" for k, v in sorted(faults.items()))
        + f"); throttled {run['stats'].get('throttled', 0)}"
    )
    robot_calls = [m["at_ms"] for m in run["messages"] if m["api"] == "robot_send"]
    lines.append(
        f"calls per delivery: {per:.2f} send calls per accepted delivery (robots: "
        f"{kinds['robot']} deliveries, {req.get('robot_send', 0)} robot_send calls, {len(robot_calls)} "
        f"arrived; people: {kinds['user']} deliveries, {req.get('batch_send', 0)} batch_send calls); "
        f"attempts recorded per delivery: mean {sum(attempts) / max(len(attempts), 1):.2f}, max {most}"
    )
    w = meta.get("throttle_window_ms")
    if w:
        by_robot = collections.defaultdict(list)
        for m in run["messages"]:
            if m["api"] == "robot_send":
                by_robot[m["target"]].append(m["at_ms"])
        worst = max((sum(1 for u in t if s <= u < s + w) for t in by_robot.values() for s in t), default=0)
        lines.append(f"robot pacing: at most {worst} messages per robot in any {w / 1000:g} s window")
    if run["stats"].get("throttled", 0):
        problems.append(f"DingTalk throttled robots {run['stats']['throttled']} times: the pacing did not hold across the faults and kills")
    if most > meta["max_attempts"] or per > meta["max_calls_per_delivery"]:
        problems.append(
            f"DingTalk call loop: {most} attempts at most (bound {meta['max_attempts']}), "
            f"{per:.2f} send calls per delivery (bound {meta['max_calls_per_delivery']})"
        )
    # How long after its send was due (the load's schedule) each delivery first arrived.
    late = sorted(cs[0]["at_ms"] - (meta["load_started_ms"] + i * 1000 / meta["rate"])
                  for (i, _), cs in copies.items() if cs)
    if late:
        def pct(p):
            return late[min(int(len(late) * p), len(late) - 1)] / 1000

        slow = sum(x > 30_000 for x in late)
        lines.append(f"arrival after the send was due: p50 {pct(0.5):.2f} s, p99 {pct(0.99):.2f} s, "
                     f"max {late[-1] / 1000:.1f} s; {slow} deliveries after more than 30 s")
    if meta.get("drained_ms") is not None:
        lines.append(f"drain: queue empty {(meta['drained_ms'] - meta['load_ended_ms']) / 1000:.1f} s after the last send was answered")
    lines.append(f"kills: {len(kills)} (SIGKILL)")
    return lines, problems


def report(run):
    lines, problems = check(run)
    meta = run["meta"]
    print(f"== chaos summary ({meta['backend']}, CHAOS_SEED={meta['seed']})")
    for line in lines:
        print("  " + line)
    for p in problems:
        print("  FAIL: " + p)
    print("  RESULT: " + ("FAIL" if problems else "PASS"))
    return 1 if problems else 0


def self_test():
    """Made-up runs: a clean one passes; each defect is caught, and only it."""
    receivers = {"robot0": "robot0", "p1": "ding-p1"}

    def answer(i, mid, *to):
        return {"i": i, "tries": 1, "answer": {"data": {"message_id": mid, "deliveries": [{"receiver": r, "status": "queued"} for r in to]}}}

    def robot(seq, at, *ids, lost=None):
        body = {"msgtype": "markdown", "markdown": {"title": "t", "text": " ".join(f"chaos-{i} x" for i in ids)}}
        return {"seq": seq, "at_ms": at, "api": "robot_send", "target": "robot0", "user_ids": [], "body": body, "lost_answer": lost}

    def person(seq, at, i, lost=None):
        body = {"msgKey": "sampleText", "msgParam": {"content": f"chaos-{i} x"}}
        return {"seq": seq, "at_ms": at, "api": "batch_send", "target": "app", "user_ids": ["ding-p1"], "body": body, "lost_answer": lost}

    ids = {("m1", "robot0"): 1, ("m1", "p1"): 2, ("m2", "robot0"): 3, ("m10", "p1"): 4}

    def row(mid, receiver, status="sent", error=None, attempts=1):
        return {"id": ids[(mid, receiver)], "message_id": mid, "receiver": receiver, "status": status, "attempts": attempts, "last_error": error}

    def stored(mid, i):
        return {"id": mid, "body": json.dumps({"text": f"chaos-{i}: x"})}

    def run(**over):
        base = {
            "answers": [answer(1, "m1", "robot0", "p1"), answer(2, "m2", "robot0"), answer(10, "m10", "p1")],
            "receivers": receivers,
            "messages": [robot(1, 1000, 1, 2), person(2, 1000, 1), person(3, 1000, 10)],
            "stats": {"requests": {"robot_send": 1, "batch_send": 2}, "faults": {}},
            "deliveries": [row("m1", "robot0"), row("m1", "p1"), row("m2", "robot0"), row("m10", "p1")],
            "attempts": [{"delivery_id": 1, "at": 9100, "outcome": "sent"}],
            "db_messages": [stored("m1", 1), stored("m2", 2), stored("m10", 10)],
            "kills": [],
            "meta": {"backend": "test", "seed": 0, "rate": 1, "load_started_ms": 0, "window_ms": 5000, "load_ended_ms": 0, "drained_ms": 0, "max_attempts": 5, "max_calls_per_delivery": 3},
        }
        base.update(over)
        return base

    def problems(r):
        return check(r)[1]

    clean = run()
    assert problems(clean) == [], problems(clean)
    # chaos-1 must not be read inside chaos-10.
    assert "0 lost" in "\n".join(check(clean)[0])

    lost = run(messages=[robot(1, 1000, 2), person(2, 1000, 1), person(3, 1000, 10)])
    assert len(problems(lost)) == 1 and "1 deliveries lost" in problems(lost)[0], problems(lost)

    given_up = run(
        messages=[robot(1, 1000, 2), person(2, 1000, 1), person(3, 1000, 10)],
        deliveries=[row("m1", "robot0", "failed", "gave up after 9 attempt(s) over 1 d"), row("m1", "p1"), row("m2", "robot0"), row("m10", "p1")],
    )
    assert problems(given_up) == [], problems(given_up)
    odd = run(deliveries=[row("m1", "robot0", "failed", "robot refused"), row("m1", "p1"), row("m2", "robot0"), row("m10", "p1")])
    assert "undocumented reason" in " ".join(problems(odd)), problems(odd)

    undrained = run(deliveries=[row("m1", "robot0", "queued"), row("m1", "p1"), row("m2", "robot0"), row("m10", "p1")])
    assert "did not drain" in " ".join(problems(undrained)), problems(undrained)

    twice = [robot(1, 1000, 1, 2, lost="dropped"), robot(4, 9000, 1, 2), person(2, 1000, 1, lost="timeout"), person(5, 9000, 1), person(3, 1000, 10)]
    assert problems(run(messages=twice)) == [], problems(run(messages=twice))
    unexplained = [robot(1, 1000, 1, 2), robot(4, 9000, 1, 2), person(2, 1000, 1), person(3, 1000, 10)]
    assert "2 unexplained duplicates" in " ".join(problems(run(messages=unexplained)))
    killed = run(messages=unexplained, kills=[{"at_ms": 1800, "server": "a"}])
    assert problems(killed) == [], problems(killed)
    # A request written just before the kill may be read just after it.
    in_flight = run(messages=unexplained, kills=[{"at_ms": 995, "server": "a"}])
    assert problems(in_flight) == [], problems(in_flight)
    # A kill outside the window explains nothing, nor one after the outcome was recorded.
    late = run(messages=unexplained, kills=[{"at_ms": 7000, "server": "a"}, {"at_ms": -500, "server": "a"}])
    assert "2 unexplained duplicates" in " ".join(problems(late)), problems(late)
    after_record = run(messages=unexplained, kills=[{"at_ms": 1800, "server": "a"}],
                       attempts=[{"delivery_id": 1, "at": 1200, "outcome": "retry"}])
    assert "1 unexplained duplicates" in " ".join(problems(after_record)), problems(after_record)

    accepted_twice = run(db_messages=[stored("m1", 1), stored("m2", 2), stored("m10", 10), stored("m11", 10)])
    assert "stored as several messages" in " ".join(problems(accepted_twice)), problems(accepted_twice)

    loop = run(deliveries=[row("m1", "robot0", attempts=50), row("m1", "p1"), row("m2", "robot0"), row("m10", "p1")])
    assert "call loop" in " ".join(problems(loop)), problems(loop)

    throttled = run(stats={"requests": {"robot_send": 1, "batch_send": 2}, "throttled": 1})
    assert "throttled" in " ".join(problems(throttled)), problems(throttled)

    refused = run(answers=[answer(1, "m1", "robot0", "p1"), answer(2, "m2", "robot0"), {"i": 10, "answer": {"data": {"message_id": "m10", "deliveries": [{"receiver": "p1", "status": "failed", "error": "x"}]}}}])
    assert "refused at acceptance" in " ".join(problems(refused)), problems(refused)

    # The files round-trip through load().
    with tempfile.TemporaryDirectory() as d:
        for name in ("receivers", "messages", "stats", "deliveries", "attempts", "db_messages", "kills", "meta"):
            with open(os.path.join(d, f"{name}.json"), "w") as f:
                json.dump(clean[name], f)
        with open(os.path.join(d, "answers.jsonl"), "w") as f:
            f.writelines(json.dumps(a) + "\n" for a in clean["answers"])
        assert problems(load(d)) == []
    print("chaos_check self-test: ok")
    return 0


if __name__ == "__main__":
    if sys.argv[1:] == ["--self-test"]:
        sys.exit(self_test())
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    sys.exit(report(load(sys.argv[1])))
