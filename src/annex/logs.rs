//! Parsers for the log files of the git-annex branch (reference §4.2–4.5).
//!
//! All parsers are pure functions over bytes: they never fail as a whole. As in git-annex, a log
//! is split on any run of `\r`/`\n`, every line is parsed on its own, and a line that does not
//! parse is skipped. Timestamps are exact picoseconds ([`Timestamp`]), never floats, because
//! `git annex dead --key` writes "previous + 1 ps".
//!
//! Tie rules differ by log kind and are git-annex's:
//! - presence logs (location, web): newest wins, and on equal timestamps the EARLIER line wins;
//! - UUID-based logs (uuid, trust, remote, group) and new-format maps (chunk log): newest wins,
//!   and on equal timestamps the LATER line wins;
//! - single-value logs (numcopies): newest wins, on a tie the larger value.

use std::collections::{BTreeMap, BTreeSet, HashMap};

/// A vector clock: exact picoseconds since the epoch. A missing timestamp is the oldest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(pub i128);

impl Timestamp {
    /// Older than any parsed timestamp (for UUID-log lines without `timestamp=`).
    pub const MISSING: Timestamp = Timestamp(i128::MIN);

    /// Parses `INT[.DIGITS][s]`; digits past the 12th fractional one are cut off.
    pub fn parse(b: &[u8]) -> Option<Timestamp> {
        let b = b.strip_suffix(b"s").unwrap_or(b);
        let (int, frac) = match b.iter().position(|&c| c == b'.') {
            Some(i) if i + 1 < b.len() => (&b[..i], &b[i + 1..]),
            Some(_) => return None, // "123." is rejected by git-annex too
            None => (b, &b""[..]),
        };
        let (neg, digits) = match int.first() {
            Some(b'-') => (true, &int[1..]),
            Some(b'+') => (false, &int[1..]),
            _ => (false, int),
        };
        if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) || !frac.iter().all(u8::is_ascii_digit) {
            return None;
        }
        // More than 25 integer digits would overflow i128 picoseconds; no real clock has them.
        if digits.len() > 25 {
            return None;
        }
        let secs: i128 = std::str::from_utf8(digits).ok()?.parse().ok()?;
        let mut ps: i128 = 0;
        for i in 0..12 {
            ps = ps * 10 + frac.get(i).map_or(0, |c| i128::from(c - b'0'));
        }
        let v = secs.checked_mul(1_000_000_000_000)?.checked_add(ps)?;
        Some(Timestamp(if neg { -v } else { v }))
    }
}

/// Splits a log into its non-empty lines, on any run of `\r` / `\n`.
pub fn lines(content: &[u8]) -> impl Iterator<Item = &[u8]> {
    content.split(|&c| c == b'\n' || c == b'\r').filter(|l| !l.is_empty())
}

/// Status of an entry of a presence log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Presence {
    Present,
    Missing,
    /// `X`: marked dead with `git annex dead --key`.
    Dead,
}

/// One parsed presence-log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresenceLine {
    pub ts: Timestamp,
    pub status: Presence,
    pub info: Vec<u8>,
}

fn parse_presence_line(line: &[u8]) -> Option<PresenceLine> {
    let mut it = line.splitn(3, |&c| c == b' ');
    let (ts, st, info) = (it.next()?, it.next()?, it.next()?);
    let ts = Timestamp::parse(ts)?;
    let status = match st {
        b"1" => Presence::Present,
        b"0" => Presence::Missing,
        b"X" => Presence::Dead,
        _ => return None,
    };
    Some(PresenceLine { ts, status, info: info.to_vec() })
}

/// Parses and compacts a presence log (location log, `.log.web`): the current entry per info.
///
/// The input may be several logs concatenated (branch, journal, other branches): that is what
/// git-annex's union merge amounts to before compaction.
pub fn compact_presence<'a>(chunks: impl IntoIterator<Item = &'a [u8]>) -> BTreeMap<Vec<u8>, PresenceLine> {
    let parsed: Vec<PresenceLine> = chunks.into_iter().flat_map(lines).filter_map(parse_presence_line).collect();
    let mut m: BTreeMap<Vec<u8>, PresenceLine> = BTreeMap::new();
    // From the last line to the first, a line replaces the entry unless that one is strictly
    // newer: so with equal timestamps the earlier line wins.
    for line in parsed.into_iter().rev() {
        match m.get(&line.info) {
            Some(old) if old.ts > line.ts => {}
            _ => {
                m.insert(line.info.clone(), line);
            }
        }
    }
    m
}

