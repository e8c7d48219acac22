//! Mounting with the annexfs binary in tests, and reading extended attributes.

use super::Sandbox;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// A mount made by `annexfs mount`; unmounted (lazily) when dropped, even on panic.
pub struct Mount {
    pub mp: PathBuf,
    pub log: PathBuf,
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ =
            std::process::Command::new(env!("CARGO_BIN_EXE_annexfs")).args(["umount", "--lazy"]).arg(&self.mp).output();
    }
}

impl Mount {
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
    pub fn p(&self, rel: &str) -> PathBuf {
        self.mp.join(rel)
    }
}

pub fn mount(sb: &Sandbox, repo: &Path, name: &str, extra: &[&str]) -> Mount {
    let mp = sb.path(name);
    std::fs::create_dir_all(&mp).unwrap();
    let log = sb.path(&format!("{name}.log"));
    let mut cmd = sb.cmd(env!("CARGO_BIN_EXE_annexfs"), sb.dir.path());
    cmd.arg("mount").arg("--log-file").arg(&log).args(extra).arg(repo).arg(&mp);
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "annexfs mount failed: {}\nlog: {}",
        String::from_utf8_lossy(&out.stderr),
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    Mount { mp, log }
}

pub fn is_mounted(mp: &Path) -> bool {
    let canon = mp.canonicalize().unwrap_or_else(|_| mp.to_path_buf());
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .any(|l| l.split(' ').nth(4).map(Path::new) == Some(canon.as_path()))
}

pub fn xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    let p = CString::new(path.as_os_str().as_bytes()).unwrap();
    let n = CString::new(name).unwrap();
    let mut buf = vec![0u8; 4096];
    // SAFETY: valid C strings and a buffer of the given length.
    let r = unsafe { libc::getxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if r < 0 {
        return None;
    }
    buf.truncate(r as usize);
    Some(buf)
}
