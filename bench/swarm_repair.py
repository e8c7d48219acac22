#!/usr/bin/env python3
"""The swarm-repair benchmark's scenario (bench/run swarm-repair): five annexfs nodes keep
`copies = 2` of a set of files by signed rules, each node's uploads behind its own tc limit
(set by bench/run on the nodes' ports); one node is stopped and the others restore two copies.

    swarm_repair.py fixture DIR MIB BIN       the origin repository, its files, signed rules, clones
    swarm_repair.py run DIR BIN RATE_MIBS read|noread
                                              one loss and its repair; prints a JSON line
    swarm_repair.py figure RESULT.json FIELD  prints {"ok": true, "value": RESULT[FIELD]}

`run`: start the origin (unlimited: it only fills the nodes) and the five keeping nodes (fresh
caches), wait until every piece has two copies among them and each holds its share, stop the
origin and node 2, and then:
- without a read: time from the stop until every survivor holds its new share; bytes moved are
  what the survivors uploaded meanwhile (their tc classes; the keepers' own count, from their
  `/v1/keep` reports, beside), against the minimum, the bytes of node 2's share (each of its
  pieces lost one copy); the time against that minimum at the survivors' summed limits;
- with a read: once the survivors begin repairing, a fresh mount knowing only the survivors
  reads the largest file; its rate against the survivors' summed limits (keeping is background
  work: all of it is spare to a reader), and beside, against those limits less the repair's
  rate meanwhile (their uploads less the file), which a greedy repair would make look good.
Every figure only after the bytes are checked: the pieces each survivor newly holds are read
back from it by ranges and compared with the files; the file read through the mount is
compared by sha256. Exits non-zero (and prints ok false) on any failure.
"""
import hashlib, json, os, shutil, signal, subprocess, sys, time, urllib.parse, urllib.request

NODES = 5
GONE = 2
PORT_O = 17500
PORTS = [17511 + i for i in range(NODES)]
GRACE = 5
FILE_MIB = 64


