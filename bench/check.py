#!/usr/bin/env python3
"""Checks of the outputs of the metadata benchmarks (exit 1 with the reason when wrong).

    check.py lines FILE N              FILE has N lines
    check.py lslR FILE N               an `ls -lR` listing shows N files (regular or links)
    check.py whereis FILE N HOLDERS    `git annex whereis --json`: N files, each with HOLDERS
                                       holders (repositories and the web)
    check.py sources FILE N HOLDERS    `annexfs sources --json`: the same
"""
import json, sys


def fail(msg):
    sys.exit(f"check.py: {msg}")


def records(path):
    with open(path) as f:
        text = f.read()
    text = text.strip()
    if text.startswith("["):
        return json.loads(text)
    return [json.loads(l) for l in text.splitlines() if l.strip()]


def holders(rec):
    """Holders named by one record, whatever the key they are under."""
    for k in ("whereis", "sources", "holders"):
        if k in rec and isinstance(rec[k], list):
            return rec[k]
    return None


def main():
    what, path, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    if what == "lines":
        with open(path, "rb") as f:
            got = sum(1 for _ in f)
        if got != n:
            fail(f"{path}: {got} lines, expected {n}")
    elif what == "lslR":
        with open(path) as f:
            got = sum(1 for l in f if l[:1] in "-l")
        if got != n:
            fail(f"{path}: {got} files listed, expected {n}")
    elif what in ("whereis", "sources"):
        want = int(sys.argv[4])
        recs = records(path)
        if len(recs) != n:
            fail(f"{path}: {len(recs)} records, expected {n}")
        for r in recs:
            h = holders(r)
            if h is None:
                fail(f"{path}: a record without holders: {json.dumps(r)[:200]}")
            if len(h) < want:
                fail(f"{path}: {r.get('file')}: {len(h)} holders, expected {want}")
    else:
        fail(f"unknown check {what}")


if __name__ == "__main__":
    main()
