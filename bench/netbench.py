#!/usr/bin/env python3
"""Helpers for bench/run net: timing reads through a mount, a stalling server."""
import os, random, socket, statistics, sys, threading, time

def ttfb(path, samples, size):
    """Time to first byte of 64 KiB reads at random offsets of a file not yet cached."""
    rng = random.Random(1)
    out = []
    fd = os.open(path, os.O_RDONLY)
    for _ in range(samples):
        off = rng.randrange(0, size - 65536) // 65536 * 65536
        t = time.perf_counter()
        os.pread(fd, 65536, off)
        out.append((time.perf_counter() - t) * 1000)
    os.close(fd)
    out.sort()
    print(f"ttfb_ms median={statistics.median(out):.1f} p90={out[int(len(out)*0.9)-1]:.1f} max={out[-1]:.1f}")

def random_during_stream(path, size, n):
    """p99 of random 64 KiB reads while another thread reads the file sequentially."""
    done = threading.Event()
    def stream():
        with open(path, "rb", buffering=0) as f:
            while f.read(1 << 20):
                if done.is_set():
                    break
    t = threading.Thread(target=stream); t.start()
    time.sleep(0.5)
    rng = random.Random(2)
    lat = []
    fd = os.open(path, os.O_RDONLY)
    for _ in range(n):
        off = rng.randrange(0, size - 65536)
        s = time.perf_counter()
        os.pread(fd, 65536, off)
        lat.append((time.perf_counter() - s) * 1000)
    os.close(fd)
    done.set(); t.join()
    lat.sort()
    print(f"random_ms p50={lat[len(lat)//2]:.1f} p99={lat[int(len(lat)*0.99)-1]:.1f} max={lat[-1]:.1f}")

def stall_server(port):
    """Accepts connections and never answers (a stalled mirror)."""
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", port)); s.listen(64)
    conns = []
    while True:
        c, _ = s.accept(); conns.append(c)

if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "ttfb": ttfb(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    elif cmd == "random": random_during_stream(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    elif cmd == "stall": stall_server(int(sys.argv[2]))
