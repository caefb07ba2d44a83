//! The output directory of `quantize`, `sweep` and `import-gguf`, one implementation for all
//! three:
//!
//! * `--out` may not be, contain, or lie inside the model directory or any input file.
//! * An existing `--out` is replaced only with `--force`, and only if lowbit wrote it: every
//!   output holds a manifest ([`MANIFEST`]) listing the files lowbit wrote and their sizes, and a
//!   directory with anything else in it (a file not listed, a changed size, a symbolic link) or
//!   without a manifest is refused, naming what was found. The old output is then removed file
//!   by listed file, so nothing lowbit did not write is ever deleted.
//! * A run holds an exclusive lock (`flock`) on `.NAME.lowbit-lock` beside the output from start
//!   to end; a second run on the same output fails at once, naming the holder's pid.
//! * Everything is written into a temporary directory unique to the run, beside the output
//!   (`.NAME.lowbit-tmp-PID-NANOS`, marked by [`TMP_MARKER`]), flushed to disk, and moved into
//!   place with one rename (an atomic exchange when replacing). Temporary directories of killed
//!   runs are removed by the next run on the same output (they are provably lowbit's: marked,
//!   and the lock that every writer holds is free); anything else with such a name is named in
//!   a warning and left alone.

mod lock;

use crate::escape;
use crate::events::Events;
use crate::st_write::{sync_dir, sync_file, write_atomic};
use anyhow::{anyhow, bail, Context, Result};
use lock::Lock;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs;
use std::path::{Component, Path, PathBuf};

/// The manifest every lowbit output holds.
pub const MANIFEST: &str = "lowbit-output.json";
/// The marker of a temporary directory of a running (or killed) lowbit.
pub const TMP_MARKER: &str = "lowbit-tmp.json";
/// Value of the manifest's `written_by`.
const WRITTEN_BY: &str = "lowbit";
/// Manifests larger than this are not read (a real one lists a few files per model).
const MAX_MANIFEST_BYTES: u64 = 16 << 20;

/// `MANIFEST`: what lowbit wrote into an output directory.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Manifest {
    /// Always "lowbit".
    pub written_by: String,
    pub lowbit_version: String,
    /// The command that wrote it (quantize, sweep, import-gguf).
    pub command: String,
    /// Every file lowbit wrote, by `/`-separated path relative to the directory, with its size in
    /// bytes (the manifest itself excluded).
    pub files: BTreeMap<String, u64>,
}

/// `TMP_MARKER`: who made a temporary directory.
#[derive(Serialize, Deserialize)]
pub struct TmpMarker {
    pub command: String,
    pub pid: u32,
}

/// An input the output must keep clear of, with what to call it in a message.
pub struct Source<'a> {
    pub path: &'a Path,
    pub what: &'a str,
}

impl<'a> Source<'a> {
    pub fn new(path: &'a Path, what: &'a str) -> Self {
        Source { path, what }
    }
}

/// The output directory of one run: locked from [`OutDir::begin`] until dropped.
pub struct OutDir {
    /// The output path: canonical parent + the name as given.
    out: PathBuf,
    command: String,
    force: bool,
    tmp: Option<PathBuf>,
    keep_tmp: bool,
    _lock: Lock,
}

/// Test hook: `LOWBIT_TEST_CRASH=<point>` kills the process with SIGKILL when it reaches `point`
/// (e.g. `before-rename`, `before-commit:2`), as a `kill -9` landing exactly there would. Used by
/// the crash-safety tests; a no-op unless the variable names this point.
pub fn test_crash(point: &str) {
    if std::env::var_os("LOWBIT_TEST_CRASH").is_some_and(|v| v == point) {
        #[cfg(unix)]
        // SAFETY: sending SIGKILL to this process; nothing runs after it.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
        std::process::abort();
    }
}

impl OutDir {
    /// Check `out` against the inputs and `--force`, and take the lock.
    pub fn begin(out: &Path, command: &str, force: bool, inputs: &[Source]) -> Result<OutDir> {
        let out = normalize(out)?;
        let shown = escape::path(&out);
        for i in inputs {
            let Ok(p) = fs::canonicalize(i.path) else { continue };
            let what = format!("the {} {}", i.what, escape::path(i.path));
            if p == out {
                bail!("--out {shown} is {what}; write the output somewhere else");
            }
            if p.starts_with(&out) {
                bail!("--out {shown} contains {what}; write the output somewhere else");
            }
            if out.starts_with(&p) {
                bail!("--out {shown} is inside {what}; write the output somewhere else");
            }
        }
        let parent = out.parent().expect("normalized paths have a parent");
        fs::create_dir_all(parent).with_context(|| format!("{}: cannot create directory", escape::path(parent)))?;
        let lock = Lock::take(&sibling(&out, "lowbit-lock"), &out)?;
        let od = OutDir { out, command: command.to_string(), force, tmp: None, keep_tmp: false, _lock: lock };
        od.check_replaceable()?;
        Ok(od)
    }

