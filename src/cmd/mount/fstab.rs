//! The mount table, fstab entries and the mount helper's command line (`mount.annexfs SPEC
//! DIR [-sfnv] [-o OPTS] [-t TYPE]`, as mount(8) calls it).

use crate::cli::MountArgs;
use anyhow::{Context, anyhow, bail};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

#[allow(unused_imports)]
use super::*;

/// Mount points of this process's mount namespace with their filesystem types.
pub fn mount_table() -> Vec<(PathBuf, String)> {
    let Ok(text) = std::fs::read("/proc/self/mountinfo") else { return Vec::new() };
    text.split(|&c| c == b'\n')
        .filter_map(|line| {
            let fields: Vec<&[u8]> = line.split(|&c| c == b' ').collect();
            let sep = fields.iter().position(|f| *f == b"-")?;
            let mp = unescape_mountinfo(fields.get(4)?);
            let fstype = String::from_utf8_lossy(fields.get(sep + 1)?).into_owned();
            Some((PathBuf::from(std::ffi::OsStr::from_bytes(&mp)), fstype))
        })
        .collect()
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mountinfo(f: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(f.len());
    let mut i = 0;
    while i < f.len() {
        if f[i] == b'\\' && i + 3 < f.len() && f[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            out.push((f[i + 1] - b'0') * 64 + (f[i + 2] - b'0') * 8 + (f[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(f[i]);
            i += 1;
        }
    }
    out
}

/// An fstab entry for annexfs: the repository, the mountpoint and the options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FstabEntry {
    pub repo: PathBuf,
    pub mountpoint: PathBuf,
    pub options: String,
}

/// fstab escapes space, tab, newline and backslash as `\ooo`, as mountinfo does.
fn unescape_fstab(f: &str) -> PathBuf {
    PathBuf::from(std::ffi::OsStr::from_bytes(&unescape_mountinfo(f.as_bytes())))
}

/// The annexfs entries of an fstab: type `annexfs`, `fuse.annexfs`, or `fuse` with an
/// `annexfs#REPO` source.
pub fn parse_fstab(text: &str) -> Vec<FstabEntry> {
    text.lines()
        .filter_map(|line| {
            let line = line.trim();
            if line.starts_with('#') {
                return None;
            }
            let f: Vec<&str> = line.split_whitespace().collect();
            let (spec, mp, fstype) = (f.first()?, f.get(1)?, f.get(2)?);
            let spec = match *fstype {
                "annexfs" | "fuse.annexfs" => spec.strip_prefix("annexfs#").unwrap_or(spec),
                "fuse" | "fuse3" => spec.strip_prefix("annexfs#")?,
                _ => return None,
            };
            Some(FstabEntry {
                repo: unescape_fstab(spec),
                mountpoint: unescape_fstab(mp),
                options: f.get(3).map_or(String::new(), |o| (*o).to_string()),
            })
        })
        .collect()
}

/// Finds the fstab entry for mountpoint `mp`, as mount(8) does for `mount DIR`.
pub fn fstab_entry(fstab: &Path, mp: &Path) -> anyhow::Result<FstabEntry> {
    let text = std::fs::read_to_string(fstab).with_context(|| format!("read {}", fstab.display()))?;
    let want = absolute(mp)?;
    let canon = want.canonicalize().unwrap_or_else(|_| want.clone());
    parse_fstab(&text)
        .into_iter()
        .find(|e| e.mountpoint == want || e.mountpoint.canonicalize().is_ok_and(|c| c == canon))
        .ok_or_else(|| anyhow!("{} has no annexfs entry for {}", fstab.display(), want.display()))
}

/// Mount arguments from a mount helper's command line (`mount.annexfs SPEC DIR [-sfnv]
/// [-o OPTS] [-t TYPE]`, as mount(8) calls it). `None` for `-f` (a fake mount: nothing to do).
pub fn helper_args(args: &[std::ffi::OsString]) -> anyhow::Result<Option<MountArgs>> {
    let mut pos: Vec<PathBuf> = Vec::new();
    let mut options = Vec::new();
    let mut fake = false;
    let mut sloppy = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let s = a.to_string_lossy();
        match s.as_ref() {
            "-o" => options.push(it.next().ok_or_else(|| anyhow!("-o needs options"))?.to_string_lossy().into_owned()),
            "-t" => {
                it.next();
            }
            f if f.starts_with('-') && f.len() > 1 => {
                for c in f[1..].chars() {
                    match c {
                        'f' => fake = true,
                        's' => sloppy = true,
                        'n' | 'v' => {}
                        _ => bail!("unknown mount helper flag -{c}"),
                    }
                }
            }
            _ => pos.push(PathBuf::from(a)),
        }
    }
    let [spec, mp] =
        <[PathBuf; 2]>::try_from(pos).map_err(|_| anyhow!("usage: mount.annexfs REPO DIR [-o OPTIONS]"))?;
    let spec = match spec.to_str().and_then(|s| s.strip_prefix("annexfs#")) {
        Some(s) => PathBuf::from(s),
        None => spec,
    };
    if fake {
        return Ok(None);
    }
    // mount(8) says `rw` unless the line says `ro`: the mount is read-only whatever it says.
    options = options.iter().map(|o| o.split(',').filter(|x| *x != "rw").collect::<Vec<_>>().join(",")).collect();
    if sloppy {
        // Unknown options are dropped instead of refused.
        options = options
            .iter()
            .map(|o| {
                o.split(',')
                    .filter(|x| {
                        let mut p = MountPlan::empty();
                        parse_options(&mut p, &[x.to_string()]).is_ok()
                    })
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .collect();
    }
    Ok(Some(MountArgs {
        repo: spec,
        mountpoint: Some(mp),
        rev: None,
        foreground: false,
        options,
        no_passthrough: false,
        no_readdirplus: false,
        annex_get: false,
        cache_dir: None,
        cache_size: None,
        log_file: None,
        fstab: None,
        serve: None,
        swarm: crate::cli::SwarmArgs::default(),
        verify: crate::cli::VerifyArgs { verify: crate::fetch::VerifyMode::Stream, no_publish: false },
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fstab_lines() {
        let text = "# comment\n/dev/sda1 / ext4 defaults 0 1\n/srv/annex /mnt/a\\040b fuse.annexfs cache_size=5G,noauto 0 0\n\
                    annexfs#/r2 /m2 fuse ro 0 0\nsshfs#h:/ /m3 fuse defaults 0 0\n/r4 /m4 annexfs\n";
        let e = parse_fstab(text);
        assert_eq!(e.len(), 3, "{e:?}");
        assert_eq!(e[0].repo, Path::new("/srv/annex"));
        assert_eq!(e[0].mountpoint, Path::new("/mnt/a b"));
        assert_eq!(e[0].options, "cache_size=5G,noauto");
        assert_eq!((e[1].repo.as_path(), e[1].options.as_str()), (Path::new("/r2"), "ro"));
        assert_eq!((e[2].repo.as_path(), e[2].options.as_str()), (Path::new("/r4"), ""));
    }

    #[test]
    fn helper_command_lines() {
        let a = |v: &[&str]| v.iter().map(std::ffi::OsString::from).collect::<Vec<_>>();
        let m = helper_args(&a(&["annexfs#/r", "/m", "-o", "rw,noauto,cache_size=1G"])).unwrap().unwrap();
        assert_eq!((m.repo.as_path(), m.mountpoint.as_deref()), (Path::new("/r"), Some(Path::new("/m"))));
        assert_eq!(m.options, vec!["noauto,cache_size=1G".to_string()]);
        assert!(helper_args(&a(&["/r", "/m", "-f"])).unwrap().is_none(), "a fake mount does nothing");
        let m = helper_args(&a(&["/r", "/m", "-sv", "-o", "bogus,allow_other"])).unwrap().unwrap();
        assert_eq!(m.options, vec!["allow_other".to_string()], "sloppy drops unknown options");
        assert!(helper_args(&a(&["/r"])).is_err());
    }

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape_mountinfo(br"/a\040b\134c"), b"/a b\\c");
        assert_eq!(unescape_mountinfo(br"/x\04"), b"/x\\04");
    }
}
