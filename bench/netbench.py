#!/usr/bin/env python3
"""Latency samplers for bench/run net, and a stalling server.

    netbench.py ttfb PATH CONTENT SAMPLES CACHE_DIR
    netbench.py ttfb-http URL CONTENT SAMPLES
    netbench.py random PATH CONTENT SAMPLES CACHE_DIR
    netbench.py stall PORT

The samplers print one JSON line: {"ok": true, "value": <the figure in ms>, ...} or
{"ok": false, "error": ...}. Every read checks the length returned and the bytes against
CONTENT (the same file read directly). A sample must be cold: before each read the piece
cache's data file for the key (the sparse `*.data` of the content's size under CACHE_DIR) is
asked with SEEK_DATA whether any byte of the range is already there; such offsets are skipped.
"""
import glob, json, os, random, signal, socket, subprocess, sys, time

READ = 65536


def result(**kw):
    print(json.dumps(kw))
    sys.exit(0)


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, int(round(p / 100 * len(xs))) - 1))]


class Cache:
    """The piece cache's data file of the key, found by its size (one key per fresh cache)."""

    def __init__(self, cache_dir, size):
        self.dir, self.size, self.fd = cache_dir, size, None

    def _find(self):
        if self.fd is None:
            for p in glob.glob(os.path.join(self.dir, "v1", "keys", "*", "*.data")):
                if os.stat(p).st_size == self.size:
                    self.fd = os.open(p, os.O_RDONLY)
        return self.fd

    def has_any(self, off, n):
        fd = self._find()
        if fd is None:
            return False
        try:
            return os.lseek(fd, off, os.SEEK_DATA) < off + n
        except OSError:  # ENXIO: no data at or after off
            return False

    def found(self):
        return self._find() is not None


def checked_read(fd, cfd, off):
    t = time.perf_counter()
    got = os.pread(fd, READ, off)
    ms = (time.perf_counter() - t) * 1000
    if len(got) != READ:
        raise RuntimeError(f"pread at {off} returned {len(got)} bytes, not {READ}")
    if got != os.pread(cfd, READ, off):
        raise RuntimeError(f"wrong bytes at {off}")
    return ms


def ttfb(path, content, samples, cache_dir):
    """64 KiB reads at random offsets of a cold file: one offset in each of SAMPLES equal
    strata, strata visited from the last to the first so that readahead after a sample (which
    runs forward) covers strata already sampled, never the next one."""
    size = os.stat(content).st_size
    rng = random.Random(1)
    cache = Cache(cache_dir, size)
    fd, cfd = os.open(path, os.O_RDONLY), os.open(content, os.O_RDONLY)
    stratum = size // samples
    lat, skipped = [], 0
    try:
        for k in reversed(range(samples)):
            for _ in range(50):
                off = (k * stratum + rng.randrange(0, stratum - READ)) // 4096 * 4096
                if not cache.has_any(off, READ):
                    break
                skipped += 1
            else:
                raise RuntimeError(f"no cold offset left in stratum {k}")
            lat.append(checked_read(fd, cfd, off))
    except (RuntimeError, OSError) as e:
        result(ok=False, error=str(e))
    result(ok=True, value=round(pct(lat, 50), 2), p50_ms=round(pct(lat, 50), 2), p90_ms=round(pct(lat, 90), 2),
           p99_ms=round(pct(lat, 99), 2), max_ms=round(max(lat), 2), samples=len(lat), warm_offsets_skipped=skipped,
           cache_checked=cache.found())