    /// The output path (canonical parent).
    pub fn path(&self) -> &Path {
        &self.out
    }

    /// The temporary directory of this run (after [`OutDir::create_tmp`] or [`OutDir::adopt`]).
    pub fn tmp(&self) -> &Path {
        self.tmp.as_deref().expect("create_tmp or adopt first")
    }

    /// Keep the temporary directory when the run fails (`quantize --resume` keeps its
    /// checkpoints); by default it is removed.
    pub fn keep_tmp_on_failure(&mut self, keep: bool) {
        self.keep_tmp = keep;
    }

    /// An existing output is replaceable: absent, or with --force a directory lowbit wrote.
    fn check_replaceable(&self) -> Result<Option<Manifest>> {
        if fs::symlink_metadata(&self.out).is_err() {
            return Ok(None);
        }
        if !self.force {
            // Point at --force only when it would work: the directory is one lowbit wrote.
            return match owned_manifest(&self.out) {
                Ok(_) => bail!("{}: output directory exists (use --force to replace it)", escape::path(&self.out)),
                Err(e) => Err(e.context(format!("{}: exists", escape::path(&self.out)))),
            };
        }
        owned_manifest(&self.out).map(Some)
    }

    /// Temporary directories that killed runs on this output left behind (marked as lowbit's),
    /// with the command that made each. Nobody is using them: every writer holds the lock.
    pub fn leftovers(&self) -> Vec<(PathBuf, String)> {
        self.tmp_siblings().into_iter().filter_map(|p| read_marker(&p).map(|m| (p, m.command))).collect()
    }

    /// Make `dir` (one of [`OutDir::leftovers`]) this run's temporary directory, and clean up the
    /// other leftovers.
    pub fn adopt(&mut self, dir: &Path, ev: &mut dyn Events) -> Result<()> {
        write_marker(dir, &self.command)?;
        self.tmp = Some(dir.to_path_buf());
        self.clean_stale(ev);
        Ok(())
    }

    /// Clean up leftovers of killed runs and create this run's temporary directory.
    pub fn create_tmp(&mut self, ev: &mut dyn Events) -> Result<&Path> {
        self.clean_stale(ev);
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let tmp = sibling(&self.out, &format!("lowbit-tmp-{}-{nanos:x}", std::process::id()));
        fs::create_dir(&tmp).with_context(|| format!("{}: cannot create", escape::path(&tmp)))?;
        self.tmp = Some(tmp.clone());
        write_marker(&tmp, &self.command)?;
        Ok(self.tmp())
    }

    /// Remove the marked temporary directories of killed runs; name anything else that looks
    /// like one (a warning to `ev`).
    fn clean_stale(&self, ev: &mut dyn Events) {
        for p in self.tmp_siblings() {
            if Some(&p) == self.tmp.as_ref() {
                continue;
            }
            let removed = if read_marker(&p).is_some() {
                fs::remove_dir_all(&p).is_ok()
            } else if let Ok(m) = owned_manifest(&p) {
                // Killed between writing the manifest and the rename (or between replacing an
                // output and removing the old one): a complete output; its listed files go.
                remove_owned(&p, &m, ev);
                !p.exists()
            } else {
                // Killed between mkdir and the marker: empty. Anything else is not provably ours.
                fs::remove_dir(&p).is_ok()
            };
            if !removed {
                ev.warn(&format!(
                    "{}: left in place: named like a lowbit temporary directory but not marked as one (remove it if it is not yours)",
                    escape::path(&p)
                ));
            }
        }
        // Names of older lowbit versions' temporary directories: named, not removed.
        let name = self.name();
        for p in list_dir(self.out.parent().expect("has a parent")) {
            let n = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            if n == format!(".{name}.lowbit-partial")
                || n.starts_with(&format!(".{name}.import-tmp."))
                || n.starts_with(&format!(".{name}.import-old."))
            {
                ev.warn(&format!(
                    "{}: a temporary directory of an older lowbit version; remove it if no run is using it",
                    escape::path(&p)
                ));
            }
        }
    }

    fn name(&self) -> String {
        self.out.file_name().expect("normalized").to_string_lossy().into_owned()
    }

