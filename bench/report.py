#!/usr/bin/env python3
"""Benchmark results: merge a run's rows into the results file, and write the Markdown page.

    report.py merge ROWS.jsonl RESULTS.json --command 'bench/run read' --sections 'read net'
        [--baseline REV] [--note TEXT] [--commit SHA --dirty yes|no]
        Replaces the named sections of RESULTS.json with this run's rows, each section stamped
        with the commit (and whether the work tree was dirty), date, machine and command.
    report.py md RESULTS.json > docs/BENCHMARKS.md
"""
import argparse, datetime, json, os, platform, subprocess, sys


def git(*a):
    return subprocess.run(["git", *a], stdout=subprocess.PIPE, text=True, check=True).stdout.strip()


def machine():
    mem = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1]) // 1024
    cpu = ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    try:
        ga = subprocess.run(["git", "annex", "version", "--raw"], stdout=subprocess.PIPE, text=True).stdout.strip()
    except OSError:
        ga = None
    fs = subprocess.run(["stat", "-f", "-c", "%T", "bench"], stdout=subprocess.PIPE, text=True).stdout.strip()
    return {"nproc": os.cpu_count(), "memory_mib": mem, "cpu": cpu, "kernel": platform.release(),
            "git_annex": ga, "filesystem": fs, "loadavg": os.getloadavg()[0]}


def merge(a):
    rows = []
    if os.path.exists(a.rows):
        with open(a.rows) as f:
            rows = [json.loads(l) for l in f if l.strip()]
    try:
        with open(a.results) as f:
            res = json.load(f)
    except FileNotFoundError:
        res = {"sections": {}}
    # The commit and dirty flag as they were when the run started (bench/run passes them).
    if a.commit:
        commit, dirty = a.commit, a.dirty == "yes"
    else:
        commit = git("rev-parse", "HEAD")
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], stdout=subprocess.PIPE,
                               text=True).stdout.strip() != ""
    stamp = {
        "commit": commit,
        "dirty": dirty,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": machine(),
        "command": a.command,
        "env": {k: v for k, v in sorted(os.environ.items()) if k.startswith("BENCH_") or k == "BASELINE"},
    }
    if a.baseline:
        stamp["baseline"] = {"rev": a.baseline, "commit": git("rev-parse", a.baseline + "^{commit}")}
    if a.note:
        stamp["note"] = a.note
    for s in a.sections.split():
        res["sections"][s] = dict(stamp, ok=all(r["ok"] for r in rows if r["section"] == s) and
                                  any(r["section"] == s for r in rows),
                                  rows=[r for r in rows if r["section"] == s])
    order = ["sources", "ls", "meta", "read", "net", "video", "rss", "swarm", "remotes"]
    res["sections"] = dict(sorted(res["sections"].items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else 99))
    with open(a.results + ".tmp", "w") as f:
        json.dump(res, f, indent=1)
        f.write("\n")
    os.replace(a.results + ".tmp", a.results)


def fmt(v, unit):
    if v is None:
        return "—"
    if unit == "s":
        return f"{v:.3g} s"
    if unit == "ms":
        return f"{v:.1f} ms"
    if unit == "MiB/s":
        return f"{v:.0f} MiB/s" if v >= 100 else f"{v:.1f} MiB/s"
    return f"{v:g} {unit}"


def cell(r, unit):
    if r is None:
        return ""
    if not r["ok"]:
        return f"**FAILED**: {r['error']}".replace("|", "\\|").replace("\n", " ")
    runs = r["runs"]
    s = fmt(r["median"], unit)
    if len(runs) > 1:
        s += f" ({fmt(min(runs), unit)}–{fmt(max(runs), unit)}, {len(runs)} runs)"
    # Sampler details (latency percentiles, peak RSS) from the runs.
    keys = [k for k in ("p50_ms", "p90_ms", "p99_ms", "max_ms", "samples", "warm_offsets_skipped", "peak_rss_mib", "daemon_read_mib", "passthrough")
            if any(k in e for e in r.get("extra", []))]
    # Where the bytes came from: MiB per source in each run, or the remote a tool used.
    per_run = [e["sources_mib"] for e in r.get("extra", []) if "sources_mib" in e]
    if per_run:
        s += "; MiB per source: " + "; ".join(
            f"run {i + 1}: " + (", ".join(f"{k} {v:g}" for k, v in d.items()) or "none listed") for i, d in enumerate(per_run)
        ).replace("|", "\\|")
    took = [e["from"] for e in r.get("extra", []) if "from" in e]
    if took:
        s += f"; from: {', '.join(took)}"
    if r.get("of_limit") is not None:
        s += f"; {r['of_limit']:.1%} of the limit"
    for k in keys:
        vals = [e[k] for e in r["extra"] if k in e]
        if k == "passthrough":
            s += f"; passthrough: {', '.join(sorted(set(str(v) for v in vals)))}"
        else:
            s += f"; {k}: " + ", ".join(f"{v:g}" for v in vals)
    return s


