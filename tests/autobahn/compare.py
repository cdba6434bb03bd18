#!/usr/bin/env python3
"""Compare an Autobahn|Testsuite client report with the recorded results.

Usage: compare.py REPORT_DIR EXPECTED_JSON [--agent minch] [--update]

Fails (exit 1) when a recorded case is missing from the report or got worse than recorded
(OK < INFORMATIONAL < NON-STRICT < UNIMPLEMENTED < FAILED, for both `behavior` and
`behaviorClose`). Improvements and new cases are listed; `--update` rewrites the record.
"""
import argparse
import json
import os
import sys

RANK = {"OK": 0, "INFORMATIONAL": 1, "NON-STRICT": 2, "UNIMPLEMENTED": 3, "FAILED": 4}


def case_key(case_id):
    return tuple(int(p) if p.isdigit() else 0 for p in case_id.split("."))


def rank(outcome):
    return RANK.get(outcome, len(RANK))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("report")
    ap.add_argument("expected")
    ap.add_argument("--agent", default="minch")
    ap.add_argument("--update", action="store_true")
    args = ap.parse_args()

    index = os.path.join(args.report, "reports", "clients", "index.json")
    with open(index) as f:
        report = json.load(f).get(args.agent, {})
    actual = {
        case: {"behavior": r["behavior"], "behaviorClose": r["behaviorClose"]}
        for case, r in report.items()
    }
    if args.update:
        ordered = {case: actual[case] for case in sorted(actual, key=case_key)}
        with open(args.expected, "w") as f:
            json.dump(ordered, f, indent=1)
            f.write("\n")
        print("compare: recorded %d cases in %s" % (len(actual), args.expected))
        return 0

    with open(args.expected) as f:
        expected = json.load(f)
    worse, better = [], []
    for case in sorted(expected, key=case_key):
        if case not in actual:
            worse.append("%s: missing from the report" % case)
            continue
        for field in ("behavior", "behaviorClose"):
            was, now = expected[case][field], actual[case][field]
            if rank(now) > rank(was):
                worse.append("%s %s: %s -> %s" % (case, field, was, now))
            elif rank(now) < rank(was):
                better.append("%s %s: %s -> %s" % (case, field, was, now))
    new = sorted(set(actual) - set(expected), key=case_key)
    for line in better:
        print("improved: " + line)
    if new:
        print("not recorded yet: " + ", ".join(new))
    for line in worse:
        print("REGRESSION: " + line)
    print("compare: %d cases recorded, %d regressions, %d improvements"
          % (len(expected), len(worse), len(better)))
    return 1 if worse else 0


if __name__ == "__main__":
    sys.exit(main())
