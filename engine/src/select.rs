//! Which paths an operation takes: gitignore-style patterns and the other
//! backup selection rules.
//!
//! Patterns follow `.gitignore` syntax, rooted at `/` (for backup, the
//! filesystem root; for restore, the snapshot's root):
//!
//! - a pattern without a `/` matches a name at any depth: `*.log`, `node_modules`;
//! - a pattern with a `/` at the start or in the middle is anchored: `/var/cache`,
//!   `data/tmp` (= `/data/tmp`);
//! - a trailing `/` matches directories only: `cache/`;
//! - `*` and `?` do not cross `/`; `**` does: `/home/**/.cache`, `**/tmp/*.swp`;
//! - `!pattern` re-includes what an earlier pattern excluded;
//! - a line starting with `#` in an exclude file is a comment.

use std::path::{Path, PathBuf};

use ignore::gitignore::{Gitignore, GitignoreBuilder};

use crate::error::{Error, Result};

/// A compiled set of patterns.
#[derive(Clone, Debug)]
pub struct Patterns {
    matcher: Gitignore,
}

impl Patterns {
    /// Compiles `patterns` (case-sensitive) and `ipatterns` (case-insensitive).
    pub fn new(patterns: &[String], ipatterns: &[String]) -> Result<Self> {
        let mut b = GitignoreBuilder::new("/");
        let add = |b: &mut GitignoreBuilder, p: &str| -> Result<()> {
            b.add_line(None, p)
                .map(|_| ())
                .map_err(|e| Error::InvalidArgument(format!("invalid pattern {p:?}: {e}")))
        };
        for p in patterns {
            add(&mut b, p)?;
        }
        let _ = b.case_insensitive(true);
        for p in ipatterns {
            add(&mut b, p)?;
        }
        let matcher = b
            .build()
            .map_err(|e| Error::InvalidArgument(format!("invalid patterns: {e}")))?;
        Ok(Patterns { matcher })
    }

    /// Whether there are no patterns.
    pub fn is_empty(&self) -> bool {
        self.matcher.is_empty()
    }

    /// Whether `path` (absolute, or relative to the root) matches, by itself.
    pub fn matches(&self, path: &Path, is_dir: bool) -> bool {
        self.matcher.matched(path, is_dir).is_ignore()
    }

    /// Whether `path` or one of its parents matches.
    pub fn matches_or_parent(&self, path: &Path, is_dir: bool) -> bool {
        let rel = path.strip_prefix("/").unwrap_or(path);
        self.matcher
            .matched_path_or_any_parents(rel, is_dir)
            .is_ignore()
    }
}

/// Reads patterns from a file: one per line; empty lines and `#` comments are skipped.
pub fn read_pattern_file(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    Ok(text
        .lines()
        .map(str::trim_end)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(String::from)
        .collect())
}

/// Reads paths from a file: one per line (empty lines and `#` comments
/// skipped), or, with `nul`, separated by NUL bytes and taken verbatim.
pub fn read_files_from(path: &Path, nul: bool) -> Result<Vec<PathBuf>> {
    use std::os::unix::ffi::OsStrExt;
    let bytes = if path == Path::new("-") {
        let mut b = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut b)
            .map_err(|e| Error::io("standard input", e))?;
        b
    } else {
        std::fs::read(path).map_err(|e| Error::io(path, e))?
    };
    let items: Vec<&[u8]> = if nul {
        bytes.split(|b| *b == 0).filter(|p| !p.is_empty()).collect()
    } else {
        bytes
            .split(|b| *b == b'\n')
            .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
            .filter(|l| !l.is_empty() && !l.starts_with(b"#"))
            .collect()
    };
    Ok(items
        .into_iter()
        .map(|p| PathBuf::from(std::ffi::OsStr::from_bytes(p)))
        .collect())
}

/// The signature that starts a `CACHEDIR.TAG` file (bford.info/cachedir).
pub const CACHEDIR_SIGNATURE: &[u8] = b"Signature: 8a477f597d28d172789f06886806bc55";

/// What a backup leaves out.
#[derive(Clone, Debug, Default)]
pub struct Selection {
    /// `--exclude` patterns.
    pub exclude: Vec<String>,
    /// `--iexclude` patterns (case-insensitive).
    pub iexclude: Vec<String>,
    /// Leave out a directory that contains a file of one of these names.
    pub exclude_if_present: Vec<String>,
    /// Leave out a directory holding a valid `CACHEDIR.TAG` (the tag file is kept).
    pub exclude_caches: bool,
    /// Leave out files larger than this.
    pub exclude_larger_than: Option<u64>,
    /// Do not cross into other filesystems (mount points are kept, empty).
    pub one_file_system: bool,
}