def md(a):
    with open(a.results) as f:
        res = json.load(f)
    rel = os.path.relpath(a.results)
    out = ["# annexfs benchmarks", "",
           f"Generated by `bench/report.py md {rel}` from `{rel}`, which `bench/run` writes; do not edit",
           "by hand. Each section names the commit, machine and command that produced it. In each row",
           "annexfs and the tools it is compared with ran alternately in the same run; every run's exit",
           "status and bytes were checked (a hash or byte count against the content), and a run that",
           "failed shows **FAILED**, not a figure. These machines are shared and noisy: compare the",
           "ratios, not the absolute figures. `ratio` is annexfs over the first tool named; with",
           "`BASELINE=<rev> bench/run`, each annexfs row also ran with the build of that revision",
           "(`new/baseline`).", ""]
    for name, s in res["sections"].items():
        m = s["machine"]
        out.append(f"## `{name}`" + ("" if s["ok"] else " (**FAILED**)"))
        out.append("")
        out.append(f"Commit `{s['commit'][:12]}`{' with uncommitted changes' if s['dirty'] else ''}, {s['date']}, "
                   f"`{s['command']}`; {m['nproc']} cores ({m['cpu']}), {m['memory_mib']} MiB, Linux {m['kernel']}, "
                   f"git-annex {m['git_annex']}, {m['filesystem']}, load {m['loadavg']:.1f} at the end.")
        if s.get("env"):
            out[-1] += " Settings: " + ", ".join(f"`{k}={v}`" for k, v in s["env"].items()) + "."
        if s.get("baseline"):
            out[-1] += f" Baseline: `{s['baseline']['rev']}` = `{s['baseline']['commit'][:12]}`."
        if s.get("note"):
            out += ["", s["note"]]
        out.append("")
        base = any("baseline" in r for r in s["rows"])
        head = ["what", "conditions", "annexfs"] + (["baseline build", "new/baseline"] if base else []) + \
               ["compared with", "ratio", "target"]
        out.append("| " + " | ".join(head) + " |")
        out.append("|" + "---|" * len(head))
        for r in s["rows"]:
            u = r["unit"]
            cond = "; ".join(f"{k}: {v}" for k, v in r["conditions"].items())
            anchors = "<br>".join(f"{n}: {cell(x, u)}" for n, x in r["anchors"].items())
            line = [r["name"] + ("" if r["ok"] else " **FAILED**"), cond, cell(r["annexfs"], u)]
            if base:
                line += [cell(r.get("baseline"), u), f"{r['vs_baseline']}" if r.get("vs_baseline") else "—"]
            line += [anchors, f"**{r['ratio']}**" if r.get("ratio") is not None else "—", r.get("target") or ""]
            out.append("| " + " | ".join(x.replace("\n", " ") for x in line) + " |")
        out.append("")
    sys.stdout.write("\n".join(out))


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("merge")
    m.add_argument("rows")
    m.add_argument("results")
    m.add_argument("--command", required=True)
    m.add_argument("--sections", required=True)
    m.add_argument("--baseline")
    m.add_argument("--note")
    m.add_argument("--commit")
    m.add_argument("--dirty", choices=["yes", "no"])
    d = sub.add_parser("md")
    d.add_argument("results")
    a = p.parse_args()
    merge(a) if a.cmd == "merge" else md(a)


if __name__ == "__main__":
    main()
