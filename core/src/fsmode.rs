//! Owner-only files and directories for what fieldsync keeps on disk: databases (a replica, a
//! relay's `relay.db`) with their WAL and shared-memory files, data directories and backups.
//!
//! They hold customer data, device credentials' hashes and the change history, so they are
//! created readable by their owner only (files `0600`, directories `0700`) whatever the
//! process umask, rather than made private after the fact: SQLite gives a database's `-wal`
//! and `-shm` files the permission bits of the database file, so creating the empty database
//! file `0600` before SQLite opens it covers all three. Files and directories left looser by
//! an older version are tightened when opened ([`tighten`]), with a warning.
//!
//! On platforms without Unix permissions these only create, and [`tighten`] does nothing.

use std::io;
use std::path::{Path, PathBuf};

/// Permission bits of a private file: read and write for the owner.
pub const PRIVATE_FILE: u32 = 0o600;
/// Permission bits of a private directory: everything for the owner.
pub const PRIVATE_DIR: u32 = 0o700;

/// Suffixes of the files SQLite keeps beside a database (`relay.db-wal`, …).
pub const SQLITE_SIDE_FILES: [&str; 3] = ["-wal", "-shm", "-journal"];

/// Creates `path` as an empty file readable and writable by its owner only. An existing file
/// is left as it is (see [`tighten`]); returns whether the file was created.
pub fn create_private_file(path: &Path) -> io::Result<bool> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(PRIVATE_FILE);
    }
    match opts.open(path) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(e),
    }
}

/// Creates the directory `path` and any missing parents, each readable by its owner only.
/// Directories that exist already are left as they are.
pub fn create_private_dir_all(path: &Path) -> io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(PRIVATE_DIR);
    }
    builder.create(path)
}

/// Takes from `path` the permission bits `want` does not allow (`want` = [`PRIVATE_FILE`] takes
/// away everything for group and others), with a warning naming the path and its old mode.
/// Returns the old mode if it changed anything; a missing path is left alone (`None`).
pub fn tighten(path: &Path, want: u32) -> io::Result<Option<u32>> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let meta = match std::fs::metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let old = meta.permissions().mode() & 0o7777;
        let extra = old & 0o777 & !want;
        if extra == 0 {
            return Ok(None);
        }
        let new = old & !extra;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(new))?;
        tracing::warn!(
            path = %path.display(),
            old_mode = format_args!("{old:04o}"),
            new_mode = format_args!("{new:04o}"),
            "{} was readable by other users; made it private to its owner",
            path.display()
        );
        Ok(Some(old))
    }
    #[cfg(not(unix))]
    {
        let _ = (path, want);
        Ok(None)
    }
}

/// Whether the directory `path` has the sticky bit (shared directories such as `/tmp`, which
/// must never be made private).
pub fn is_sticky_dir(path: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(path).is_ok_and(|m| m.is_dir() && m.permissions().mode() & 0o1000 != 0)
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        false
    }
}

/// The SQLite database `db` and the files SQLite keeps beside it.
pub fn sqlite_files(db: &Path) -> Vec<PathBuf> {
    let mut files = vec![db.to_path_buf()];
    for suffix in SQLITE_SIDE_FILES {
        let mut s = db.as_os_str().to_owned();
        s.push(suffix);
        files.push(PathBuf::from(s));
    }
    files
}

/// Tightens the database `db` and the files SQLite keeps beside it to [`PRIVATE_FILE`]. Never
/// fails: a file that cannot be changed (another owner) is reported in the log and left.
pub fn tighten_database(db: &Path) {
    for f in sqlite_files(db) {
        if let Err(e) = tighten(&f, PRIVATE_FILE) {
            tracing::warn!(path = %f.display(), error = %e, "cannot make the file private to its owner");
        }
    }
}

/// Prepares the database file `db` before SQLite opens it: creates it empty and private when
/// missing (so SQLite's `-wal` and `-shm` files are private from their creation too), else
/// tightens it and its side files. A failure is left to SQLite's own open to report.
pub fn prepare_database(db: &Path) {
    if db.as_os_str().is_empty() || db == Path::new(":memory:") {
        return; // SQLite's temporary and in-memory databases have no file
    }
    match create_private_file(db) {
        Ok(true) => {}
        Ok(false) => tighten_database(db),
        Err(e) => {
            tracing::debug!(path = %db.display(), error = %e, "cannot create the database file")
        }
    }
}

#[cfg(all(test, unix))]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn files_and_directories_are_created_private() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a/b");
        create_private_dir_all(&dir).unwrap();
        assert_eq!(mode(&tmp.path().join("a")), 0o700);
        assert_eq!(mode(&dir), 0o700);
        let f = dir.join("x.db");
        assert!(create_private_file(&f).unwrap());
        assert_eq!(mode(&f), 0o600);
        std::fs::write(&f, b"kept").unwrap();
        assert!(
            !create_private_file(&f).unwrap(),
            "an existing file is kept"
        );
        assert_eq!(std::fs::read(&f).unwrap(), b"kept");
    }

    #[test]
    fn looser_modes_are_tightened_and_tight_ones_left() {
        let tmp = tempfile::tempdir().unwrap();
        let f = tmp.path().join("x.db");
        std::fs::write(&f, b"").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(tighten(&f, PRIVATE_FILE).unwrap(), Some(0o644));
        assert_eq!(mode(&f), 0o600);
        assert_eq!(tighten(&f, PRIVATE_FILE).unwrap(), None);
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o400)).unwrap();
        assert_eq!(tighten(&f, PRIVATE_FILE).unwrap(), None, "stricter stays");
        assert_eq!(mode(&f), 0o400);
        assert_eq!(
            tighten(&tmp.path().join("none"), PRIVATE_FILE).unwrap(),
            None
        );
        let wal = tmp.path().join("x.db-wal");
        std::fs::write(&wal, b"").unwrap();
        std::fs::set_permissions(&wal, std::fs::Permissions::from_mode(0o664)).unwrap();
        prepare_database(&f);
        assert_eq!(mode(&wal), 0o600);
    }
}
