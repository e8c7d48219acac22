#!/usr/bin/env python3
"""Renders the JSON lines written by the reliability tests (ANNEXFS_REPORT) as Markdown.

Every row was asserted by its test (bytes equal to the content, no read error, the key
verified); a row whose test failed is shown as FAILED, with why, and no figure."""
import json
import os
import subprocess
import sys

lines = []
for n, l in enumerate(open(sys.argv[1]), 1):
    if not l.strip():
        continue
    try:
        lines.append(json.loads(l))
    except json.JSONDecodeError as e:
        # A record the tests wrote badly is a failure of the run, shown, never skipped quietly.
        lines.append({"kind": "failed", "test": f"record {n} unreadable ({e}): {l.strip()[:300]}"})
command = sys.argv[2]
cases = [l for l in lines if l["kind"] == "hostile-case"]
bw = [l for l in lines if l["kind"] == "hostile-bandwidth"]
crash = [l for l in lines if l["kind"] == "crash"]

def rev():
    # The commit the measured build was made from (scripts/reliability takes it before building).
    if os.environ.get("ANNEXFS_REPORT_COMMIT"):
        return os.environ["ANNEXFS_REPORT_COMMIT"]
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return "?"

failed_bw = [c for c in bw if c.get("failure")]
guarded = [c for c in cases + bw if c["guard"].lower() in ("manifest", "strict")]
wrong_guarded = sum(c["wrong_bytes_served"] for c in guarded)
wrong_stream = sum(c["wrong_bytes_served"] for c in cases + bw if c["guard"].lower() == "stream")
bans = sum(1 for c in cases if c["liar_banned"]) + sum(1 for c in bw if c["hostile_banned"])
out = []
p = out.append
p("# Reliability report\n")
p(f"Made by `{command}` at commit `{rev()}`; regenerate with the same command.\n")
p("## Summary\n")
failed_tests = [l["test"] for l in lines if l["kind"] == "failed"]
if failed_tests or failed_bw:
    p(f"- **FAILED: tests {', '.join(failed_tests) or 'none'}; bandwidth rows: {len(failed_bw)}**. A failed "
      "row shows FAILED and why, never a figure; a failed crash test reports no figure at all.")
p(f"- Hostile cases tried: {len(cases)} (each against an honest mirror) + {len(bw)} bandwidth runs "
  f"(each hostile mirror beside three honest ones).")
p(f"- **Wrong bytes served with a manifest or in strict mode: {wrong_guarded}** (each test asserts 0).")
p(f"- Wrong bytes served in plain stream mode without a manifest: {wrong_stream} (stream mode "
  "serves bytes as they arrive when nothing can check them; the whole-key check then finds the "
  "liar, bans it and repairs the cache).")
p(f"- Hostile mirrors banned: {bans} (only mirrors that sent wrong bytes are struck; the others are "
  "refused or given up by protocol checks and timeouts).")
for c in crash:
    p(f"- Crash cycles: the daemon was killed (SIGKILL) {c['cut_mid_fetch']} times with a fetch in flight "
      f"(its status showing between 0 and all of a {c['size'] / 1e6:.0f} MB key fetched: "
      f"{c['bytes_at_kill_min'] / 1e6:.1f} to {c['bytes_at_kill_max'] / 1e6:.1f} MB at the kill, "
      f"{c['missed']} kills that came after the fetch had finished were retried and not counted); "
      f"after each kill {c['pieces_checked']} pieces the cache claimed were checked on disk "
      f"({c['bytes_claimed_at_kill'] / 1e6:.0f} MB in all), and after each restart the key was read whole, "
      f"{c['bytes_verified_after_restart'] / 1e6:.0f} MB in all, and verified {c['keys_verified']} times; "
      f"wrong bytes read: {c['wrong_bytes']} (asserted 0); {c['secs']:.0f} s.")
p("")
p("## Every misbehaviour, against one honest mirror (3 MB key)\n")
p("| misbehaviour | mode | wrong bytes served | strikes | banned | given up because |")
p("|---|---|---|---|---|---|")
for c in sorted(cases, key=lambda c: (c["mode"], c["guard"])):
    p(f"| {c['mode']} | {c['guard'].lower()} | {c['wrong_bytes_served']} | {c['liar_strikes']} | "
      f"{'yes' if c['liar_banned'] else 'no'} | {(c['liar_given_up'] or '').replace('|', '/')} |")
p("")
if bw:
    limit = bw[0]["honest_limit_mib_s"]
    p(f"## Bandwidth beside a hostile mirror (96 MiB key, three honest mirrors at {limit / 3:.0f} MiB/s each)\n")
    p("Sequential reads of 1 MiB through the fetcher; the ratio is the throughput over the sum of the "
      "honest mirrors' limits. The hostile mirror is throttled the same way (every byte it sends, right or "
      "wrong, counts against its limit), so a ratio above 1 means it contributed correct bytes; the first "
      "row has an honest mirror in the hostile slot. Every row is asserted: all bytes equal to the content, "
      "no read error, the key verified.\n")
    p("| misbehaviour | mode | MiB/s | ratio | wrong bytes | hostile mirror |")
    p("|---|---|---|---|---|---|")
    for c in bw:
        if c.get("failure"):
            p(f"| {c['mode']} | {c['guard']} | FAILED | FAILED | FAILED | {c['failure'].replace('|', '/')} |")
            continue
        fate = "banned" if c["hostile_banned"] else (c["hostile_given_up"] or "kept, never delivered wrong bytes")
        p(f"| {c['mode']} | {c['guard']} | {c['mib_s']:.1f} | {c['ratio']:.2f} | {c['wrong_bytes_served']} | "
          f"{fate.replace('|', '/')} |")
    p("")
    p("Strict mode without a manifest cannot tell a bad piece before the whole key is in: a liar costs "
      "a second fetch of every piece from another mirror (and a third opinion where they differ) before "
      "anything is served. With a manifest, which annexfs publishes after the first verified read, "
      "every piece is checked on arrival and the liar is banned after three bad pieces.\n")
print("\n".join(out))
