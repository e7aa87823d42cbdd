//! Files only polluxd may read or replace: the state directory, its generation files and
//! the DHCP lease files. They are created with modes 0600 (files) and 0700 (directories),
//! never through a symbolic link (a link planted in the directory could otherwise make
//! the daemon, usually root, overwrite or disclose any file), and a directory that others
//! could write is tightened, with a warning, before it is used.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Mode of the directories.
pub const DIR_MODE: u32 = 0o700;
/// Mode of the files.
pub const FILE_MODE: u32 = 0o600;

/// Creates `dir` (and missing parents) with mode 0700, or checks an existing one: it must
/// be a real directory (not a symbolic link) owned by this process's user. Group or other
/// permissions on it are removed; the returned note says so, for the log.
pub fn ensure_dir(dir: &Path) -> io::Result<Option<String>> {
    DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)?;
    let meta = fs::symlink_metadata(dir)?;
    if meta.file_type().is_symlink() {
        return Err(io::Error::other(format!(
            "{} is a symbolic link; give the directory itself",
            dir.display()
        )));
    }
    if !meta.is_dir() {
        return Err(io::Error::other("not a directory"));
    }
    let euid = rustix::process::geteuid().as_raw();
    if meta.uid() != euid {
        return Err(io::Error::other(format!(
            "{} is owned by uid {}, not by this process's uid {euid}",
            dir.display(),
            meta.uid()
        )));
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 != 0 {
        fs::set_permissions(dir, fs::Permissions::from_mode(DIR_MODE))?;
        return Ok(Some(format!(
            "{} had mode {mode:04o}; set to {DIR_MODE:04o} so that only polluxd reads and \
             replaces its files",
            dir.display()
        )));
    }
    Ok(None)
}

/// Creates `path` afresh for writing, mode 0600: whatever was there (a leftover temp file,
/// a planted symbolic link) is removed first, and the create neither follows a link nor
/// opens an existing file.
pub fn create_new(path: &Path) -> io::Result<File> {
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(FILE_MODE)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}

/// Opens `path` for reading and writing, creating it with mode 0600, without following a
/// symbolic link.
pub fn open_or_create(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(FILE_MODE)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}

/// Reads `path` whole, refusing a symbolic link.
pub fn read(path: &Path) -> io::Result<Vec<u8>> {
    let mut file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    struct TempDir(PathBuf);

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn temp(name: &str) -> TempDir {
        let dir =
            std::env::temp_dir().join(format!("pollux-private-fs-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        TempDir(dir)
    }

    #[test]
    fn a_new_directory_is_0700_and_a_loose_one_is_tightened() {
        let t = temp("dir");
        let dir = t.0.join("state");
        assert_eq!(ensure_dir(&dir).unwrap(), None);
        let mode = |p: &Path| fs::metadata(p).unwrap().mode() & 0o7777;
        assert_eq!(mode(&dir), 0o700);
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).unwrap();
        let note = ensure_dir(&dir).unwrap().expect("a note about the fix");
        assert!(note.contains("0777"), "{note}");
        assert_eq!(mode(&dir), 0o700);
    }

    #[test]
    fn a_symbolic_link_is_neither_followed_nor_used_as_the_directory() {
        let t = temp("link");
        fs::create_dir_all(&t.0).unwrap();
        let victim = t.0.join("victim");
        fs::write(&victim, b"precious").unwrap();
        let file = t.0.join("gen.json.tmp");
        std::os::unix::fs::symlink(&victim, &file).unwrap();
        use std::io::Write;
        create_new(&file).unwrap().write_all(b"new").unwrap();
        assert_eq!(fs::read(&victim).unwrap(), b"precious");
        assert!(!fs::symlink_metadata(&file)
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(fs::metadata(&file).unwrap().mode() & 0o777, 0o600);

        let link = t.0.join("linked");
        std::os::unix::fs::symlink(&victim, &link).unwrap();
        assert!(read(&link).is_err(), "a read follows a link");
        assert!(open_or_create(&link).is_err(), "an open follows a link");
        let dir_link = t.0.join("dir-link");
        std::os::unix::fs::symlink(&t.0, &dir_link).unwrap();
        assert!(ensure_dir(&dir_link).is_err(), "a linked directory is used");
    }
}
