//! The locks the cache shares between processes: OFD byte-range locks on a key's lock file
//! (one byte per piece, claimed while it is fetched; one byte past all pieces while the record
//! is rewritten) and a shared `flock` by every process that has the key open (eviction takes
//! it exclusively, without waiting, so it never removes a key in use).

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::Mutex;

pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// OFD byte-range lock on `file` at `byte`: `Ok(true)` if taken (or released), `Ok(false)` if
/// another open file description holds it.
pub(super) fn ofd_lock(file: &File, byte: i64, kind: libc::c_int, wait: bool) -> io::Result<bool> {
    // SAFETY: flock is plain data; zeroed is a valid value, and every used field is set.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    // F_RDLCK/F_WRLCK/F_UNLCK and SEEK_SET are small constants that fit a short.
    #[allow(clippy::cast_possible_truncation)]
    {
        fl.l_type = kind as libc::c_short;
        fl.l_whence = libc::SEEK_SET as libc::c_short;
    }
    fl.l_start = byte;
    fl.l_len = 1;
    let cmd = if wait { libc::F_OFD_SETLKW } else { libc::F_OFD_SETLK };
    // SAFETY: a valid descriptor and a pointer to an initialised flock.
    if unsafe { libc::fcntl(file.as_raw_fd(), cmd, &fl) } == 0 {
        return Ok(true);
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EAGAIN) | Some(libc::EACCES) => Ok(false),
        _ => Err(e),
    }
}

/// `flock(2)` on `file`: `Ok(false)` when `LOCK_NB` was asked and another holds it.
pub(super) fn flock(file: &File, op: libc::c_int) -> io::Result<bool> {
    loop {
        // SAFETY: a valid descriptor.
        if unsafe { libc::flock(file.as_raw_fd(), op) } == 0 {
            return Ok(true);
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => {}
            Some(libc::EWOULDBLOCK) if op & libc::LOCK_NB != 0 => return Ok(false),
            _ => return Err(e),
        }
    }
}
