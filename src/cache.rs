//! The user's cache directory, and file digests remembered across runs.
//!
//! A local bake's recipe hash covers every pinned input by its sha256: hundreds of megabytes
//! of packages and image archives, and the agent binary. Hashing them on every run would make
//! a cache hit cost seconds, so a file's digest is remembered under the cache directory,
//! keyed by what the file system says about the file: device, inode, size, and the
//! modification and change times to the nanosecond. Any write to the file changes its change
//! time, which no unprivileged program can set back; this is the test git's index uses.
//!
//! A digest is not remembered while the file may still be being written (its times within
//! [`SETTLE`] of now: a write in the same clock tick would not move them), and any failure
//! to read or write the cache falls back to hashing: the cache can make a run faster, never
//! wrong.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// Files changed this recently are hashed but not remembered. File-system timestamps tick
/// coarsely (a jiffy on ext4, 2 s on FAT): two seconds covers every one haimg runs on.
const SETTLE: Duration = Duration::from_secs(2);

/// `$XDG_CACHE_HOME/haimg`, or `~/.cache/haimg`.
pub fn dir() -> Result<PathBuf> {
    if let Some(x) = std::env::var_os("XDG_CACHE_HOME").filter(|x| !x.is_empty()) {
        return Ok(PathBuf::from(x).join("haimg"));
    }
    match std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        Some(h) => Ok(PathBuf::from(h).join(".cache/haimg")),
        None => Err(Error::Usage(
            "neither XDG_CACHE_HOME nor HOME is set: give --store".into(),
        )),
    }
}

/// The sha256 of the file at `path`, as lowercase hex: remembered in the user's cache.
pub fn file_sha256(path: &Path) -> io::Result<String> {
    let remembered = dir().ok().map(|d| d.join("digests"));
    file_sha256_in(remembered.as_deref(), path, SystemTime::now())
}

/// [`file_sha256`] with the memory in `store` (none: always hash) and the time given.
pub fn file_sha256_in(store: Option<&Path>, path: &Path, now: SystemTime) -> io::Result<String> {
    let meta = fs::metadata(path)?;
    let entry = store.map(|s| s.join(stat_key(path, &meta)));
    if let Some(e) = &entry {
        if let Some(hex) = fs::read_to_string(e).ok().filter(|h| is_digest(h)) {
            return Ok(hex);
        }
    }
    let hex = hash(path)?;
    if let Some(e) = entry.filter(|_| settled(&meta, now)) {
        // A cache that cannot be written only costs the next run its hashing.
        let _ = remember(&e, &hex);
    }
    Ok(hex)
}

fn hash(path: &Path) -> io::Result<String> {
    let mut f = fs::File::open(path)?;
    let mut h = Sha256::new();
    // sha2 0.11 no longer implements `io::Write`: feed it in 1 MiB reads.
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match io::Read::read(&mut f, &mut buf) {
            Ok(0) => break,
            Ok(n) => h.update(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(hex::encode(h.finalize()))
}

/// The entry's name: a digest of where the file is and every stat field a write changes.
fn stat_key(path: &Path, m: &fs::Metadata) -> String {
    let whole = fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let key = format!(
        "haimg-digest/v1\0{}\0{} {} {} {}.{} {}.{}",
        whole.display(),
        m.dev(),
        m.ino(),
        m.size(),
        m.mtime(),
        m.mtime_nsec(),
        m.ctime(),
        m.ctime_nsec()
    );
    hex::encode(Sha256::digest(key.as_bytes()))[..32].to_string()
}

fn settled(m: &fs::Metadata, now: SystemTime) -> bool {
    let at = |secs: i64, nsecs: i64| {
        SystemTime::UNIX_EPOCH
            + Duration::new(secs.max(0) as u64, nsecs.clamp(0, 999_999_999) as u32)
    };
    let newest = at(m.mtime(), m.mtime_nsec()).max(at(m.ctime(), m.ctime_nsec()));
    now.duration_since(newest).is_ok_and(|age| age >= SETTLE)
}

fn is_digest(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Written whole or not at all: a temporary file renamed over the entry.
fn remember(entry: &Path, hex: &str) -> io::Result<()> {
    let dir = entry.parent().expect("an entry is inside the store");
    fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(
        ".{}.{}",
        entry
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("entry"),
        std::process::id()
    ));
    let mut f = fs::File::create(&tmp)?;
    f.write_all(hex.as_bytes())?;
    drop(f);
    fs::rename(&tmp, entry).inspect_err(|_| {
        let _ = fs::remove_file(&tmp);
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const LATER: Duration = Duration::from_secs(3600);

    fn sha(data: &[u8]) -> String {
        hex::encode(Sha256::digest(data))
    }

    #[test]
    fn a_settled_file_is_hashed_once_then_remembered() {
        let d = tempfile::tempdir().unwrap();
        let (store, f) = (d.path().join("digests"), d.path().join("f"));
        fs::write(&f, b"one").unwrap();
        let now = SystemTime::now() + LATER;
        assert_eq!(file_sha256_in(Some(&store), &f, now).unwrap(), sha(b"one"));
        assert_eq!(fs::read_dir(&store).unwrap().count(), 1);
        // The memory is what answers now: plant a different digest in the one entry and
        // read it back (this is how a hit is told from hashing again).
        let entry = fs::read_dir(&store)
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        fs::write(&entry, sha(b"planted")).unwrap();
        assert_eq!(
            file_sha256_in(Some(&store), &f, now).unwrap(),
            sha(b"planted")
        );
    }

    #[test]
    fn any_write_to_the_file_is_a_miss() {
        let d = tempfile::tempdir().unwrap();
        let (store, f) = (d.path().join("digests"), d.path().join("f"));
        fs::write(&f, b"one").unwrap();
        let now = SystemTime::now() + LATER;
        file_sha256_in(Some(&store), &f, now).unwrap();
        // Same size, and the modification time set back: the change time still moves.
        let mtime = fs::metadata(&f).unwrap().modified().unwrap();
        fs::write(&f, b"two").unwrap();
        fs::File::options()
            .write(true)
            .open(&f)
            .unwrap()
            .set_modified(mtime)
            .unwrap();
        assert_eq!(file_sha256_in(Some(&store), &f, now).unwrap(), sha(b"two"));
    }

    #[test]
    fn a_file_written_just_now_is_not_remembered() {
        let d = tempfile::tempdir().unwrap();
        let (store, f) = (d.path().join("digests"), d.path().join("f"));
        fs::write(&f, b"fresh").unwrap();
        let hex = file_sha256_in(Some(&store), &f, SystemTime::now()).unwrap();
        assert_eq!(hex, sha(b"fresh"));
        assert!(!store.exists() || fs::read_dir(&store).unwrap().count() == 0);
    }

    #[test]
    fn a_damaged_or_unwritable_memory_only_costs_hashing() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("f");
        fs::write(&f, b"data").unwrap();
        let now = SystemTime::now() + LATER;
        // The store's place is a file: nothing can be remembered there.
        let blocked = d.path().join("blocked");
        fs::write(&blocked, b"").unwrap();
        assert_eq!(
            file_sha256_in(Some(&blocked), &f, now).unwrap(),
            sha(b"data")
        );
        // An entry that is not a digest is ignored.
        let store = d.path().join("digests");
        file_sha256_in(Some(&store), &f, now).unwrap();
        let entry = fs::read_dir(&store)
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        fs::write(&entry, b"not a digest").unwrap();
        assert_eq!(file_sha256_in(Some(&store), &f, now).unwrap(), sha(b"data"));
        assert!(file_sha256_in(Some(&store), &d.path().join("missing"), now).is_err());
    }
}