    fn tmp_siblings(&self) -> Vec<PathBuf> {
        let prefix = format!(".{}.lowbit-tmp-", self.name());
        list_dir(self.out.parent().expect("has a parent"))
            .into_iter()
            .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with(&prefix)))
            .filter(|p| fs::symlink_metadata(p).is_ok_and(|m| m.is_dir()))
            .collect()
    }

    /// Write the manifest, flush every file and directory to disk, and move the temporary
    /// directory into place (replacing an existing output lowbit wrote, with --force).
    pub fn commit(mut self, ev: &mut dyn Events) -> Result<()> {
        let tmp = self.tmp.clone().expect("create_tmp or adopt first");
        let _ = fs::remove_file(tmp.join(TMP_MARKER));
        write_manifest(&tmp, &self.command)?;
        sync_tree(&tmp)?;
        test_crash("before-rename");
        let parent = self.out.parent().expect("has a parent").to_path_buf();
        match self.check_replaceable()? {
            None => rename_noreplace(&tmp, &self.out)?,
            Some(old) => {
                exchange(&tmp, &self.out)?;
                // `tmp` now holds the old output: remove what lowbit wrote, and nothing else.
                sync_dir(&parent)?;
                self.tmp = None;
                remove_owned(&tmp, &old, ev);
            }
        }
        self.tmp = None;
        sync_dir(&parent)
    }
}

impl Drop for OutDir {
    fn drop(&mut self) {
        if let Some(t) = self.tmp.take() {
            if !self.keep_tmp {
                let _ = fs::remove_dir_all(&t);
            }
        }
    }
}

/// `out` as an absolute path with a canonical parent and its own last component kept as given
/// (so a symbolic link at `out` is seen as a link, not followed).
fn normalize(out: &Path) -> Result<PathBuf> {
    let shown = escape::path(out);
    let abs =
        if out.is_absolute() { out.to_path_buf() } else { std::env::current_dir().context("cannot read the current directory")?.join(out) };
    if !matches!(abs.components().next_back(), Some(Component::Normal(_))) {
        // `.`, `..`, `/`: an existing directory, named by its canonical path.
        let c = fs::canonicalize(&abs).with_context(|| format!("{shown}: cannot resolve"))?;
        if c.parent().is_none() {
            bail!("--out {shown}: the root directory cannot be an output directory");
        }
        return Ok(c);
    }
    let name = abs.file_name().expect("ends in a normal component").to_owned();
    // The nearest existing ancestor, canonical, then the missing components as given.
    let mut missing: Vec<std::ffi::OsString> = Vec::new();
    let mut p = abs.parent().expect("has a parent").to_path_buf();
    let base = loop {
        match fs::canonicalize(&p) {
            Ok(c) => break c,
            Err(_) => match p.components().next_back() {
                Some(Component::Normal(n)) => {
                    missing.push(n.to_owned());
                    p.pop();
                }
                _ => bail!("--out {shown}: cannot resolve its parent directory"),
            },
        }
    };
    let mut r = base;
    for m in missing.into_iter().rev() {
        r.push(m);
    }
    r.push(name);
    Ok(r)
}

/// `.NAME.SUFFIX` beside `out`.
fn sibling(out: &Path, suffix: &str) -> PathBuf {
    let name = out.file_name().expect("normalized").to_string_lossy().into_owned();
    out.with_file_name(format!(".{name}.{suffix}"))
}

fn list_dir(dir: &Path) -> Vec<PathBuf> {
    fs::read_dir(dir).map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect()).unwrap_or_default()
}

fn write_marker(dir: &Path, command: &str) -> Result<()> {
    let m = TmpMarker { command: command.to_string(), pid: std::process::id() };
    write_atomic(&dir.join(TMP_MARKER), serde_json::to_string(&m)?.as_bytes())
}

fn read_marker(dir: &Path) -> Option<TmpMarker> {
    let p = dir.join(TMP_MARKER);
    if !fs::symlink_metadata(&p).is_ok_and(|m| m.is_file() && m.len() < 4096) {
        return None;
    }
    serde_json::from_slice(&fs::read(&p).ok()?).ok()
}

