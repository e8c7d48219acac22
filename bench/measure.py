#!/usr/bin/env python3
"""One benchmark row: annexfs (this build, and the baseline build if there is one) and the
tools it is compared with, run alternately in the same run, each run checked.

    measure.py ROWS.jsonl --section S --name N --unit MiB/s|s|ms [--size BYTES] [--runs N]
        [--better higher|lower] [--target TEXT] [--cond KEY=VALUE ...] [--warmup N] [--limit FIGURE]
        --contender annexfs --cmd 'SH' [--prepare 'SH'] [--verify 'SH'] [--post 'SH'] [--dd] [--json]
        --contender 'aria2c' --cmd 'SH' ... [--runs N]

A run of a contender: `prepare` (untimed), `cmd` (timed), `probe` (untimed, right after),
`verify` (untimed), `post` (untimed); a JSON object that probe or post prints is kept with
the run. Each must exit 0. `--dd`: the cmd is
a dd whose byte count (its last stderr line) must equal --size. `--json`: the cmd prints a
JSON object on its last stdout line with "ok": true and "value" (the figure), e.g. a latency
sampler. Commands run under bash with `{bin}` and `{tag}` replaced by the build's binary and
"new" or "baseline"; the annexfs contender runs once per build given in ANNEXFS_BUILDS
("new=/path/annexfs baseline=/path/annexfs"). A contender that fails a run is FAILED and
runs no more; the row is recorded (ok false) and prints FAILED, never a figure.
`--limit`: the figure the setup allows at most (e.g. the sum of the servers' rate limits, in
the row's unit); each contender's median is also given as a fraction of it (`of_limit`).
"""
import json, os, re, statistics, subprocess, sys, tempfile, time


def parse(argv):
    rows = argv[0]
    row = {"cond": {}, "runs": 3, "warmup": 0, "better": "higher", "size": None, "target": None, "limit": None}
    contenders, cur = [], None
    i = 1
    while i < len(argv):
        a = argv[i]
        if a in ("--dd", "--json"):
            (cur if cur is not None else row)[a[2:]] = True
            i += 1
            continue
        v = argv[i + 1]
        i += 2
        if a == "--contender":
            cur = {"name": v, "prepare": None, "verify": None, "post": None, "probe": None}
            contenders.append(cur)
        elif a == "--cond":
            k, _, val = v.partition("=")
            row["cond"][k] = val
        elif cur is not None and a in ("--cmd", "--prepare", "--verify", "--post", "--probe", "--runs"):
            cur[a[2:]] = int(v) if a == "--runs" else v
        elif cur is None and a in ("--section", "--name", "--unit", "--size", "--runs", "--warmup", "--better", "--target"):
            row[a[2:]] = int(v) if a in ("--size", "--runs", "--warmup") else v
        elif cur is None and a == "--limit":
            row["limit"] = float(v)
        else:
            sys.exit(f"measure.py: unexpected {a}")
    return rows, row, contenders


def sh(cmd, env):
    # Output goes to files, not pipes: a daemon the command starts (a mount) keeps its
    # inherited descriptors, and a pipe would never see the end of its output.
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        p = subprocess.run(["bash", "-c", cmd], env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err)
        out.seek(0); err.seek(0)
        p.stdout = out.read().decode(errors="replace")
        p.stderr = err.read().decode(errors="replace")
    return p


def tail(s, n=300):
    s = s.strip()
    return s[-n:] if s else ""


def json_of(cmd, what, env):
    q = sh(cmd, env)
    if q.returncode:
        raise RuntimeError(f"{what} exited {q.returncode}: {tail(q.stderr or q.stdout)}")
    try:
        out = json.loads(q.stdout.strip().splitlines()[-1])
        return out if isinstance(out, dict) else {}
    except (IndexError, ValueError):
        return {}


def one_run(c, row, env):
    """Returns (value, extra) or raises RuntimeError with the reason."""
    if c.get("prepare"):
        p = sh(c["prepare"], env)
        if p.returncode:
            raise RuntimeError(f"prepare exited {p.returncode}: {tail(p.stderr or p.stdout)}")
    t0 = time.perf_counter()
    p = sh(c["cmd"], env)
    secs = time.perf_counter() - t0
    if p.returncode:
        raise RuntimeError(f"command exited {p.returncode}: {tail(p.stderr or p.stdout)}")
    extra = {"seconds": round(secs, 6)}
    value = None
    if c.get("dd"):
        m = re.search(r"^(\d+) bytes", p.stderr, re.M)
        got = int(m.group(1)) if m else None
        if got != row["size"]:
            raise RuntimeError(f"dd copied {got} bytes, expected {row['size']}")
        extra["bytes"] = got
    if c.get("json"):
        lines = [l for l in p.stdout.splitlines() if l.strip()]
        try:
            out = json.loads(lines[-1])
        except (IndexError, ValueError):
            raise RuntimeError(f"no JSON result: {tail(p.stdout + p.stderr)}")
        extra.update(out)
        if out.get("ok") is not True or out.get("value") is None:
            raise RuntimeError(f"sampler reports failure: {out.get('error', out)}")
        value = float(out["value"])
    if c.get("probe"):
        extra.update(json_of(c["probe"], "probe", env))
    if c.get("verify"):
        v = sh(c["verify"], env)
        if v.returncode:
            raise RuntimeError(f"verification exited {v.returncode}: {tail(v.stderr or v.stdout)}")
    if c.get("post"):
        extra.update(json_of(c["post"], "post", env))
    if value is None:
        if row["unit"] == "MiB/s":
            value = row["size"] / 1048576 / secs
        elif row["unit"] == "ms":
            value = secs * 1000
        else:
            value = secs
    return value, extra


