#!/usr/bin/env python3
"""Helpers of bench/run remotes.

    remotes.py cat PATH SIZE SUMFILE STATUS_CMD...
        Reads PATH to its end (1 MiB reads) hashing it, timed from the open to the end; then,
        with the file still open (the mount's fetch of the key and its per-source figures are
        alive while it is open), runs STATUS_CMD (`annexfs status --json MOUNTPOINT`), closes
        the file and writes the sha256 to SUMFILE. Prints one JSON line: {"ok": true, "value":
        MiB/s, "sources_mib": {source identity: MiB it gave}, ...} or {"ok": false, "error": ...}.
        A short read is a failure; the bytes are checked against the content by the caller.
    remotes.py from GETLOG
        The remote `git annex get` took the key from ("get f (from s3...) ok"), and those it
        tried before: {"from": "NAME"} or {"from": "NAME (after OTHER failed)"}.
    remotes.py holders SOURCES_JSON
        One line from `annexfs sources --json FILE`: every holder, readable or why not.
"""
import hashlib, json, os, re, subprocess, sys, time


def result(**kw):
    print(json.dumps(kw))
    sys.exit(0)


def cat(path, size, sumfile, status_cmd):
    h = hashlib.sha256()
    n = 0
    try:
        t0 = time.perf_counter()
        fd = os.open(path, os.O_RDONLY)
        try:
            while True:
                b = os.read(fd, 1 << 20)
                if not b:
                    break
                h.update(b)
                n += len(b)
            secs = time.perf_counter() - t0
            st = subprocess.run(status_cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        finally:
            os.close(fd)
    except OSError as e:
        result(ok=False, error=f"reading {path}: {e} after {n} bytes")
    with open(sumfile, "w") as f:
        f.write(h.hexdigest() + "\n")
    if n != size:
        result(ok=False, error=f"read {n} bytes of {path}, expected {size}")
    if st.returncode:
        result(ok=False, error=f"status exited {st.returncode}: {st.stderr.strip()[-300:]}")
    try:
        mounts = json.loads(st.stdout)["mounts"]
        m = mounts[0]
        sources = {s["identity"]: round(s["bytes"] / 1048576, 1) for s in m["sources"]}
        fetched = round(m["counters"]["bytes_fetched"] / 1048576, 1)
    except (ValueError, KeyError, IndexError, TypeError) as e:
        result(ok=False, error=f"status --json unreadable ({e!r}): {st.stdout[:300]}")
    result(ok=True, value=round(size / 1048576 / secs, 4), seconds=round(secs, 6), sources_mib=sources,
           fetched_mib=fetched)


def took_from(log):
    with open(log, errors="replace") as f:
        text = f.read()
    # Each remote tried says "(from NAME...)"; the last one gave the content.
    tried = re.findall(r"\(from ([^.)]+)\.\.\.\)", text)
    if not tried:
        took = "not said"
    elif len(tried) == 1:
        took = tried[0]
    else:
        took = f"{tried[-1]} (after {', '.join(tried[:-1])} failed)"
    print(json.dumps({"from": took}))


def holders(path):
    with open(path) as f:
        recs = [json.loads(l) for l in f if l.strip()]
    out = []
    for r in recs:
        for h in r.get("holders", []):
            name = h.get("remote") or h.get("description") or h.get("uuid", "?")[:8]
            if h.get("readable"):
                out.append(f"{name} readable")
            else:
                why = h.get("why") or h.get("reason") or h.get("error") or "not readable"
                out.append(f"{name} not readable ({why})")
    print(", ".join(out))


if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "cat":
        cat(sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5:])
    elif cmd == "from":
        took_from(sys.argv[2])
    elif cmd == "holders":
        holders(sys.argv[2])
    else:
        sys.exit(f"usage: {sys.argv[0]} cat|from|holders ...")