/// Every regular file under `dir` by `/`-separated relative path, with its size; refuses
/// symbolic links and other file types (lowbit writes neither).
fn list_files(dir: &Path) -> Result<BTreeMap<String, u64>> {
    fn walk(root: &Path, rel: &str, out: &mut BTreeMap<String, u64>) -> Result<()> {
        let dir = if rel.is_empty() { root.to_path_buf() } else { root.join(rel) };
        for e in fs::read_dir(&dir).with_context(|| format!("{}: cannot list", escape::path(&dir)))? {
            let e = e.with_context(|| format!("{}: cannot list", escape::path(&dir)))?;
            let name = e.file_name().into_string().map_err(|n| anyhow!("{}: file name is not UTF-8", escape::path(&dir.join(n))))?;
            let r = if rel.is_empty() { name } else { format!("{rel}/{name}") };
            let m = fs::symlink_metadata(e.path())?;
            if m.is_dir() {
                walk(root, &r, out)?;
            } else if m.is_file() {
                out.insert(r, m.len());
            } else {
                bail!("{}: not a regular file", escape::path(&e.path()));
            }
        }
        Ok(())
    }
    let mut out = BTreeMap::new();
    walk(dir, "", &mut out)?;
    Ok(out)
}

/// Write `dir`'s manifest: every file in it.
pub fn write_manifest(dir: &Path, command: &str) -> Result<()> {
    let mut files = list_files(dir)?;
    files.remove(MANIFEST);
    let m = Manifest { written_by: WRITTEN_BY.into(), lowbit_version: env!("CARGO_PKG_VERSION").into(), command: command.into(), files };
    write_atomic(&dir.join(MANIFEST), serde_json::to_string_pretty(&m)?.as_bytes())
}

/// fsync every file and directory under `dir`.
fn sync_tree(dir: &Path) -> Result<()> {
    for rel in list_files(dir)?.keys() {
        sync_file(&dir.join(rel))?;
    }
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for p in list_dir(&d) {
            if fs::symlink_metadata(&p).is_ok_and(|m| m.is_dir()) {
                dirs.push(p);
            }
        }
        sync_dir(&d)?;
    }
    Ok(())
}

/// The manifest of `dir` if lowbit wrote `dir` and nothing in it changed since: every entry is
/// a listed file of the listed size, or a directory on the way to one. Anything else is refused
/// with a message naming it.
pub fn owned_manifest(dir: &Path) -> Result<Manifest> {
    let shown = escape::path(dir);
    let hint = "--force replaces only an output directory lowbit wrote; move it away or choose another --out";
    let md = fs::symlink_metadata(dir).with_context(|| format!("{shown}: cannot stat"))?;
    if md.file_type().is_symlink() {
        bail!("{shown}: is a symbolic link; {hint}");
    }
    if !md.is_dir() {
        bail!("{shown}: is a file, not a directory; {hint}");
    }
    let mp = dir.join(MANIFEST);
    let manifest = match fs::symlink_metadata(&mp) {
        Ok(m) if m.is_file() && m.len() <= MAX_MANIFEST_BYTES => {
            let bytes = fs::read(&mp).with_context(|| format!("{}: cannot read", escape::path(&mp)))?;
            serde_json::from_slice::<Manifest>(&bytes)
                .ok()
                .filter(|m| m.written_by == WRITTEN_BY)
                .ok_or_else(|| anyhow!("{}: not a manifest lowbit wrote; {hint}", escape::path(&mp)))?
        }
        _ => {
            let mut names: Vec<String> =
                list_dir(dir).iter().filter_map(|p| p.file_name().map(|n| escape::text(&n.to_string_lossy()))).collect();
            names.sort();
            let n = names.len();
            let shown_names = names.into_iter().take(5).collect::<Vec<_>>().join(", ");
            let found = if n == 0 {
                "it is empty".to_string()
            } else {
                format!("it holds {n} entries: {shown_names}{}", if n > 5 { ", ..." } else { "" })
            };
            bail!("{shown}: not written by lowbit (no {MANIFEST}; {found}); {hint}");
        }
    };
    for rel in manifest.files.keys() {
        if !plain_relative(rel) {
            bail!("{}: lists {:?}, not a plain relative path; {hint}", escape::path(&mp), escape::text(rel));
        }
    }
    let dirs: std::collections::BTreeSet<&str> =
        manifest.files.keys().flat_map(|f| f.match_indices('/').map(move |(i, _)| &f[..i])).collect();
    // Walk breadth-first; stop at the first entry lowbit did not write (so a huge foreign tree
    // is never walked whole).
    let mut queue = vec![String::new()];
    while let Some(rel) = queue.pop() {
        let d = if rel.is_empty() { dir.to_path_buf() } else { dir.join(&rel) };
        for e in fs::read_dir(&d).with_context(|| format!("{}: cannot list", escape::path(&d)))? {
            let e = e?;
            let name = e.file_name().to_string_lossy().into_owned();
            let r = if rel.is_empty() { name } else { format!("{rel}/{name}") };
            let p = e.path();
            let m = fs::symlink_metadata(&p)?;
            if r == MANIFEST && m.is_file() {
                continue;
            }
            if m.is_dir() && dirs.contains(r.as_str()) {
                queue.push(r);
                continue;
            }
            match manifest.files.get(&r) {
                Some(&len) if m.is_file() && m.len() == len => {}
                Some(&len) if m.is_file() => {
                    bail!("{}: changed since lowbit wrote it ({} bytes, lowbit wrote {len}); {hint}", escape::path(&p), m.len())
                }
                _ => bail!("{}: not written by lowbit; {hint}", escape::path(&p)),
            }
        }
    }
    Ok(manifest)
}

