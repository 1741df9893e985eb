//! Writing files that hold secrets (leaf: imports nothing of haimg but its error type).

use std::path::Path;

use crate::error::{Error, Result};

/// Creates `path` readable by its owner only and writes `contents`; fails if it exists, so
/// a secret never lands in a file someone else made (or made readable) first.
pub fn create_secret(path: &Path, contents: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(Error::io(path))?;
    f.write_all(contents).map_err(Error::io(path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_secret_file_is_the_owners_only_and_never_written_over() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("key");
        create_secret(&p, b"s3cret").unwrap();
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(create_secret(&p, b"other").is_err());
        assert_eq!(std::fs::read(&p).unwrap(), b"s3cret");
    }
}