/// The infos (UUIDs or URLs) currently present in a presence log, in byte order.
pub fn present_infos<'a>(chunks: impl IntoIterator<Item = &'a [u8]>) -> Vec<Vec<u8>> {
    compact_presence(chunks).into_iter().filter(|(_, l)| l.status == Presence::Present).map(|(i, _)| i).collect()
}

/// Parses and compacts an old-format UUID-based log (`UUID VALUE… [timestamp=TS]`):
/// per UUID the newest line wins, and on a tie the later line.
pub fn compact_uuid_log<'a>(chunks: impl IntoIterator<Item = &'a [u8]>) -> HashMap<Vec<u8>, (Timestamp, Vec<u8>)> {
    let mut m: HashMap<Vec<u8>, (Timestamp, Vec<u8>)> = HashMap::new();
    for line in chunks.into_iter().flat_map(lines) {
        let (uuid, rest) = match line.iter().position(|&c| c == b' ') {
            Some(i) => (&line[..i], &line[i + 1..]),
            None => (line, &line[line.len()..]),
        };
        if uuid.is_empty() {
            continue;
        }
        let (value, ts) = split_timestamp(rest);
        match m.get(uuid) {
            Some((old, _)) if *old > ts => {}
            _ => {
                m.insert(uuid.to_vec(), (ts, value.to_vec()));
            }
        }
    }
    m
}

/// Splits `VALUE… timestamp=TS` into the value and the timestamp (or [`Timestamp::MISSING`]).
fn split_timestamp(rest: &[u8]) -> (&[u8], Timestamp) {
    const MARK: &[u8] = b"timestamp=";
    let last_word_start = rest.iter().rposition(|&c| c == b' ').map_or(0, |i| i + 1);
    let last = &rest[last_word_start..];
    if let Some(ts) = last.strip_prefix(MARK).and_then(Timestamp::parse) {
        let value = &rest[..last_word_start];
        let value = value.strip_suffix(b" ").unwrap_or(value);
        return (value, ts);
    }
    (rest, Timestamp::MISSING)
}

/// Parses and compacts a new-format map log (`TS FIELD VALUE`, e.g. the chunk log):
/// per field the newest wins, on a tie the later line.
pub fn compact_map_log<'a>(chunks: impl IntoIterator<Item = &'a [u8]>) -> BTreeMap<Vec<u8>, (Timestamp, Vec<u8>)> {
    let mut m: BTreeMap<Vec<u8>, (Timestamp, Vec<u8>)> = BTreeMap::new();
    for line in chunks.into_iter().flat_map(lines) {
        let mut it = line.splitn(3, |&c| c == b' ');
        let (Some(ts), Some(field), Some(value)) = (it.next(), it.next(), it.next()) else { continue };
        let Some(ts) = Timestamp::parse(ts) else { continue };
        match m.get(field) {
            Some((old, _)) if *old > ts => {}
            _ => {
                m.insert(field.to_vec(), (ts, value.to_vec()));
            }
        }
    }
    m
}

/// A single-value log such as `numcopies.log` (`TS VALUE`): the newest value, on a tie the
/// larger one.
pub fn single_value_u64<'a>(chunks: impl IntoIterator<Item = &'a [u8]>) -> Option<u64> {
    let mut best: Option<(Timestamp, u64)> = None;
    for line in chunks.into_iter().flat_map(lines) {
        let mut it = line.splitn(2, |&c| c == b' ');
        let (Some(ts), Some(v)) = (it.next(), it.next()) else { continue };
        let (Some(ts), Some(v)) =
            (Timestamp::parse(ts), std::str::from_utf8(v).ok().and_then(|v| v.trim().parse().ok()))
        else {
            continue;
        };
        if best.is_none_or(|(bts, bv)| ts > bts || (ts == bts && v > bv)) {
            best = Some((ts, v));
        }
    }
    best.map(|(_, v)| v)
}