fn plain_relative(rel: &str) -> bool {
    !rel.is_empty() && Path::new(rel).components().all(|c| matches!(c, Component::Normal(_))) && !rel.contains('\\')
}

/// Remove the files of `m` from `dir` (each only if still a regular file of the listed size),
/// then the emptied directories. Whatever else is there stays, named in a warning to `ev`.
fn remove_owned(dir: &Path, m: &Manifest, ev: &mut dyn Events) {
    for (rel, &len) in &m.files {
        let p = dir.join(rel);
        if plain_relative(rel) && fs::symlink_metadata(&p).is_ok_and(|md| md.is_file() && md.len() == len) {
            let _ = fs::remove_file(&p);
        }
    }
    let _ = fs::remove_file(dir.join(MANIFEST));
    let mut dirs: Vec<&str> =
        m.files.keys().filter(|f| plain_relative(f)).flat_map(|f| f.match_indices('/').map(move |(i, _)| &f[..i])).collect();
    dirs.sort_by_key(|d| std::cmp::Reverse(d.len()));
    dirs.dedup();
    for d in dirs {
        let _ = fs::remove_dir(dir.join(d));
    }
    if fs::remove_dir(dir).is_err() && dir.exists() {
        ev.warn(&format!("{}: the replaced output held files lowbit did not write; left them there", escape::path(dir)));
    }
}

/// Rename `from` to `to`, failing if `to` exists (never replacing what appeared meanwhile).
fn rename_noreplace(from: &Path, to: &Path) -> Result<()> {
    let err = || format!("{}: cannot move the output into place", escape::path(to));
    #[cfg(target_os = "linux")]
    {
        let (f, t) = (cstr(from)?, cstr(to)?);
        // SAFETY: two valid NUL-terminated paths; renameat2 only reads them.
        let r = unsafe { libc::renameat2(libc::AT_FDCWD, f.as_ptr(), libc::AT_FDCWD, t.as_ptr(), libc::RENAME_NOREPLACE) };
        if r == 0 {
            return Ok(());
        }
        let e = std::io::Error::last_os_error();
        // Filesystems without RENAME_NOREPLACE: fall back to a checked rename.
        if !matches!(e.raw_os_error(), Some(libc::EINVAL) | Some(libc::ENOSYS)) {
            return Err(e).with_context(err);
        }
    }
    if fs::symlink_metadata(to).is_ok() {
        bail!("{}: appeared during the run; not replaced", escape::path(to));
    }
    fs::rename(from, to).with_context(err)
}

/// Swap `a` and `b` (both exist) in one step where the system can.
fn exchange(a: &Path, b: &Path) -> Result<()> {
    let err = || format!("{}: cannot replace", escape::path(b));
    #[cfg(target_os = "linux")]
    {
        let (ca, cb) = (cstr(a)?, cstr(b)?);
        // SAFETY: two valid NUL-terminated paths; renameat2 only reads them.
        let r = unsafe { libc::renameat2(libc::AT_FDCWD, ca.as_ptr(), libc::AT_FDCWD, cb.as_ptr(), libc::RENAME_EXCHANGE) };
        if r == 0 {
            return Ok(());
        }
        let e = std::io::Error::last_os_error();
        if !matches!(e.raw_os_error(), Some(libc::EINVAL) | Some(libc::ENOSYS)) {
            return Err(e).with_context(err);
        }
    }
    // Two renames: the old output goes aside under a temporary name first.
    let aside = b.with_file_name(format!("{}.old", a.file_name().expect("named").to_string_lossy()));
    fs::rename(b, &aside).with_context(err)?;
    fs::rename(a, b).with_context(err)?;
    fs::rename(&aside, a).with_context(err)
}

#[cfg(target_os = "linux")]
fn cstr(p: &Path) -> Result<std::ffi::CString> {
    use std::os::unix::ffi::OsStrExt;
    std::ffi::CString::new(p.as_os_str().as_bytes()).map_err(|_| anyhow!("{}: path holds a NUL byte", escape::path(p)))
}
