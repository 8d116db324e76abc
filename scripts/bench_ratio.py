#!/usr/bin/env python3
"""Prints the medians of criterion benchmarks and the protocol's overhead ratio.

Run after `cargo bench --bench pairing -- 'primitives/(peer_)?floor|link/full_link'`
(or a full `cargo bench`): reads target/criterion/*/new/estimates.json.
"""
import json
import pathlib
import sys

root = pathlib.Path(__file__).resolve().parent.parent / "target" / "criterion"


def median_ns(group, name):
    p = root / group / name / "new" / "estimates.json"
    return json.loads(p.read_text())["median"]["point_estimate"]


def fmt(ns):
    for unit, scale in (("s", 1e9), ("ms", 1e6), ("µs", 1e3)):
        if ns >= scale:
            return f"{ns / scale:.3f} {unit}"
    return f"{ns:.1f} ns"


rows = []
for est in sorted(root.glob("*/**/new/estimates.json")):
    rel = est.parent.parent.relative_to(root)
    rows.append((str(rel), json.loads(est.read_text())["median"]["point_estimate"]))
if "--all" in sys.argv:
    for name, ns in rows:
        print(f"{name:50s} {fmt(ns):>12s}")
try:
    floor = median_ns("primitives", "floor")
    full = median_ns("link", "full_link")
    print(f"primitives/floor      median {fmt(floor)}")
    print(f"link/full_link        median {fmt(full)}")
    print(f"full_link / floor      = {full / floor:.3f}   (target <= 1.10)")
except FileNotFoundError:
    print("(no link/full_link run: cargo bench --bench pairing)")
    full = None
try:
    if full is None:
        raise FileNotFoundError
    peer = median_ns("primitives", "peer_floor")
    print(f"primitives/peer_floor median {fmt(peer)}")
    print(f"full_link / peer_floor = {full / peer:.3f}   (target <= 1.35)")
except FileNotFoundError:
    pass
try:
    code_floor = median_ns("primitives", "code_floor")
    by_code = median_ns("link", "full_link_by_code")
    print(f"primitives/code_floor median {fmt(code_floor)}")
    print(f"link/full_link_by_code median {fmt(by_code)}")
    print(f"full_link_by_code / code_floor = {by_code / code_floor:.3f}   (target <= 1.10)")
except FileNotFoundError:
    pass
