//! Writing files without losing a user's.
//!
//! - [`temp_path`]: every file or folder is written under a hidden name unique to this
//!   process (`.NAME.ftedit-PID.tmp`, beside it) and renamed into place when whole, so a
//!   user's `NAME.tmp` is never touched and two processes never share a temporary;
//!   [`remove_stale_temps`] clears those a killed process left.
//! - [`write_atomic`]: a small file, whole or not at all.
//! - [`HoldSignals`]: while a writer runs, SIGINT and SIGTERM are held instead of killing
//!   the process mid-write; the writer polls [`interrupted`], removes its temporaries and
//!   returns [`Error::Interrupted`], which the command line turns into exit 130 or 143.
//! - [`Lock`]: an advisory lock on a run folder, so that two runs never write one folder.

use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicI32, Ordering};

use crate::error::{Error, Result};

const TEMP_TAG: &str = ".ftedit-";

/// The hidden temporary name `path` is written under: `.NAME.ftedit-PID.tmp` in the
/// same folder (a rename within one file system is atomic).
pub fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map_or_else(|| "out".into(), |n| n.to_string_lossy().into_owned());
    let parent = path.parent().unwrap_or(Path::new(""));
    parent.join(format!(".{name}{TEMP_TAG}{}.tmp", std::process::id()))
}

/// Whether process `pid` is alive (on this machine).
fn alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the process exists and may be signalled.
    pid > 0
        && (unsafe { libc::kill(pid, 0) } == 0
            || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM))
}

/// Removes the temporaries of `path` ([`temp_path`]) that processes no longer running
/// left behind (a run killed with SIGKILL, a machine that lost power); returns them.
pub fn remove_stale_temps(path: &Path) -> Vec<PathBuf> {
    let Some(name) = path.file_name().map(|n| n.to_string_lossy().into_owned()) else {
        return Vec::new();
    };
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    let head = format!(".{name}{TEMP_TAG}");
    let Ok(entries) = std::fs::read_dir(&parent) else {
        return Vec::new();
    };
    let mut removed = Vec::new();
    for entry in entries.flatten() {
        let file = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = file
            .strip_prefix(&head)
            .and_then(|r| r.strip_suffix(".tmp"))
            .and_then(|p| p.parse::<i32>().ok())
        else {
            continue;
        };
        if pid == std::process::id() as i32 || alive(pid) {
            continue;
        }
        let p = entry.path();
        let gone = if p.is_dir() {
            std::fs::remove_dir_all(&p)
        } else {
            std::fs::remove_file(&p)
        };
        if gone.is_ok() {
            removed.push(p);
        }
    }
    removed
}

/// Writes `bytes` to `path` whole or not at all (a unique temporary, then a rename).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = temp_path(path);
    let result = std::fs::write(&tmp, bytes).and_then(|_| std::fs::rename(&tmp, path));
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io(path, e));
    }
    Ok(())
}

/// Puts the folder `new` (written whole beside it) at `dir`, replacing the one there: the
/// old folder moves aside under a temporary name first, so one of them is whole at every
/// moment.
pub fn swap_dir(new: &Path, dir: &Path) -> Result<()> {
    let old = temp_path(&dir.with_extension("old"));
    if dir.exists() {
        std::fs::rename(dir, &old).map_err(|e| Error::io(dir, e))?;
    }
    std::fs::rename(new, dir).map_err(|e| Error::io(dir, e))?;
    let _ = std::fs::remove_dir_all(&old);
    Ok(())
}

/// The signal held while a [`HoldSignals`] lives (0: none).
static PENDING: AtomicI32 = AtomicI32::new(0);

/// How many [`HoldSignals`] are alive, and the handlers they replaced.
static HELD: Mutex<(usize, Option<[libc::sigaction; 2]>)> = Mutex::new((0, None));

const HELD_SIGNALS: [libc::c_int; 2] = [libc::SIGINT, libc::SIGTERM];

extern "C" fn hold(signal: libc::c_int) {
    PENDING.store(signal, Ordering::SeqCst);
}

/// While alive, SIGINT and SIGTERM set a flag ([`interrupted`]) instead of ending the
/// process, so a writer can stop between two writes and remove its temporaries. When
/// the last one is dropped the previous handlers come back, and a signal that arrived
/// but was not taken by [`interrupted`] is raised again for them.
pub struct HoldSignals(());

impl HoldSignals {
    pub fn new() -> Self {
        let mut held = HELD.lock().unwrap_or_else(|e| e.into_inner());
        if held.0 == 0 {
            // SAFETY: installs a handler that only stores to an atomic (async-signal-safe);
            // the previous actions are kept to be restored.
            let old = HELD_SIGNALS.map(|sig| unsafe {
                let mut new: libc::sigaction = std::mem::zeroed();
                new.sa_sigaction = hold as *const () as usize;
                libc::sigemptyset(&mut new.sa_mask);
                let mut old: libc::sigaction = std::mem::zeroed();
                libc::sigaction(sig, &new, &mut old);
                old
            });
            held.1 = Some(old);
        }
        held.0 += 1;
        HoldSignals(())
    }
}