def sh(*cmd, cwd=None, check=True):
    p = subprocess.run(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if check and p.returncode:
        raise RuntimeError(f"{' '.join(map(str, cmd))} exited {p.returncode}: {p.stderr[-300:]}")
    return p.stdout


def get(port, path, rng=None, timeout=30):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    if rng:
        req.add_header("Range", f"bytes={rng[0]}-{rng[1] - 1}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, b""
    except OSError:
        return 0, b""


def report(port):
    st, body = get(port, "/v1/keep")
    try:
        return json.loads(body) if st == 200 else {}
    except ValueError:
        return {}


def have(port, key):
    st, body = get(port, f"/v1/keys/{urllib.parse.quote(key, safe='')}/have")
    try:
        return [tuple(r) for r in json.loads(body)["ranges"]] if st == 200 else []
    except (ValueError, KeyError):
        return []


def tc_sent(ports):
    """Bytes the nodes on `ports` uploaded, from their tc classes on lo (bench/run gives node i
    the class 1:4<i+1>); None without them."""
    total = 0
    for port in ports:
        cls = f"1:4{PORTS.index(port) + 1}"
        p = subprocess.run(["tc", "-s", "class", "show", "dev", "lo", "classid", cls], stdout=subprocess.PIPE, text=True)
        words = p.stdout.split()
        if p.returncode or "Sent" not in words:
            return None
        total += int(words[words.index("Sent") + 1])
    return total


def wait(what, cond, limit, step=0.5):
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit:
        if cond():
            return time.monotonic() - t0
        time.sleep(step)
    raise RuntimeError(f"timed out after {limit} s waiting for {what}")


def fixture(d, mib, binary):
    if os.path.exists(f"{d}.done"):
        return
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "bench", "-f", f"{d}/signer")
    pub = open(f"{d}/signer.pub").read().strip()
    with open(f"{d}/allowed_signers", "w") as f:
        f.write(f'bench@annexfs.invalid namespaces="git" {pub}\n')
    o = f"{d}/o"
    sh("git", "init", "-q", "-b", "main", o)
    trust = [["config", "gpg.format", "ssh"], ["config", "gpg.ssh.allowedSignersFile", f"{d}/allowed_signers"]]
    sh("git", "annex", "init", "-q", "origin", cwd=o)
    for c in trust:
        sh("git", *c, cwd=o)
    names = []
    left, i = mib, 0
    while left > 0:
        n = min(FILE_MIB, left)
        name = f"f{i:03}.bin"
        with open(f"{o}/{name}", "wb") as f:
            f.write(os.urandom(n << 20))
        names.append(name)
        left, i = left - n, i + 1
    sh("git", "annex", "add", "-q", *names, cwd=o)
    sh("git", "commit", "-q", "-m", "files", cwd=o)
    sh(binary, "index", *names, cwd=o)
    sums = {n: hashlib.sha256(open(f"{o}/{n}", "rb").read()).hexdigest() for n in names}
    keys = {n: sh("git", "annex", "lookupkey", n, cwd=o).strip() for n in names}
    for i in list(range(NODES)) + ["reader"]:
        c = f"{d}/k{i}" if i != "reader" else f"{d}/reader"
        sh("git", "clone", "-q", o, c)
        sh("git", "annex", "init", "-q", os.path.basename(c), cwd=c)
        sh("git", "config", "annex.security.allowed-ip-addresses", "127.0.0.1", cwd=c)
        sh("git", "remote", "remove", "origin", cwd=c)
        for t in trust:
            sh("git", *t, cwd=c)
    with open(f"{o}/.annexfs.toml", "w") as f:
        f.write("[swarm]\ncopies = 2\n")
    sh("git", "add", ".annexfs.toml", cwd=o)
    sh("git", "-c", f"user.signingkey={d}/signer.pub", "commit", "-q", "-S", "-m", "rules", cwd=o)
    for i in range(NODES):
        sh("git", "pull", "-q", "--ff-only", o, "HEAD", cwd=f"{d}/k{i}")
    sh("git", "pull", "-q", "--ff-only", o, "HEAD", cwd=f"{d}/reader")
    with open(f"{d}/files.json", "w") as f:
        json.dump({"names": names, "sums": sums, "keys": keys, "mib": mib}, f)
    open(f"{d}.done", "w").close()


class Run:
    def __init__(self, d, binary):
        self.d, self.bin, self.procs = d, binary, {}
        self.files = json.load(open(f"{d}/files.json"))
        self.sizes = {n: os.path.getsize(os.path.realpath(f"{d}/o/{n}")) for n in self.files["names"]}

    def serve(self, name, repo, port, extra):
        log = open(f"{self.d}/{name}.log", "w")
        cache = f"{self.d}/cache-{name}"
        shutil.rmtree(cache, ignore_errors=True)
        p = subprocess.Popen(
            [self.bin, "serve", repo, "--listen", f"127.0.0.1:{port}", "--cache-dir", cache, "--per-peer", "64", *extra],
            stdout=log, stderr=log, env=dict(os.environ, ANNEXFS_LOG=os.environ.get("BENCH_NODE_LOG", "annexfs=info")))
        self.procs[name] = p
        wait(f"{name} to listen", lambda: get(port, "/v1/hello")[0] == 200, 30, 0.1)

    def stop(self, name):
        p = self.procs.pop(name, None)
        if p:
            p.send_signal(signal.SIGKILL)
            p.wait()

    def stop_all(self):
        for n in list(self.procs):
            self.stop(n)

    def held(self, port):
        """Per key, the ranges the node holds."""
        return {k: have(port, k) for k in self.files["keys"].values()}

    def start(self):
        self.serve("o", f"{self.d}/o", PORT_O, [])
        peers = [a for p in [PORT_O] + PORTS for a in ("--peer", f"http://127.0.0.1:{p}")]
        for i, port in enumerate(PORTS):
            self.serve(f"k{i}", f"{self.d}/k{i}", port,
                       ["--keep", "64G", "--keep-grace", str(GRACE), "--keep-every", "1", *peers])

    def kept(self, ports, nodes):
        rs = [report(p) for p in ports]
        total = sum(self.sizes.values())
        return all(r.get("rules") and r.get("assigned_pieces", 0) > 0 and r["held_pieces"] == r["assigned_pieces"]
                   and sum(1 for n in r.get("nodes", []) if n.get("placed")) == nodes for r in rs) \
            and sum(r["assigned_bytes"] for r in rs) == 2 * total

    def check_new(self, port, before, after):
        """Reads back by ranges the bytes the node holds now and did not before; compares them
        with the files. Returns the bytes checked."""
        checked = 0
        by_key = {k: n for n, k in self.files["keys"].items()}
        for key, ranges in after.items():
            old = before.get(key, [])
            data = None
            for a, b in ranges:
                # The parts of [a, b) not covered before.
                cuts = [(a, b)]
                for x, y in old:
                    cuts = [piece for (p, q) in cuts for piece in ((p, min(q, x)), (max(p, y), q)) if piece[0] < piece[1]]
                for p, q in cuts:
                    if data is None:
                        data = open(os.path.realpath(f"{self.d}/o/{by_key[key]}"), "rb").read()
                    st, body = get(port, f"/v1/keys/{urllib.parse.quote(key, safe='')}", (p, q), timeout=300)
                    if st != 206 or body != data[p:q]:
                        raise RuntimeError(f"node on port {port}: bytes {p}-{q} of {key} are not the file's (status {st}, {len(body)} bytes)")
                    checked += q - p
        return checked


def run(d, binary, rate_mibs, read):
    r = Run(d, binary)
    out = {"ok": False}
    try:
        total = sum(r.sizes.values())
        r.start()
        fill = wait("two copies of every piece", lambda: r.kept(PORTS, NODES), 1800)
        rest = [p for i, p in enumerate(PORTS) if i != GONE]
        gone_share = report(PORTS[GONE])["assigned_bytes"]
        before = {p: report(p) for p in rest}
        held_before = {p: r.held(p) for p in rest}
        r.stop("o")
        r.stop(f"k{GONE}")
        t_stop = time.monotonic()
        wire0 = tc_sent(rest)
        limit_sum = rate_mibs * len(rest)
        out.update({"total_mib": round(total / 2**20, 1), "fill_s": round(fill, 1), "nodes": NODES,
                    "rate_mibs_per_node": rate_mibs, "survivors_limit_mibs": limit_sum,
                    "lost_share_mib": round(gone_share / 2**20, 2)})
        fetched = lambda: sum(report(p).get("fetched_bytes", 0) for p in rest)
        fetched0 = sum(b["fetched_bytes"] for b in before.values())
        if read:
            # The read starts once a survivor has begun taking over.
            wait("the repair to begin", lambda: any(report(p).get("assigned_pieces", 0) > report(p).get("held_pieces", 0) for p in rest), 120, 0.1)
            name = max(r.sizes, key=r.sizes.get)
            mnt, cache = f"{d}/mnt-reader", f"{d}/cache-reader"
            shutil.rmtree(cache, ignore_errors=True)
            os.makedirs(mnt, exist_ok=True)
            peers = [a for p in rest for a in ("--peer", f"http://127.0.0.1:{p}")]
            sh(binary, "mount", "--cache-dir", cache, "--no-publish", "--log-file", f"{d}/reader.log", *peers, f"{d}/reader", mnt)
            try:
                f0, w0, t0 = fetched(), tc_sent(rest), time.monotonic()
                h = hashlib.sha256()
                with open(f"{mnt}/{name}", "rb") as f:
                    while True:
                        b = f.read(1 << 20)
                        if not b:
                            break
                        h.update(b)
                secs = time.monotonic() - t0
                f1, w1 = fetched(), tc_sent(rest)
            finally:
                subprocess.run(["fusermount3", "-u", mnt], stderr=subprocess.DEVNULL)
            if h.hexdigest() != r.files["sums"][name]:
                raise RuntimeError(f"{name} read through the mount during the repair is not the file")
            read_mibs = r.sizes[name] / 2**20 / secs
            # The repair's rate over the read: what the survivors uploaded meanwhile (their tc
            # classes) less the file read; the keepers' own count when there are no classes.
            if w0 is not None and w1 is not None:
                repair_mibs = max(0, (w1 - w0) - r.sizes[name]) / 2**20 / secs
            else:
                repair_mibs = (f1 - f0) / 2**20 / secs
            spare = limit_sum - repair_mibs
            out.update({"read_file_mib": round(r.sizes[name] / 2**20, 1), "read_s": round(secs, 2),
                        "read_mibs": round(read_mibs, 2), "repair_mibs_during_read": round(repair_mibs, 2),
                        "spare_mibs": round(spare, 2), "read_of_spare": round(read_mibs / spare, 3),
                        "value": round(read_mibs / limit_sum, 3)})
        repair = wait("the survivors to hold their new shares", lambda: r.kept(rest, NODES - 1), 1800, 0.25)
        repair_s = time.monotonic() - t_stop
        moved = fetched() - fetched0
        wire = tc_sent(rest)
        checked = sum(r.check_new(p, held_before[p], r.held(p)) for p in rest)
        if checked == 0 or checked > moved:
            raise RuntimeError(f"survivors newly hold {checked} bytes, their keepers fetched {moved}")
        ideal = gone_share / 2**20 / limit_sum
        # Bytes moved: on the wire (the survivors' tc classes: the repair's pieces, requests and
        # have-maps), else as the keepers count what landed.
        if wire0 is not None and wire is not None and not read:
            moved_wire = wire - wire0
            out["moved_wire_mib"] = round(moved_wire / 2**20, 2)
        else:
            moved_wire = moved
        out.update({"moved_mib": round(moved / 2**20, 2), "checked_mib": round(checked / 2**20, 2),
                    "moved_ratio": round(moved_wire / gone_share, 3), "repair_s": round(repair_s, 2),
                    "repair_after_grace_s": round(repair_s - GRACE, 2), "ideal_s": round(ideal, 2),
                    "grace_s": GRACE})
        if not read:
            out["value"] = out["moved_ratio"]
        out["ok"] = True
    except (RuntimeError, OSError, KeyError) as e:
        out["error"] = str(e)
    finally:
        r.stop_all()
    print(json.dumps(out))
    return 0 if out["ok"] else 1


def main():
    a = sys.argv[1:]
    if a[:1] == ["fixture"]:
        fixture(a[1], int(a[2]), a[3])
    elif a[:1] == ["run"]:
        sys.exit(run(a[1], a[2], float(a[3]), a[4] == "read"))
    elif a[:1] == ["figure"]:
        res = json.loads(open(a[1]).read().strip().splitlines()[-1])
        v = res.get(a[2])
        print(json.dumps({"ok": bool(res.get("ok")) and v is not None, "value": v, **{k: res[k] for k in res if k not in ("ok", "value")}}))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
