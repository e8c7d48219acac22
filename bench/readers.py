#!/usr/bin/env python3
"""Many readers at once, for bench/run readers64.

    readers.py MNT N SUMS PID

N processes start together; process i reads MNT/r{i:02}.bin from start to end in 1 MiB reads
and hashes it. SUMS has one "sha256 name" line per file (sha256sum's format): every reader's
bytes are checked before a figure is printed. PID is the daemon, whose VmHWM is reported.

Prints one JSON line: {"ok": true, "value": <MiB/s, all the bytes over the wall time>, ...}
with each reader's rate, the slowest and fastest against the median, the latest first byte
(a reader starved while the others stream shows here), the daemon's peak RSS and the most
sockets it had open at once (sampled); or
{"ok": false, "error": ...}.
"""
import hashlib, json, multiprocessing as mp, os, statistics, sys, threading, time

CHUNK = 1 << 20


def reader(path, start, q):
    """Waits for the common start, then reads and hashes the file: (name, sha256, bytes,
    seconds to the first byte, seconds to the end), times from the start."""
    start.wait()
    t0 = time.perf_counter()
    h, n, first = hashlib.sha256(), 0, None
    try:
        with open(path, "rb", buffering=0) as f:
            while True:
                b = f.read(CHUNK)
                if not b:
                    break
                if first is None:
                    first = time.perf_counter() - t0
                h.update(b)
                n += len(b)
        q.put((os.path.basename(path), h.hexdigest(), n, first, time.perf_counter() - t0, None))
    except OSError as e:
        q.put((os.path.basename(path), None, n, first, time.perf_counter() - t0, str(e)))


class Sampler(threading.Thread):
    """The daemon's open sockets (its connections to the mirrors) and resident set, every
    0.2 s: where its memory goes while the readers run."""

    def __init__(self, pid):
        super().__init__(daemon=True)
        self.pid, self.stop, self.sockets, self.rss_kib = pid, threading.Event(), 0, 0

    def run(self):
        while not self.stop.wait(0.2):
            try:
                fds = os.listdir(f"/proc/{self.pid}/fd")
                n = sum(1 for fd in fds if os.readlink(f"/proc/{self.pid}/fd/{fd}").startswith("socket:"))
                with open(f"/proc/{self.pid}/status") as f:
                    rss = next(int(l.split()[1]) for l in f if l.startswith("VmRSS"))
            except (OSError, StopIteration):
                continue
            self.sockets, self.rss_kib = max(self.sockets, n), max(self.rss_kib, rss)


def main():
    mnt, n, sums, pid = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    want = {}
    with open(sums) as f:
        for line in f:
            s, name = line.split()
            want[name.lstrip("*")] = s
    names = [f"r{i:02}.bin" for i in range(n)]
    missing = [x for x in names if x not in want]
    if missing:
        print(json.dumps({"ok": False, "error": f"no sha256 for {missing[0]}"}))
        return
    start, q = mp.Event(), mp.Queue()
    procs = [mp.Process(target=reader, args=(os.path.join(mnt, x), start, q)) for x in names]
    for p in procs:
        p.start()
    time.sleep(0.5)  # every process is waiting on the event
    sampler = Sampler(pid)
    sampler.start()
    t0 = time.perf_counter()
    start.set()
    got = [q.get(timeout=1800) for _ in names]
    wall = time.perf_counter() - t0
    sampler.stop.set()
    sampler.join()
    for p in procs:
        p.join()
    with open(f"/proc/{pid}/status") as f:
        hwm = next(int(l.split()[1]) for l in f if l.startswith("VmHWM"))
    bad = [(name, err or f"sha256 {s}, expected {want[name]}") for name, s, _, _, _, err in got
           if err or s != want[name]]
    if bad:
        print(json.dumps({"ok": False, "error": f"{len(bad)} readers wrong: {bad[0][0]}: {bad[0][1]}"}))
        return
    total = sum(b for _, _, b, _, _, _ in got)
    rates = sorted(b / 1048576 / secs for _, _, b, _, secs, _ in got)
    med = statistics.median(rates)
    firsts = sorted(first for _, _, _, first, _, _ in got)
    print(json.dumps({
        "ok": True, "value": round(total / 1048576 / wall, 2), "readers": n, "wall_s": round(wall, 3),
        "reader_mibs_median": round(med, 3), "reader_mibs_min": round(rates[0], 3),
        "reader_mibs_max": round(rates[-1], 3), "slowest_vs_median": round(rates[0] / med, 3),
        "fastest_vs_median": round(rates[-1] / med, 3), "within_2x_of_median": rates[0] >= med / 2 and rates[-1] <= med * 2,
        "first_byte_median_s": round(statistics.median(firsts), 3), "first_byte_max_s": round(firsts[-1], 3),
        "peak_rss_mib": hwm // 1024, "daemon_sockets_max": sampler.sockets,
    }))


if __name__ == "__main__":
    main()