/// Trust level of a repository (trust.log or `remote.<name>.annex-trustlevel`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Trust {
    Dead,
    Untrusted,
    SemiTrusted,
    Trusted,
}

impl Trust {
    /// A trust.log value: `1` trusted, `0` untrusted, `X` dead, empty trusted (very old logs),
    /// anything else semitrusted.
    pub fn from_log_value(v: &[u8]) -> Trust {
        match v.first() {
            None => Trust::Trusted,
            Some(b'1') => Trust::Trusted,
            Some(b'0') => Trust::Untrusted,
            Some(b'X') => Trust::Dead,
            Some(_) => Trust::SemiTrusted,
        }
    }

    /// A `remote.<name>.annex-trustlevel` value.
    pub fn from_config(v: &str) -> Option<Trust> {
        match v.trim().to_ascii_lowercase().as_str() {
            "trusted" => Some(Trust::Trusted),
            "untrusted" => Some(Trust::Untrusted),
            "semitrusted" => Some(Trust::SemiTrusted),
            "dead" => Some(Trust::Dead),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Trust::Dead => "dead",
            Trust::Untrusted => "untrusted",
            Trust::SemiTrusted => "semitrusted",
            Trust::Trusted => "trusted",
        }
    }
}

/// Decodes a remote.log value: `&NNN;` becomes the character with that code; any other `&` is
/// kept as it is.
pub fn decode_remote_config_value(v: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(v.len());
    let mut i = 0;
    while i < v.len() {
        if v[i] == b'&' {
            let digits = v[i + 1..].iter().take_while(|c| c.is_ascii_digit()).count();
            if digits > 0 && v.get(i + 1 + digits) == Some(&b';') {
                let code = std::str::from_utf8(&v[i + 1..i + 1 + digits]).ok().and_then(|d| d.parse::<u32>().ok());
                if let Some(ch) = code.and_then(char::from_u32) {
                    let mut buf = [0u8; 4];
                    out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
                    i += digits + 2;
                    continue;
                }
            }
        }
        out.push(v[i]);
        i += 1;
    }
    out
}

/// Parses a remote.log value (`k=v k=v …`) into a map with decoded values.
pub fn parse_remote_config(value: &[u8]) -> BTreeMap<String, String> {
    value
        .split(|c| c.is_ascii_whitespace())
        .filter(|w| !w.is_empty())
        .filter_map(|w| {
            let eq = w.iter().position(|&c| c == b'=')?;
            let k = String::from_utf8_lossy(&w[..eq]).into_owned();
            let v = String::from_utf8_lossy(&decode_remote_config_value(&w[eq + 1..])).into_owned();
            Some((k, v))
        })
        .collect()
}

/// Usable chunkings per UUID: (chunk size, chunk count).
pub type ChunkLog = BTreeMap<Vec<u8>, Vec<(u64, u64)>>;

/// Parses a chunk log (`.log.cnk`, fields `UUID:CHUNKSIZE`, values chunk counts) into the
/// usable chunkings per UUID: (chunk size, count), counts above zero only.
pub fn parse_chunk_log<'a>(chunks: impl IntoIterator<Item = &'a [u8]>) -> ChunkLog {
    let mut out: BTreeMap<Vec<u8>, Vec<(u64, u64)>> = BTreeMap::new();
    for (field, (_, value)) in compact_map_log(chunks) {
        let Some(colon) = field.iter().rposition(|&c| c == b':') else { continue };
        let size = std::str::from_utf8(&field[colon + 1..]).ok().and_then(|s| s.parse::<u64>().ok());
        let count = std::str::from_utf8(&value).ok().and_then(|s| s.trim().parse::<u64>().ok());
        if let (Some(size), Some(count)) = (size, count)
            && size > 0
            && count > 0
        {
            out.entry(field[..colon].to_vec()).or_default().push((size, count));
        }
    }
    out
}