def main():
    rows_path, row, contenders = parse(sys.argv[1:])
    builds = [b.split("=", 1) for b in os.environ.get("ANNEXFS_BUILDS", "").split()]
    if not builds:
        sys.exit("measure.py: ANNEXFS_BUILDS is empty")
    # Expand the annexfs contender into one per build.
    plan = []  # (role, label, contender with substituted commands)
    for c in contenders:
        if c["name"] == "annexfs":
            for tag, binary in builds:
                d = dict(c)
                for k in ("cmd", "prepare", "verify", "post", "probe"):
                    if d.get(k):
                        d[k] = d[k].replace("{bin}", binary).replace("{tag}", tag)
                plan.append(("annexfs" if tag == "new" else tag, "annexfs" if tag == "new" else f"annexfs ({tag})", d))
        else:
            plan.append(("anchor", c["name"], c))
    res = {label: {"runs": [], "extra": [], "ok": True, "error": None} for _, label, _ in plan}
    env = dict(os.environ)
    nmax = max(c.get("runs", row["runs"]) for _, _, c in plan)
    # Warm-up runs (checked like the others, not kept), then alternate: run i of every
    # contender before run i+1 of any.
    for i in range(row["warmup"]):
        for role, label, c in plan:
            try:
                one_run(c, row, env)
            except RuntimeError as e:
                res[label]["ok"], res[label]["error"] = False, f"warm-up: {e}"
    for i in range(nmax):
        for role, label, c in plan:
            r = res[label]
            if not r["ok"] or i >= c.get("runs", row["runs"]):
                continue
            try:
                value, extra = one_run(c, row, env)
                r["runs"].append(round(value, 4))
                r["extra"].append(extra)
            except RuntimeError as e:
                r["ok"], r["error"] = False, f"run {i + 1}: {e}"
    for r in res.values():
        r["median"] = round(statistics.median(r["runs"]), 4) if r["ok"] and r["runs"] else None
        if row["limit"]:
            r["of_limit"] = round(r["median"] / row["limit"], 3) if r["median"] is not None else None
    out = {k: row[k] for k in ("section", "name", "unit", "better", "size", "target")}
    if row["limit"]:
        out["limit"] = row["limit"]
    out["conditions"] = row["cond"]
    out["annexfs"] = res.pop("annexfs")
    for role, label, _ in plan:
        if role not in ("annexfs", "anchor"):
            out[role] = res.pop(label)
    out["anchors"] = {label: res[label] for role, label, _ in plan if role == "anchor"}
    ok = out["annexfs"]["ok"] and all(a["ok"] for a in out["anchors"].values())
    ok = ok and all(out[role]["ok"] for role, _, _ in plan if role not in ("annexfs", "anchor"))
    out["ok"] = ok
    first = next(iter(out["anchors"].values()), None)
    out["ratio"] = round(out["annexfs"]["median"] / first["median"], 3) if ok and first and first["median"] else None
    if "baseline" in out:
        b = out["baseline"]["median"]
        out["vs_baseline"] = round(out["annexfs"]["median"] / b, 3) if ok and b else None
    with open(rows_path, "a") as f:
        f.write(json.dumps(out) + "\n")
    # Printed only from checked results.
    def fig(r):
        if not r["ok"]:
            return f"FAILED ({r['error']})"
        lim = f", {r['of_limit']:.1%} of the limit {row['limit']:g} {row['unit']}" if r.get("of_limit") is not None else ""
        # Where the bytes came from, when the runs say.
        src = "".join(f"\n        run {i + 1}: " + (", ".join(f"{k} {v:g} MiB" for k, v in e["sources_mib"].items()) or "no source listed")
                      for i, e in enumerate(r["extra"]) if "sources_mib" in e)
        frm = [e["from"] for e in r["extra"] if "from" in e]
        src += f"; from: {', '.join(frm)}" if frm else ""
        return f"median {r['median']:g} {row['unit']} (runs {', '.join(f'{v:g}' for v in r['runs'])}){lim}{src}"
    print(f"{'ok    ' if ok else 'FAILED'} {row['section']}: {row['name']}")
    print(f"    annexfs: {fig(out['annexfs'])}")
    if "baseline" in out:
        print(f"    annexfs baseline: {fig(out['baseline'])}" + (f"; new/baseline {out['vs_baseline']}" if ok else ""))
    for name, a in out["anchors"].items():
        print(f"    {name}: {fig(a)}")
    if ok and out["ratio"] is not None:
        print(f"    ratio annexfs / {next(iter(out['anchors']))}: {out['ratio']}" +
              (f" (target {row['target']})" if row["target"] else ""))
    sys.stdout.flush()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
