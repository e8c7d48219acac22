//! Opening a git-annex repository read-only and reading its git config.
//!
//! annexfs never writes to the repository: it opens it with libgit2 (through git2), reads
//! refs, trees, blobs and the index, and reads files under `.git/annex/`. Owner validation
//! (`safe.directory`) is turned off because annexfs reads repositories owned by other users
//! and never runs programs named in their configuration.

use super::logs::Trust;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Once;

/// Errors of the repository layer.
#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    #[error("{path}: not a git repository")]
    NotGit { path: PathBuf },
    #[error("{path}: not a git-annex repository (no annex.uuid and no git-annex branch)")]
    NotAnnex { path: PathBuf },
    #[error("{path}: {source}")]
    Git {
        path: PathBuf,
        #[source]
        source: git2::Error,
    },
    #[error("reference {rev}: {source}")]
    BadRef {
        rev: String,
        #[source]
        source: git2::Error,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

static GIT2_INIT: Once = Once::new();

/// Global libgit2 settings, applied once before the first repository is opened.
pub(crate) fn init_git2() {
    GIT2_INIT.call_once(|| {
        // SAFETY: set_verify_owner_validation changes libgit2 global state; Once guarantees it
        // runs once, before any repository is opened by this process.
        #[allow(unsafe_code)]
        unsafe {
            let _ = git2::opts::set_verify_owner_validation(false);
        }
        // Objects are read, never written: hashing every object on read (libgit2's default)
        // costs more than inflating it, and git itself does not do it either.
        git2::opts::strict_hash_verification(false);
        // libgit2 caches only trees under 4 KiB by default; the top levels of the git-annex
        // branch (4096 hash directories) are far larger and are read for every key.
        // SAFETY: GIT_OPT_SET_CACHE_OBJECT_LIMIT takes (git_object_t, size_t), passed here with
        // exactly those C types; it only changes libgit2's cache limits.
        unsafe {
            libgit2_sys::git_libgit2_opts(
                libgit2_sys::GIT_OPT_SET_CACHE_OBJECT_LIMIT as libc::c_int,
                libgit2_sys::GIT_OBJECT_TREE as libc::c_int,
                (64usize << 20) as libc::size_t,
            );
        }
    });
}

/// A snapshot of a repository's git configuration (all scopes libgit2 reads, last value wins;
/// multi-valued variables keep every value).
#[derive(Debug, Clone, Default)]
pub struct GitConfig {
    values: HashMap<String, Vec<String>>,
}

/// Lowercases the section and the variable name of a config name, keeping the subsection
/// (e.g. a remote name) as written: git compares those case-sensitively.
fn normalise_config_name(name: &str) -> String {
    match (name.find('.'), name.rfind('.')) {
        (Some(first), Some(last)) if first != last => {
            format!("{}{}{}", name[..first].to_ascii_lowercase(), &name[first..last], name[last..].to_ascii_lowercase())
        }
        _ => name.to_ascii_lowercase(),
    }
}

impl GitConfig {
    /// Reads every entry of a git2 config.
    pub fn from_git2(cfg: &git2::Config) -> GitConfig {
        let mut values: HashMap<String, Vec<String>> = HashMap::new();
        if let Ok(mut entries) = cfg.entries(None) {
            while let Some(Ok(entry)) = entries.next() {
                let name = String::from_utf8_lossy(entry.name_bytes());
                let value = String::from_utf8_lossy(entry.value_bytes()).into_owned();
                values.entry(normalise_config_name(&name)).or_default().push(value);
            }
        }
        GitConfig { values }
    }

    /// Reads the config file of a repository directly (for remotes on local paths).
    pub fn from_file(path: &Path) -> GitConfig {
        match git2::Config::open(path) {
            Ok(cfg) => GitConfig::from_git2(&cfg),
            Err(_) => GitConfig::default(),
        }
    }

    /// Parses the text of a git config file served by a remote (`<url>/config`): sections,
    /// `[section "sub"]`, `key = value` with quotes trimmed, comments skipped. Never follows
    /// includes (the text is untrusted); what it does not understand is ignored.
    pub fn from_text(text: &str) -> GitConfig {
        let mut values: HashMap<String, Vec<String>> = HashMap::new();
        let mut section = String::new();
        for line in text.lines() {
            let line = line.trim();
            if line.starts_with('#') || line.starts_with(';') {
                continue;
            }
            if let Some(sec) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                section = match sec.split_once(char::is_whitespace) {
                    Some((s, sub)) => format!("{}.{}", s.trim(), sub.trim().trim_matches('"')),
                    None => sec.trim().to_string(),
                };
                continue;
            }
            let (k, v) = line.split_once('=').unwrap_or((line, ""));
            if section.is_empty() || k.trim().is_empty() {
                continue;
            }
            let name = normalise_config_name(&format!("{section}.{}", k.trim()));
            values.entry(name).or_default().push(v.trim().trim_matches('"').to_string());
        }
        GitConfig { values }
    }

    /// Builds a config from `(name, value)` pairs (tests).
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> GitConfig {
        let mut values: HashMap<String, Vec<String>> = HashMap::new();
        for (k, v) in pairs {
            values.entry(normalise_config_name(k)).or_default().push(v.to_string());
        }
        GitConfig { values }
    }

    /// The last value of a variable.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.values.get(&normalise_config_name(name)).and_then(|v| v.last()).map(String::as_str)
    }

    /// A boolean as git reads it (`true/yes/on/1`, `false/no/off/0`, empty is true).
    pub fn get_bool(&self, name: &str) -> Option<bool> {
        let v = self.get(name)?;
        match v.trim().to_ascii_lowercase().as_str() {
            "true" | "yes" | "on" | "1" | "" => Some(true),
            "false" | "no" | "off" | "0" => Some(false),
            _ => None,
        }
    }

    pub fn bool_or(&self, name: &str, default: bool) -> bool {
        self.get_bool(name).unwrap_or(default)
    }

    /// Names of the remotes that have at least one `remote.<name>.*` variable, in a stable
    /// order. A remote name may contain dots: it is everything between `remote.` and the last
    /// dot.
    pub fn remote_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .values
            .keys()
            .filter_map(|k| {
                let rest = k.strip_prefix("remote.")?;
                let last = rest.rfind('.')?;
                Some(rest[..last].to_string())
            })
            .collect();
        names.sort();
        names.dedup();
        names
    }

    /// `(subsection, values)` of every `<section>.<subsection>.<var>` (e.g. the bases of
    /// `url.<base>.insteadOf`), in a stable order.
    pub fn subsections_with(&self, section: &str, var: &str) -> Vec<(String, Vec<String>)> {
        let (prefix, suffix) = (format!("{}.", section.to_ascii_lowercase()), format!(".{}", var.to_ascii_lowercase()));
        let mut out: Vec<(String, Vec<String>)> = self
            .values
            .iter()
            .filter_map(|(k, v)| {
                let sub = k.strip_prefix(&prefix)?.strip_suffix(&suffix)?;
                Some((sub.to_string(), v.clone()))
            })
            .collect();
        out.sort();
        out
    }

    /// `remote.<name>.<var>`.
    pub fn remote(&self, name: &str, var: &str) -> Option<&str> {
        self.get(&format!("remote.{name}.{var}"))
    }

    /// Local trust override of a remote.
    pub fn remote_trust(&self, name: &str) -> Option<Trust> {
        self.remote(name, "annex-trustlevel").and_then(Trust::from_config)
    }
}

