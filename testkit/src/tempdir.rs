//! A private directory under the system's temporary directory, removed with everything
//! in it when dropped, for tests that need a state directory, a socket path or files.

use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Removed on drop. Dereferences to its path.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    /// Creates `pollux-<test binary>-<pid>-<n>-<nanos>`: unique across the threads of one
    /// test binary (the counter), across binaries run at once (the pid), and across runs
    /// that left a directory behind after a crash (the clock), so creation never has to
    /// remove someone else's directory first.
    ///
    /// # Panics
    /// If the directory cannot be created: a test cannot go on without it.
    pub fn new() -> TempDir {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let binary = std::env::current_exe()
            .ok()
            .and_then(|exe| exe.file_stem().map(|s| s.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "test".to_owned());
        let root = std::env::temp_dir().join(format!(
            "pollux-{binary}-{}-{n}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir(&root).unwrap_or_else(|e| panic!("creating {}: {e}", root.display()));
        TempDir(root)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// Writes `text` to `name` in this directory and returns the file's path.
    ///
    /// # Panics
    /// If the file cannot be written.
    pub fn file(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
        path
    }
}

impl Default for TempDir {
    fn default() -> TempDir {
        TempDir::new()
    }
}

impl Deref for TempDir {
    type Target = Path;

    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::TempDir;

    #[test]
    fn two_are_distinct_and_both_go_on_drop() {
        let (a, b) = (TempDir::new(), TempDir::new());
        assert_ne!(a.path(), b.path());
        std::fs::write(a.join("f"), b"x").unwrap();
        let (pa, pb) = (a.to_path_buf(), b.to_path_buf());
        drop((a, b));
        assert!(!pa.exists() && !pb.exists());
    }
}