def offsets(size, samples):
    """The offsets `ttfb` reads, in its order (one per stratum, last stratum first)."""
    rng = random.Random(1)
    stratum = size // samples
    return [(k * stratum + rng.randrange(0, stratum - READ)) // 4096 * 4096 for k in reversed(range(samples))]


def ttfb_http(url, content, samples):
    """The anchor of `ttfb`: the same 64 KiB range GETs straight to one mirror over one kept-alive
    connection (what the network itself costs), each checked against CONTENT."""
    import http.client, urllib.parse
    u = urllib.parse.urlsplit(url)
    size = os.stat(content).st_size
    cfd = os.open(content, os.O_RDONLY)
    conn = http.client.HTTPConnection(u.hostname, u.port or 80, timeout=30)
    lat = []
    try:
        for off in offsets(size, samples):
            t = time.perf_counter()
            conn.request("GET", u.path, headers={"Range": f"bytes={off}-{off + READ - 1}"})
            resp = conn.getresponse()
            got = resp.read()
            ms = (time.perf_counter() - t) * 1000
            if resp.status != 206 or got != os.pread(cfd, READ, off):
                raise RuntimeError(f"range at {off}: status {resp.status}, {len(got)} bytes, or wrong bytes")
            lat.append(ms)
    except (RuntimeError, OSError, http.client.HTTPException) as e:
        result(ok=False, error=str(e))
    result(ok=True, value=round(pct(lat, 50), 2), p50_ms=round(pct(lat, 50), 2), p99_ms=round(pct(lat, 99), 2),
           max_ms=round(max(lat), 2), samples=len(lat))


def stream(path, progress):
    """Reads PATH sequentially, 1 MiB at a time, writing the bytes read so far to PROGRESS."""
    pf = os.open(progress, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    done = 0
    with open(path, "rb", buffering=0) as f:
        while True:
            b = f.read(1 << 20)
            if not b:
                break
            done += len(b)
            os.pwrite(pf, b"%20d\n" % done, 0)
    sys.exit(0)


def random_during_stream(path, content, samples, cache_dir):
    """p99 of cold random 64 KiB reads while a separate process reads the file sequentially
    (the saturating stream). The stream must be alive and have made progress before the first
    sample, between samples, and after the last; it must not have reached the end; and each
    sample is at an offset ahead of the stream that the cache does not hold yet."""
    size = os.stat(content).st_size
    progress = os.path.join(cache_dir + ".progress")
    # The previous run's file would read as this stream's position until the new stream
    # truncates it: the stream would seem to stand still (or run backwards).
    try:
        os.unlink(progress)
    except FileNotFoundError:
        pass
    proc = subprocess.Popen([sys.executable, __file__, "stream", path, progress])

    def pos():
        try:
            with open(progress) as f:
                return int(f.read().strip() or 0)
        except (FileNotFoundError, ValueError):
            return 0

    def alive_or_fail(when):
        if proc.poll() is not None:
            raise RuntimeError(f"the stream had ended ({when}; exit {proc.returncode}, at {pos()} of {size} bytes)")
        p = pos()
        if p >= size:
            raise RuntimeError(f"the stream had read the whole file ({when})")
        return p

    rng = random.Random(2)
    cache = Cache(cache_dir, size)
    fd, cfd = os.open(path, os.O_RDONLY), os.open(content, os.O_RDONLY)
    lat, skipped = [], 0
    try:
        deadline = time.monotonic() + 60
        while pos() < (4 << 20):  # the stream is up to speed
            alive_or_fail("before the samples")
            if time.monotonic() > deadline:
                raise RuntimeError("the stream made no progress in 60 s")
            time.sleep(0.05)
        start, t0 = alive_or_fail("before the samples"), time.monotonic()
        for i in range(samples):
            p = alive_or_fail(f"before sample {i + 1}")
            # Ahead of the stream by more than its readahead, and not cached yet.
            lo = p + (32 << 20)
            if lo >= size - READ:
                raise RuntimeError(f"the stream came within 32 MiB of the end after {i} samples: "
                                   "use a larger file or fewer samples")
            for _ in range(50):
                off = rng.randrange(lo, size - READ) // 4096 * 4096
                if not cache.has_any(off, READ):
                    break
                skipped += 1
            else:
                raise RuntimeError("no cold offset left ahead of the stream")
            lat.append(checked_read(fd, cfd, off))
        end = alive_or_fail("after the samples")
        if end <= start:
            raise RuntimeError(f"the stream made no progress during the {len(lat)} samples "
                               f"({time.monotonic() - t0:.2f} s, stayed at {start} bytes)")
    except (RuntimeError, OSError) as e:
        proc.kill(); proc.wait()
        result(ok=False, error=str(e))
    proc.send_signal(signal.SIGTERM); proc.wait()
    result(ok=True, value=round(pct(lat, 99), 2), p50_ms=round(pct(lat, 50), 2), p99_ms=round(pct(lat, 99), 2),
           max_ms=round(max(lat), 2), samples=len(lat), warm_offsets_skipped=skipped,
           stream_mib_during=round((end - start) / 1048576, 1), cache_checked=cache.found())


def stall_server(port):
    """Accepts connections and never answers (a stalled mirror)."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", port))
    s.listen(64)
    conns = []
    while True:
        c, _ = s.accept()
        conns.append(c)


if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "ttfb":
        ttfb(sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5])
    elif cmd == "ttfb-http":
        ttfb_http(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    elif cmd == "random":
        random_during_stream(sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5])
    elif cmd == "stream":
        stream(sys.argv[2], sys.argv[3])
    elif cmd == "stall":
        stall_server(int(sys.argv[2]))
    else:
        sys.exit(f"usage: {sys.argv[0]} ttfb|ttfb-http|random|stream|stall ...")
