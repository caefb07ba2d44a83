//! The lock every writer of an output holds from start to end (`.NAME.lowbit-lock`).

use crate::escape;
use anyhow::{bail, Context, Result};
use std::fs::{self, File};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

/// An exclusive `flock` on a lock file holding the owner's pid; the file is removed on release.
pub(super) struct Lock {
    path: PathBuf,
    file: File,
}

impl Lock {
    pub(super) fn take(path: &Path, out: &Path) -> Result<Lock> {
        let shown = escape::path(path);
        for _ in 0..100 {
            let mut opts = fs::OpenOptions::new();
            opts.read(true).write(true).create(true).truncate(false);
            // Never through a symbolic link: the lock file is written to.
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::custom_flags(&mut opts, libc::O_NOFOLLOW);
            let mut file = opts.open(path).with_context(|| format!("{shown}: cannot open the lock file"))?;
            match file.try_lock() {
                Ok(()) => {}
                Err(fs::TryLockError::WouldBlock) => {
                    // The holder writes its pid right after locking; give it a moment.
                    let mut pid = String::new();
                    for _ in 0..20 {
                        pid.clear();
                        let _ = file.rewind().and_then(|_| file.read_to_string(&mut pid));
                        if pid.trim().parse::<u32>().is_ok() {
                            break;
                        }
                        std::thread::sleep(std::time::Duration::from_millis(10));
                    }
                    let who = match pid.trim().parse::<u32>() {
                        Ok(p) => format!("pid {p}"),
                        Err(_) => "pid unknown".into(),
                    };
                    bail!(
                        "{}: another lowbit run ({who}) is writing this output (lock {shown}); wait for it to finish or choose another --out",
                        escape::path(out)
                    );
                }
                Err(fs::TryLockError::Error(e)) => return Err(e).with_context(|| format!("{shown}: cannot lock")),
            }
            // A run that released the lock may have removed the file meanwhile: the lock must be
            // on the file now at `path`, else retry.
            #[cfg(unix)]
            let same = {
                use std::os::unix::fs::MetadataExt;
                match (file.metadata(), fs::symlink_metadata(path)) {
                    (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
                    _ => false,
                }
            };
            #[cfg(not(unix))]
            let same = fs::symlink_metadata(path).is_ok();
            if !same {
                continue;
            }
            let mut old = String::new();
            let _ = file.read_to_string(&mut old);
            if !old.trim().is_empty() && old.trim().parse::<u32>().is_err() {
                bail!("{shown}: exists and is not a lowbit lock file; remove it if it is not yours");
            }
            file.set_len(0)
                .and_then(|_| file.rewind())
                .and_then(|_| writeln!(file, "{}", std::process::id()))
                .and_then(|_| file.flush())
                .with_context(|| format!("{shown}: cannot write the lock file"))?;
            return Ok(Lock { path: path.to_path_buf(), file });
        }
        bail!("{shown}: cannot take the lock (the lock file keeps changing)")
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        // Removed while still locked: a waiting run notices the file changed and retries.
        let _ = fs::remove_file(&self.path);
        let _ = self.file.unlock();
    }
}
