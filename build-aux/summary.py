#!/usr/bin/env python3
"""
Print the `make check` summary from pytest's JUnit XML: our tests and the
upstream gate side by side, ending with the line 'N passed, N failed'.
"""

import sys
import xml.etree.ElementTree as ET


def outcome(case):
    if case.find("failure") is not None or case.find("error") is not None:
        return "FAIL"
    if case.find("skipped") is not None:
        return "skip"
    return "pass"


def main(path):
    root = ET.parse(path).getroot()
    groups = {"ours": [], "upstream gate": []}
    for case in root.iter("testcase"):
        cls = case.get("classname", "")
        group = "upstream gate" if "test_upstream_gate" in cls else "ours"
        name = case.get("name")
        groups[group].append((name, outcome(case), float(case.get("time", 0))))
    counts = {"pass": 0, "FAIL": 0, "skip": 0}
    print("\n==================== make check summary ====================")
    for group, cases in groups.items():
        n = {k: sum(1 for c in cases if c[1] == k) for k in counts}
        print(f"\n{group}: {n['pass']} passed, {n['FAIL']} failed, {n['skip']} skipped")
        for name, res, secs in cases:
            print(f"  {res:4}  {secs:7.1f}s  {name}")
        for k in counts:
            counts[k] += n[k]
    print()
    line = f"{counts['pass']} passed, {counts['FAIL']} failed"
    if counts["skip"]:
        line += f", {counts['skip']} skipped"
    print(line)
    return 0 if counts["FAIL"] == 0 and counts["pass"] > 0 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
