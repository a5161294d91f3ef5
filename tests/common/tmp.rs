//! A test's path under the system's temporary directory, removed when the
//! test passes. Test files of both test crates include this file with
//! `#[path]`.

use std::path::{Path, PathBuf};

/// `fixnn-<what>-<process id>-<name>` under the system's temporary
/// directory: a directory (`dir`, created empty) or a file's path. Whatever
/// a previous run left there is removed first. Dropped, it is removed,
/// unless the thread is panicking: then it stays for inspection and its
/// path is printed.
pub struct Tmp(PathBuf);

impl Tmp {
    pub fn new(what: &str, name: &str, dir: bool) -> Tmp {
        let p = std::env::temp_dir().join(format!("fixnn-{what}-{}-{name}", std::process::id()));
        let t = Tmp(p);
        t.remove();
        if dir {
            std::fs::create_dir_all(&t.0).unwrap();
        }
        t
    }

    fn remove(&self) {
        if self.0.is_dir() {
            let _ = std::fs::remove_dir_all(&self.0);
        } else {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}

impl Drop for Tmp {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("kept for inspection: {}", self.0.display());
        } else {
            self.remove();
        }
    }
}

impl std::ops::Deref for Tmp {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<Path> for Tmp {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}
