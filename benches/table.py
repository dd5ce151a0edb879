#!/usr/bin/env python3
"""Prints the side-by-side table of the last `cargo bench --bench decide` run
from criterion's estimates (target/criterion/*/*/new/estimates.json).

    python3 benches/table.py [target/criterion]

Each cell: criterion's median time per decision, then (in brackets) the
fastest of its samples, which is what the code does when the shared machine
leaves it alone. For the `threads` group the time is wall time divided by the
number of threads (aggregate time per decision, i.e. 1 / throughput).
"""
import json
import os
import sys

root = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "target", "criterion")
SYSTEMS = ["tollgate", "governor", "mutex_hashmap"]
ROWS = [
    ("hot key (allow)", "hot_key/{}"),
    ("10 000 keys (allow)", "keys_10k/{}"),
    ("1 000 000 keys (allow)", "keys_1m/{}"),
    ("1 thread, hot key (wall)", "threads/{}/1thread"),
    ("2 threads, distinct keys (wall)", "threads/{}/2threads_distinct"),
    ("2 threads, one key (wall)", "threads/{}/2threads_one_key"),
    ("deny, hot key", "deny_hot_key/{}"),
]


def median_ns(path):
    f = os.path.join(root, path, "new", "estimates.json")
    try:
        with open(f) as fh:
            return json.load(fh)["median"]["point_estimate"]
    except FileNotFoundError:
        return None


def fastest_ns(path):
    f = os.path.join(root, path, "new", "sample.json")
    try:
        with open(f) as fh:
            d = json.load(fh)
    except FileNotFoundError:
        return None
    return min(t / i for t, i in zip(d["times"], d["iters"]))


def one(v):
    if v >= 1e6:
        return f"{v / 1e6:.1f} ms"
    return f"{v:.1f} ns"


def fmt(path):
    m, f = median_ns(path), fastest_ns(path)
    if m is None:
        return "-"
    return f"{one(m)} ({one(f)})"


print("| case | " + " | ".join(SYSTEMS) + " |")
print("|---|" + "---:|" * len(SYSTEMS))
for name, pat in ROWS:
    print(f"| {name} | " + " | ".join(fmt(pat.format(s)) for s in SYSTEMS) + " |")
extra = [("hot key, tollgate, limits given by the caller", "hot_key/tollgate_explicit_limits")]
for d in sorted(os.listdir(os.path.join(root, "walk_stats", "tollgate"))) if os.path.isdir(
        os.path.join(root, "walk_stats", "tollgate")) else []:
    if d != "report":
        extra.append((f"stats() walk, {d}", f"walk_stats/tollgate/{d}"))
for name, path in extra:
    print(f"| {name} | {fmt(path)} | | |")
for s in SYSTEMS:
    one_t, two, same = (median_ns(f"threads/{s}/{c}") for c in ("1thread", "2threads_distinct", "2threads_one_key"))
    if one_t and two and same:
        print(f"\n{s}: 2 threads vs one thread (medians): distinct keys {one_t / two:.2f}x, one key {one_t / same:.2f}x", end="")
print()
