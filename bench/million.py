#!/usr/bin/env python3
"""Measurements of the million section of bench/run (a JSON object on the last stdout line).

    million.py rss PID N            the daemon's VmRSS and VmHWM, and VmRSS per file (value)
    million.py rss-info PID N       the same, without a value (a probe of another row's runs)
    million.py live MNT REPO N      `git annex get` of the first file of the fixture in REPO:
                                    seconds until the mount at MNT shows its content (value);
                                    then a file staged in the index, until the mount shows it
                                    (the namespace rebuilt); stats of other files of the mount
                                    are timed all along, none may wait for a rebuild (none
                                    may take a quarter of the rebuild's time, nor 250 ms)

The fixture's first file, d000/e00/f0000000.dat, is the one byte "0" (its key is
SHA256E-s1--sha256("0").dat), held by the fixture's directory remote.
"""
import json, os, random, statistics, subprocess, sys, threading, time

FIRST = "d000/e00/f0000000.dat"
MARKER = "zz-staged-marker.txt"
# A stat that waited for the rebuild would take about as long as the rebuild: a stat slower
# than a quarter of it (and than SLOW_STAT, the noise of a busy machine) fails the row.
SLOW_STAT = 0.25


def status(pid):
    with open(f"/proc/{pid}/status") as f:
        return {l.split(":")[0]: int(l.split()[1]) for l in f if l.startswith(("VmRSS", "VmHWM"))}


def rss(pid, n, figure):
    st = status(pid)
    out = {"daemon_rss_mib": st["VmRSS"] // 1024, "daemon_hwm_mib": st["VmHWM"] // 1024,
           "rss_bytes_per_file": round(st["VmRSS"] * 1024 / n, 1), "hwm_bytes_per_file": round(st["VmHWM"] * 1024 / n, 1)}
    if figure:
        out.update({"ok": True, "value": out["rss_bytes_per_file"]})
    print(json.dumps(out))


def path_of(i):
    return f"d{i // 10000:03}/e{i // 100 % 100:02}/f{i:07}.dat"


class Stats(threading.Thread):
    """Stats random files of the mount (each a fresh name, so the kernel asks the daemon)
    until stopped, keeping each one's latency and when it started."""

    def __init__(self, mnt, n):
        super().__init__(daemon=True)
        self.mnt, self.n, self.stop, self.samples, self.errors = mnt, n, threading.Event(), [], []

    def run(self):
        rng = random.Random(15)
        while not self.stop.is_set():
            i = rng.randrange(1, self.n)
            t = time.perf_counter()
            try:
                st = os.stat(os.path.join(self.mnt, path_of(i)))
                if st.st_size != i * 1000 + 1:
                    self.errors.append(f"{path_of(i)}: size {st.st_size}, expected {i * 1000 + 1}")
            except OSError as e:
                self.errors.append(f"{path_of(i)}: {e}")
            self.samples.append((t, time.perf_counter() - t))
            time.sleep(0.002)

    def summary(self, since, until):
        lat = sorted(d for t, d in self.samples if since <= t <= until)
        if not lat:
            return {"stats": 0}
        return {"stats": len(lat), "stat_p50_ms": round(lat[len(lat) // 2] * 1000, 3),
                "stat_p99_ms": round(lat[min(len(lat) - 1, len(lat) * 99 // 100)] * 1000, 3),
                "stat_max_ms": round(lat[-1] * 1000, 3)}


def run(cmd, cwd):
    p = subprocess.run(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if p.returncode:
        raise RuntimeError(f"{' '.join(cmd)} exited {p.returncode}: {p.stderr.strip()[-300:]}")
    return p.stdout


def wait_for(what, check, limit):
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < limit:
        if check():
            return time.perf_counter() - t0
        time.sleep(0.005)
    raise RuntimeError(f"{what}: not seen after {limit} s")


def live(mnt, repo, n):
    first = os.path.join(mnt, FIRST)
    out = {}

    def present():
        try:
            return os.getxattr(first, "user.annexfs.present") == b"1"
        except OSError:
            return False

    # Start from the fixture's state: the content is not in the repository.
    run(["git", "annex", "drop", "--force", "-q", FIRST], repo)
    run(["git", "update-index", "--force-remove", MARKER], repo)
    wait_for("the dropped content gone from the mount", lambda: not present(), 10)
    stats = Stats(mnt, n)
    stats.start()
    try:
        time.sleep(0.5)
        t0 = time.perf_counter()
        run(["git", "annex", "get", "-q", FIRST], repo)
        t1 = time.perf_counter()
        out["get_s"] = round(t1 - t0, 3)
        shown = wait_for("the content after git annex get", present, 30)
        with open(first, "rb") as f:
            data = f.read()
        if data != b"0":
            raise RuntimeError(f"{FIRST} reads {data!r} through the mount, expected b'0'")
        time.sleep(1)
        out.update({f"during_get_{k}": v for k, v in stats.summary(t0, time.perf_counter()).items()})
        # A change of the index: the mount rebuilds its namespace while the stats go on.
        p = subprocess.run(["git", "hash-object", "-w", "--stdin"], cwd=repo, input="staged\n",
                           stdout=subprocess.PIPE, text=True, check=True)
        blob = p.stdout.strip()
        t3 = time.perf_counter()
        run(["git", "update-index", "--add", "--cacheinfo", f"100644,{blob},{MARKER}"], repo)
        rebuilt = wait_for("the staged file in the mount", lambda: os.path.exists(os.path.join(mnt, MARKER)), 120)
        t4 = time.perf_counter()
        out["rebuild_seen_s"] = round(rebuilt, 3)
        out.update({f"during_rebuild_{k}": v for k, v in stats.summary(t3, t4).items()})
    finally:
        stats.stop.set()
        stats.join()
        subprocess.run(["git", "update-index", "--force-remove", MARKER], cwd=repo)
        subprocess.run(["git", "annex", "drop", "--force", "-q", FIRST], cwd=repo)
    if stats.errors:
        raise RuntimeError(f"{len(stats.errors)} stats failed, first: {stats.errors[0]}")
    bound = max(SLOW_STAT, out["rebuild_seen_s"] / 4)
    worst = max(out.get("during_get_stat_max_ms", 0), out.get("during_rebuild_stat_max_ms", 0)) / 1000
    out.update({"ok": worst <= bound, "value": round(shown, 4), "stat_bound_ms": round(bound * 1000)})
    if worst > bound:
        out["error"] = f"a stat took {worst * 1000:.0f} ms, more than a quarter of the rebuild ({out['rebuild_seen_s']} s) and {SLOW_STAT * 1000:.0f} ms"
    print(json.dumps(out))


def main():
    what = sys.argv[1]
    try:
        if what in ("rss", "rss-info"):
            rss(sys.argv[2], int(sys.argv[3]), what == "rss")
        elif what == "live":
            live(sys.argv[2], sys.argv[3], int(sys.argv[4]))
        else:
            sys.exit(f"million.py: unknown {what}")
    except RuntimeError as e:
        print(json.dumps({"ok": False, "error": str(e)}))
        sys.exit(1)


if __name__ == "__main__":
    main()