impl Default for HoldSignals {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for HoldSignals {
    fn drop(&mut self) {
        let mut held = HELD.lock().unwrap_or_else(|e| e.into_inner());
        held.0 -= 1;
        if held.0 > 0 {
            return;
        }
        if let Some(old) = held.1.take() {
            for (sig, action) in HELD_SIGNALS.iter().zip(old) {
                // SAFETY: restores the action saved by `new`.
                unsafe { libc::sigaction(*sig, &action, std::ptr::null_mut()) };
            }
        }
        drop(held);
        let signal = PENDING.swap(0, Ordering::SeqCst);
        if signal != 0 {
            // SAFETY: delivers the held signal to the handler that is back in place.
            unsafe { libc::raise(signal) };
        }
    }
}

/// [`Error::Interrupted`] if SIGINT or SIGTERM arrived while signals were held (and
/// takes it: the caller now owns stopping the process).
pub fn interrupted() -> Result<()> {
    match PENDING.swap(0, Ordering::SeqCst) {
        0 => Ok(()),
        signal => Err(Error::Interrupted { signal }),
    }
}

/// The name of a run folder's lock file.
pub const LOCK_FILE: &str = ".ftedit.lock";

/// An advisory lock (`flock`) on a folder, held while the value lives. The lock file
/// holds the owner's pid for the message a second process gets; the kernel releases the
/// lock when its process dies, so a killed run's lock is simply taken over.
#[derive(Debug)]
pub struct Lock {
    _file: std::fs::File,
}

impl Lock {
    /// Locks `dir` (which must exist), or says which process holds it.
    pub fn acquire(dir: &Path) -> Result<Lock> {
        let path = dir.join(LOCK_FILE);
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        let mut previous = String::new();
        let _ = file.read_to_string(&mut previous);
        let owner = previous.trim().parse::<i32>().ok();
        // SAFETY: flock on a descriptor this function owns.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
                return Err(Error::Locked {
                    path: dir.to_owned(),
                    pid: owner,
                });
            }
            return Err(Error::io(&path, e));
        }
        let me = std::process::id();
        if let Some(pid) = owner.filter(|&p| p != me as i32 && !alive(p)) {
            eprintln!(
                "note: {} was last written by ftedit process {pid}, which is gone; taking it over",
                dir.display()
            );
        }
        let write = |f: &mut std::fs::File| -> std::io::Result<()> {
            f.set_len(0)?;
            f.rewind()?;
            writeln!(f, "{me}")
        };
        write(&mut file).map_err(|e| Error::io(&path, e))?;
        Ok(Lock { _file: file })
    }
}

/// The names of the entries of the folder `dir`, sorted.
pub fn names_in(dir: &Path) -> Result<Vec<String>> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    Ok(names)
}

/// The first few of `names`, for a message: `a, b, c, d, e, …`.
pub fn some_names<S: AsRef<str>>(names: &[S]) -> String {
    const SHOWN: usize = 5;
    let mut line = names
        .iter()
        .take(SHOWN)
        .map(AsRef::as_ref)
        .collect::<Vec<_>>()
        .join(", ");
    if names.len() > SHOWN {
        line.push_str(", …");
    }
    line
}

/// Free bytes for an unprivileged writer on the file system holding `path` (`None`
/// when it cannot be told).
pub fn free_bytes(path: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs writes into the zeroed struct it is given.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    (unsafe { libc::statvfs(c.as_ptr(), &mut st) } == 0)
        .then(|| st.f_bavail as u64 * st.f_frsize as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("ftedit-output-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn temporaries_are_hidden_unique_and_stale_ones_are_removed() {
        let d = dir("temps");
        let out = d.join("x.gguf");
        let tmp = temp_path(&out);
        let name = tmp.file_name().unwrap().to_string_lossy().into_owned();
        assert_eq!(name, format!(".x.gguf.ftedit-{}.tmp", std::process::id()));
        // A user's x.tmp is not ours; a dead process's temporary is; ours is kept.
        std::fs::write(d.join("x.tmp"), "mine").unwrap();
        let dead = d.join(".x.gguf.ftedit-2147483646.tmp");
        std::fs::create_dir_all(dead.join("inner")).unwrap();
        std::fs::write(&tmp, "in progress").unwrap();
        assert_eq!(remove_stale_temps(&out), vec![dead.clone()]);
        assert!(!dead.exists() && tmp.exists() && d.join("x.tmp").exists());
        write_atomic(&out, b"whole").unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), b"whole");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_locked_folder_is_refused_by_pid_and_free_again_after() {
        let d = dir("lock");
        let held = Lock::acquire(&d).unwrap();
        let err = Lock::acquire(&d).unwrap_err().to_string();
        assert!(
            err.contains(&format!("pid {}", std::process::id())),
            "{err}"
        );
        drop(held);
        Lock::acquire(&d).unwrap();
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_held_signal_is_reported_once_and_not_raised_again() {
        let guard = HoldSignals::new();
        // SAFETY: raising SIGTERM while it is held only sets the flag.
        unsafe { libc::raise(libc::SIGTERM) };
        let e = interrupted().unwrap_err();
        assert!(matches!(
            e,
            Error::Interrupted {
                signal: libc::SIGTERM
            }
        ));
        assert!(interrupted().is_ok(), "taken once");
        drop(guard);
    }
}