/// Metadata of a key (`.log.met`): field → values, after applying every line in timestamp
/// order (`TS field +value -value field2 +value …`; a value starting with `!` is base64).
pub type MetaData = BTreeMap<Vec<u8>, BTreeSet<Vec<u8>>>;

/// Parses metadata logs (lines of every chunk, applied oldest first; lines with a bad
/// timestamp are skipped, as git-annex does).
pub fn parse_metadata_log<'a>(chunks: impl IntoIterator<Item = &'a [u8]>) -> MetaData {
    use base64::Engine;
    let mut entries: Vec<(Timestamp, &[u8])> = Vec::new();
    for chunk in chunks {
        for line in lines(chunk) {
            let mut it = line.splitn(2, |&c| c == b' ');
            let (Some(ts), Some(rest)) = (it.next(), it.next()) else { continue };
            let Some(ts) = ts.strip_suffix(b"s").and_then(Timestamp::parse) else { continue };
            entries.push((ts, rest));
        }
    }
    entries.sort_by_key(|(ts, _)| *ts);
    let mut out = MetaData::new();
    for (_, rest) in entries {
        let mut field: Option<Vec<u8>> = None;
        for tok in rest.split(|c| c.is_ascii_whitespace()).filter(|t| !t.is_empty()) {
            let (add, v) = match tok[0] {
                b'+' => (true, &tok[1..]),
                b'-' => (false, &tok[1..]),
                _ => {
                    field = Some(tok.to_ascii_lowercase());
                    continue;
                }
            };
            let Some(f) = &field else { continue };
            let value = match v.strip_prefix(b"!") {
                Some(b64) => match base64::engine::general_purpose::STANDARD.decode(b64) {
                    Ok(d) => d,
                    Err(_) => continue,
                },
                None => v.to_vec(),
            };
            let set = out.entry(f.clone()).or_default();
            if add {
                set.insert(value);
            } else {
                set.remove(&value);
            }
        }
    }
    out.retain(|_, v| !v.is_empty());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn timestamps() {
        assert_eq!(Timestamp::parse(b"1795304719.339650873s"), Some(Timestamp(1_795_304_719_339_650_873_000)));
        assert_eq!(Timestamp::parse(b"1795304814s"), Some(Timestamp(1_795_304_814_000_000_000_000)));
        assert_eq!(Timestamp::parse(b"1.000000000001"), Some(Timestamp(1_000_000_000_001)));
        assert_eq!(Timestamp::parse(b"1.0000000000019"), Some(Timestamp(1_000_000_000_001)));
        assert_eq!(Timestamp::parse(b"+125"), Some(Timestamp(125_000_000_000_000)));
        assert_eq!(Timestamp::parse(b"123."), None);
        assert_eq!(Timestamp::parse(b"abc"), None);
        assert_eq!(Timestamp::parse(b""), None);
        assert_eq!(Timestamp::parse(&[b'9'; 40]), None);
    }

    #[test]
    fn presence_tie_rules() {
        // The verified hand-written journal of reference §4.3.
        let log = b"1795300000s 1 u1\n1795300000s 0 u1\n1795300000s 0 u2\n1795300000s 1 u2\n\
1795300001.5 1 u3\n1795300001 0 u3\ngarbage line\n1795300002s 1 u4\r\n";
        let present = present_infos([log.as_slice()]);
        assert_eq!(present, vec![b"u1".to_vec(), b"u3".to_vec(), b"u4".to_vec()]);
    }

    #[test]
    fn presence_info_keeps_spaces() {
        let log = b"1795304740.421328952s 1 http://example.com/dir/some file.txt?x=1&y=2\n";
        assert_eq!(present_infos([log.as_slice()]), vec![b"http://example.com/dir/some file.txt?x=1&y=2".to_vec()]);
    }

    #[test]
    fn picosecond_precision_matters() {
        let log = b"1795304719.000000000001s X u1\n1795304719s 1 u1\n";
        let m = compact_presence([log.as_slice()]);
        assert_eq!(m[b"u1".as_slice()].status, Presence::Dead);
    }

    #[test]
    fn uuid_log_later_line_wins_on_tie() {
        let log = b"u1 first timestamp=5s\nu1 second timestamp=5s\nu2 old desc timestamp=7s\nu2 older timestamp=6s\nu3 no ts\n";
        let m = compact_uuid_log([log.as_slice()]);
        assert_eq!(m[b"u1".as_slice()].1, b"second");
        assert_eq!(m[b"u2".as_slice()].1, b"old desc");
        assert_eq!(m[b"u3".as_slice()], (Timestamp::MISSING, b"no ts".to_vec()));
    }

    #[test]
    fn trust_values() {
        let log = b"a ? timestamp=1s\nb X timestamp=1s\nc 1 timestamp=1s\nd 0 timestamp=1s\ne timestamp=1s\n";
        let m = compact_uuid_log([log.as_slice()]);
        assert_eq!(Trust::from_log_value(&m[b"a".as_slice()].1), Trust::SemiTrusted);
        assert_eq!(Trust::from_log_value(&m[b"b".as_slice()].1), Trust::Dead);
        assert_eq!(Trust::from_log_value(&m[b"c".as_slice()].1), Trust::Trusted);
        assert_eq!(Trust::from_log_value(&m[b"d".as_slice()].1), Trust::Untrusted);
        assert_eq!(Trust::from_log_value(&m[b"e".as_slice()].1), Trust::Trusted);
    }

    #[test]
    fn remote_config() {
        let c = parse_remote_config(b"directory=/a&32;b encryption=none name=x&y type=directory");
        assert_eq!(c["directory"], "/a b");
        assert_eq!(c["name"], "x&y");
        assert_eq!(decode_remote_config_value(b"&38;&99999999999;&;"), b"&&99999999999;&;");
    }

    #[test]
    fn chunk_log() {
        let log =
            b"1795304783.151010905s 4fd07e79:30720 4\n1795304784s 74fbcc86:40000 3\n1795304785s 4fd07e79:1000 0\n";
        let m = parse_chunk_log([log.as_slice()]);
        assert_eq!(m[b"4fd07e79".as_slice()], vec![(30720, 4)]);
        assert_eq!(m[b"74fbcc86".as_slice()], vec![(40000, 3)]);
    }

    #[test]
    fn numcopies() {
        assert_eq!(single_value_u64([b"1s 2\n1s 3\n0s 9\n".as_slice()]), Some(3));
        assert_eq!(single_value_u64([b"junk\n".as_slice()]), None);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1000))]
        #[test]
        fn parsers_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = compact_presence([bytes.as_slice()]);
            let _ = compact_uuid_log([bytes.as_slice()]);
            let _ = compact_map_log([bytes.as_slice()]);
            let _ = single_value_u64([bytes.as_slice()]);
            let _ = parse_remote_config(&bytes);
            let _ = Timestamp::parse(&bytes);
        }

        #[test]
        fn presence_newest_wins(a in 0i64..1000, b in 0i64..1000) {
            let log = format!("{a}s 1 u\n{b}s 0 u\n");
            let present = !present_infos([log.as_bytes()]).is_empty();
            prop_assert_eq!(present, a >= b);
        }
    }

    #[test]
    fn metadata_log() {
        let a: &[u8] =
            b"1795317497s annexfs-manifest +SHA256-s14--07 tag +a +b\n1795317499s tag -a +!aGVsbG8gd29ybGQ=\n";
        let b: &[u8] = b"1795317498s Tag +c\nbad line\nxs tag +zzz\n";
        let m = parse_metadata_log([a, b]);
        assert_eq!(m[&b"annexfs-manifest".to_vec()].iter().collect::<Vec<_>>(), vec![&b"SHA256-s14--07".to_vec()]);
        let tags: Vec<&[u8]> = m[&b"tag".to_vec()].iter().map(Vec::as_slice).collect();
        assert_eq!(tags, vec![&b"b"[..], b"c", b"hello world"]);
        // A newer removal wins over an older addition, whatever the chunk order.
        let m = parse_metadata_log([&b"2s f -x\n"[..], b"1s f +x\n"]);
        assert!(m.is_empty());
    }
}