/// Where the annex objects of a repository live and in which hash-directory order to look.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectLayout {
    /// `<gitdir>/annex/objects`.
    pub objects_dir: PathBuf,
    /// Hash directory kinds in the order git-annex tries them.
    pub order: Vec<HashDirKind>,
    /// `annex.tune.objecthash1`: one level of hash directories.
    pub one_level: bool,
}

/// The two hash directory schemes of git-annex.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HashDirKind {
    Lower,
    Mixed,
}

impl ObjectLayout {
    /// The layout of the repository whose git directory is `gitdir`, from its config
    /// (reference §3.1).
    pub fn for_repo(gitdir: &Path, bare: bool, cfg: &GitConfig) -> ObjectLayout {
        let lower_only = cfg.bool_or("annex.tune.objecthashlower", false);
        let crippled = cfg.bool_or("annex.crippledfilesystem", false) && !cfg.bool_or("core.symlinks", true);
        let order = if lower_only {
            vec![HashDirKind::Lower]
        } else if bare || crippled {
            vec![HashDirKind::Lower, HashDirKind::Mixed]
        } else {
            vec![HashDirKind::Mixed, HashDirKind::Lower]
        };
        ObjectLayout {
            objects_dir: gitdir.join("annex").join("objects"),
            order,
            one_level: cfg.bool_or("annex.tune.objecthash1", false),
        }
    }

    /// Every path where the object of `key` may be, in the order to try.
    pub fn candidates(&self, key: &super::Key) -> Vec<PathBuf> {
        use std::os::unix::ffi::OsStrExt;
        let kf = key.key_file();
        let kf = std::ffi::OsStr::from_bytes(&kf);
        self.order
            .iter()
            .map(|kind| {
                let h = match kind {
                    HashDirKind::Lower => key.hashdir_lower(self.one_level),
                    HashDirKind::Mixed => key.hashdir_mixed(self.one_level),
                };
                self.objects_dir.join(h).join(kf).join(kf)
            })
            .collect()
    }

    /// The first candidate that exists as a file.
    ///
    /// No symlink below the objects directory is followed: the hash directories, the key's
    /// directory and the object must be real directories and a regular file (a symlink planted
    /// there could otherwise make annexfs serve any file of the machine under a key's name).
    pub fn find(&self, key: &super::Key) -> Option<PathBuf> {
        self.candidates(key).into_iter().find(|p| self.no_symlink_below_objects(p))
    }