/// A compiled [`Selection`].
#[derive(Clone, Debug)]
pub(crate) struct Selector {
    patterns: Patterns,
    sel: Selection,
}

impl Selector {
    pub(crate) fn new(sel: &Selection) -> Result<Self> {
        Ok(Selector {
            patterns: Patterns::new(&sel.exclude, &sel.iexclude)?,
            sel: sel.clone(),
        })
    }

    /// Whether to leave out `path`, given its `lstat` metadata (patterns
    /// and sizes; a directory's markers are [`Selector::has_marker`]).
    pub(crate) fn excluded(&self, path: &Path, md: &crate::fsmeta::Meta) -> bool {
        if self.patterns.matches(path, md.is_dir()) {
            return true;
        }
        if md.is_file() {
            if let Some(limit) = self.sel.exclude_larger_than {
                return md.size > limit;
            }
        }
        false
    }

    /// Whether a directory whose entries are `names` (sorted) holds a file
    /// named by `exclude_if_present`, and so is left out.
    pub(crate) fn has_marker(&self, names: &[std::ffi::OsString]) -> bool {
        self.sel.exclude_if_present.iter().any(|m| {
            names
                .binary_search_by(|n| n.as_os_str().cmp(m.as_ref()))
                .is_ok()
        })
    }

    /// Whether the open directory `dir` is a cache directory to keep empty
    /// but for its tag (read beneath it, never through a symlink).
    pub(crate) fn is_cache_dir(&self, dir: &std::os::fd::OwnedFd) -> bool {
        if !self.sel.exclude_caches {
            return false;
        }
        let mut buf = [0u8; CACHEDIR_SIGNATURE.len()];
        let tag = crate::fsmeta::At::Dir(dir, std::ffi::OsStr::new("CACHEDIR.TAG"));
        match tag.open_regular(true) {
            Ok((mut f, _)) => {
                std::io::Read::read_exact(&mut f, &mut buf).is_ok() && buf == CACHEDIR_SIGNATURE
            }
            Err(_) => false,
        }
    }

    pub(crate) fn one_file_system(&self) -> bool {
        self.sel.one_file_system
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(pats: &[&str], path: &str, dir: bool) -> bool {
        let p: Vec<String> = pats.iter().map(|s| s.to_string()).collect();
        Patterns::new(&p, &[])
            .unwrap()
            .matches(Path::new(path), dir)
    }

    #[test]
    fn gitignore_semantics() {
        // Unanchored: a name at any depth.
        assert!(m(&["*.log"], "/var/log/app.log", false));
        assert!(m(&["node_modules"], "/src/web/node_modules", true));
        assert!(!m(&["*.log"], "/var/log/app.log.gz", false));
        // Anchored at the root by a leading or inner slash.
        assert!(m(&["/var/cache"], "/var/cache", true));
        assert!(!m(&["/var/cache"], "/srv/var/cache", true));
        assert!(m(&["data/tmp"], "/data/tmp", true));
        assert!(!m(&["data/tmp"], "/x/data/tmp", true));
        // Directories only.
        assert!(m(&["cache/"], "/home/u/cache", true));
        assert!(!m(&["cache/"], "/home/u/cache", false));
        // ** crosses directories, * does not.
        assert!(m(&["/home/**/.cache"], "/home/a/b/.cache", true));
        assert!(m(&["**/tmp/*.swp"], "/a/b/tmp/x.swp", false));
        assert!(!m(&["/home/*/.cache"], "/home/a/b/.cache", true));
        // Negation.
        assert!(!m(&["*.log", "!keep.log"], "/a/keep.log", false));
        assert!(m(&["*.log", "!keep.log"], "/a/drop.log", false));
    }

    #[test]
    fn case_insensitive_and_bad_patterns() {
        let p = Patterns::new(&[], &["*.JPG".to_string()]).unwrap();
        assert!(p.matches(Path::new("/photos/a.jpg"), false));
        assert!(p.matches(Path::new("/photos/b.JpG"), false));
        let err = Patterns::new(&["{a,b".to_string()], &[]).unwrap_err();
        assert!(err.to_string().contains("{a,b"), "{err}");
    }

    #[test]
    fn files_from_lines_and_nul() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("list");
        std::fs::write(&f, b"/a\n# comment\n\n/b c\r\n").unwrap();
        assert_eq!(
            read_files_from(&f, false).unwrap(),
            vec![PathBuf::from("/a"), PathBuf::from("/b c")]
        );
        std::fs::write(&f, b"/a\n#x\0/b\0").unwrap();
        assert_eq!(
            read_files_from(&f, true).unwrap(),
            vec![PathBuf::from("/a\n#x"), PathBuf::from("/b")]
        );
    }
}