    fn no_symlink_below_objects(&self, p: &Path) -> bool {
        let Ok(rel) = p.strip_prefix(&self.objects_dir) else { return false };
        let mut at = self.objects_dir.clone();
        let n = rel.components().count();
        for (i, c) in rel.components().enumerate() {
            at.push(c);
            let Ok(md) = std::fs::symlink_metadata(&at) else { return false };
            let ok = if i + 1 == n { md.file_type().is_file() } else { md.file_type().is_dir() };
            if !ok {
                return false;
            }
        }
        true
    }
}

/// Resolves the git directory of a repository given by a path that may be its worktree, its
/// `.git` directory, a bare repository, or a worktree whose `.git` is a `gitdir:` file.
/// Returns `(gitdir, bare)`.
pub fn resolve_gitdir(path: &Path) -> Option<(PathBuf, bool)> {
    let dotgit = path.join(".git");
    if dotgit.is_dir() {
        return Some((dotgit, false));
    }
    if dotgit.is_file() {
        let text = std::fs::read_to_string(&dotgit).ok()?;
        let target = text.trim().strip_prefix("gitdir:")?.trim();
        let target = path.join(target);
        return Some((common_dir(&target), false));
    }
    if path.join("HEAD").is_file() && (path.join("objects").is_dir() || path.join("annex").is_dir()) {
        let cfg = GitConfig::from_file(&path.join("config"));
        // A `.git` directory given directly belongs to a non-bare repository.
        let bare = cfg.get_bool("core.bare").unwrap_or(true);
        return Some((path.to_path_buf(), bare));
    }
    None
}

/// Removes `.` and resolves `..` components lexically (remote paths like `../c` are shown
/// and compared as `/…/c`). Symlinks are not resolved.
pub fn clean_path(path: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    out.push("..");
                }
            }
            other => out.push(other),
        }
    }
    out
}

/// The common git directory of a linked worktree's git directory (`commondir` file).
fn common_dir(gitdir: &Path) -> PathBuf {
    match std::fs::read_to_string(gitdir.join("commondir")) {
        Ok(c) => gitdir.join(c.trim()),
        Err(_) => gitdir.to_path_buf(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn served_config_text() {
        let text = "# served\n[core]\n\tbare = false\n[annex]\n\tuuid = 1234-abcd\n\tversion = 10\n\turl = \"annex+http://h/git-annex/\"\n[remote \"Up\"]\n\turl = x\n";
        let c = GitConfig::from_text(text);
        assert_eq!(c.get("annex.uuid"), Some("1234-abcd"));
        assert_eq!(c.get_bool("core.bare"), Some(false));
        assert_eq!(c.get("annex.url"), Some("annex+http://h/git-annex/"));
        assert_eq!(c.get("remote.Up.url"), Some("x"));
        assert_eq!(GitConfig::from_text("[core]\nbare=true\n").get_bool("core.bare"), Some(true));
        assert_eq!(GitConfig::from_text("bare=true\n[core\n").get("core.bare"), None);
    }

    #[test]
    fn config_names() {
        let cfg = GitConfig::from_pairs([
            ("remote.my.dotted.name.annex-uuid", "u1"),
            ("Remote.Origin.URL", "/x"),
            ("annex.tune.objecthash1", "true"),
        ]);
        assert_eq!(cfg.remote_names(), vec!["Origin".to_string(), "my.dotted.name".to_string()]);
        assert_eq!(cfg.remote("my.dotted.name", "annex-uuid"), Some("u1"));
        assert_eq!(cfg.remote("Origin", "url"), Some("/x"));
        assert_eq!(cfg.get_bool("annex.tune.objecthash1"), Some(true));
    }

    #[test]
    fn layouts() {
        let key = super::super::Key::parse_str("SHA256E-s12--a948.txt").unwrap();
        let nonbare = ObjectLayout::for_repo(Path::new("/r/.git"), false, &GitConfig::default());
        let c = nonbare.candidates(&key);
        assert!(c[0].starts_with(format!("/r/.git/annex/objects/{}", key.hashdir_mixed(false))));
        assert!(c[1].starts_with(format!("/r/.git/annex/objects/{}", key.hashdir_lower(false))));
        let bare = ObjectLayout::for_repo(Path::new("/b"), true, &GitConfig::default());
        assert_eq!(bare.order, vec![HashDirKind::Lower, HashDirKind::Mixed]);
        let tuned = ObjectLayout::for_repo(
            Path::new("/r/.git"),
            false,
            &GitConfig::from_pairs([("annex.tune.objecthashlower", "true"), ("annex.tune.objecthash1", "true")]),
        );
        let c = tuned.candidates(&key);
        assert_eq!(c.len(), 1);
        assert!(c[0].ends_with(format!("{}SHA256E-s12--a948.txt/SHA256E-s12--a948.txt", key.hashdir_lower(true))));
    }
}
