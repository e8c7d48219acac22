//! Stores: where the shards of a spread remote live. A store is a directory (any mounted
//! filesystem) or an S3 bucket with a prefix ([`super::s3`]); `stores=` lists them by spec.
//!
//! Every write goes to a temporary name first and becomes visible under its real name in one
//! step (a rename in a directory; a single PUT in S3, which shows the whole object or none), so
//! a reader never sees half a shard or half a manifest under its real name.
//!
//! A store that is not there (its directory missing, its endpoint refusing) is
//! [`StoreError::Unreachable`]; an object that is not in a reachable store is
//! [`StoreError::NotFound`]. The two are kept apart because "not here" and "cannot tell"
//! answer CHECKPRESENT and REMOVE differently.

use super::s3::S3Store;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// What went wrong with one store.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum StoreError {
    #[error("not found")]
    NotFound,
    #[error("unreachable: {0}")]
    Unreachable(String),
    #[error("{0}")]
    Io(String),
    #[error("short read: {got} of {want} bytes")]
    Short { got: u64, want: u64 },
}

impl StoreError {
    fn from_io(e: &std::io::Error) -> StoreError {
        if e.kind() == std::io::ErrorKind::NotFound { StoreError::NotFound } else { StoreError::Io(e.to_string()) }
    }
}

/// One store of a spread remote.
pub enum Store {
    Dir(DirStore),
    S3(Box<S3Store>),
}

/// A directory store.
pub struct DirStore {
    root: PathBuf,
}

/// Parses one entry of `stores=`: an absolute directory path or `s3://BUCKET[/PREFIX][?…]`.
pub fn parse_spec(spec: &str) -> Result<Store, String> {
    if spec.starts_with("s3://") {
        return S3Store::parse(spec).map(|s| Store::S3(Box::new(s)));
    }
    let p = Path::new(spec);
    if !p.is_absolute() {
        return Err(format!("store {spec:?} is neither an absolute directory path nor s3://BUCKET/PREFIX"));
    }
    Ok(Store::Dir(DirStore { root: p.to_path_buf() }))
}

impl Store {
    /// Whether the store can be written: a probe object written and removed.
    pub async fn probe(&self) -> Result<(), StoreError> {
        let name = format!("annexfs-probe-{}", std::process::id());
        self.put(&name, b"probe".to_vec()).await?;
        self.delete(&name).await
    }

    /// The whole (small) object `name`, refused when larger than `limit`.
    pub async fn get_all(&self, name: &str, limit: u64) -> Result<Vec<u8>, StoreError> {
        match self {
            Store::Dir(d) => {
                let path = d.path(name)?;
                blocking(move || {
                    let f = std::fs::File::open(&path).map_err(|e| StoreError::from_io(&e))?;
                    let mut out = Vec::new();
                    f.take(limit + 1).read_to_end(&mut out).map_err(|e| StoreError::from_io(&e))?;
                    if out.len() as u64 > limit {
                        return Err(StoreError::Io(format!("larger than {limit} bytes")));
                    }
                    Ok(out)
                })
                .await
            }
            Store::S3(s) => s.get_all(name, limit).await,
        }
    }

    /// Exactly `len` bytes of `name` at `offset`.
    pub async fn read(&self, name: &str, offset: u64, len: u64) -> Result<Vec<u8>, StoreError> {
        match self {
            Store::Dir(d) => {
                let path = d.path(name)?;
                blocking(move || {
                    let mut f = std::fs::File::open(&path).map_err(|e| StoreError::from_io(&e))?;
                    f.seek(SeekFrom::Start(offset)).map_err(|e| StoreError::from_io(&e))?;
                    let mut out = Vec::with_capacity(super::layout::to_usize(len));
                    f.take(len).read_to_end(&mut out).map_err(|e| StoreError::from_io(&e))?;
                    if out.len() as u64 != len {
                        return Err(StoreError::Short { got: out.len() as u64, want: len });
                    }
                    Ok(out)
                })
                .await
            }
            Store::S3(s) => s.read(name, offset, len).await,
        }
    }

    /// The size of `name`.
    pub async fn size(&self, name: &str) -> Result<u64, StoreError> {
        match self {
            Store::Dir(d) => {
                let path = d.path(name)?;
                blocking(move || std::fs::metadata(&path).map(|m| m.len()).map_err(|e| StoreError::from_io(&e))).await
            }
            Store::S3(s) => s.size(name).await,
        }
    }

    /// Writes the small object `name` whole (temporary name, then rename).
    pub async fn put(&self, name: &str, bytes: Vec<u8>) -> Result<(), StoreError> {
        match self {
            Store::Dir(_) => {
                let mut w = self.writer(name)?;
                w.write(&bytes)?;
                self.commit(w).await
            }
            Store::S3(s) => s.put(name, bytes).await,
        }
    }

    /// The names of every object of the store whose name ends with `suffix` (a directory
    /// store: three levels deep, the layout of a key's objects).
    pub async fn list(&self, suffix: &str) -> Result<Vec<String>, StoreError> {
        match self {
            Store::Dir(d) => {
                let root = d.path("")?;
                let suffix = suffix.to_string();
                blocking(move || Ok(list_dir(&root, &suffix))).await
            }
            Store::S3(s) => s.list(suffix).await,
        }
    }

    /// Removes `name`; a missing object is not an error.
    pub async fn delete(&self, name: &str) -> Result<(), StoreError> {
        let r = match self {
            Store::Dir(d) => {
                let path = d.path(name)?;
                blocking(move || std::fs::remove_file(&path).map_err(|e| StoreError::from_io(&e))).await
            }
            Store::S3(s) => s.delete(name).await,
        };
        match r {
            Err(StoreError::NotFound) => Ok(()),
            r => r,
        }
    }

    /// A writer for `name`: bytes go to a temporary file (in the directory itself, or local for
    /// S3) until [`Store::commit`].
    pub fn writer(&self, name: &str) -> Result<ShardWriter, StoreError> {
        let io = |e: std::io::Error| StoreError::Io(e.to_string());
        let (final_path, file) = match self {
            Store::Dir(d) => {
                let path = d.path(name)?;
                let parent = path.parent().ok_or_else(|| StoreError::Io("no parent".into()))?;
                std::fs::create_dir_all(parent).map_err(io)?;
                let file = tempfile::Builder::new().prefix(".annexfs-tmp-").tempfile_in(parent).map_err(io)?;
                (Some(path), file)
            }
            Store::S3(_) => (None, tempfile::NamedTempFile::new().map_err(io)?),
        };
        Ok(ShardWriter { name: name.to_string(), final_path, file: std::io::BufWriter::new(file), len: 0 })
    }

    /// Makes a writer's bytes visible under its name (flushed to disk first).
    pub async fn commit(&self, w: ShardWriter) -> Result<(), StoreError> {
        let io = |e: std::io::Error| StoreError::Io(e.to_string());
        let file = w.file.into_inner().map_err(|e| io(e.into_error()))?;
        match (self, w.final_path) {
            (Store::Dir(_), Some(path)) => {
                blocking(move || {
                    file.as_file().sync_all().map_err(io)?;
                    file.persist(&path).map_err(|e| io(e.error))?;
                    Ok(())
                })
                .await
            }
            (Store::S3(s), _) => s.put_file(&w.name, file, w.len).await,
            (Store::Dir(_), None) => Err(StoreError::Io("writer of another store".into())),
        }
    }
}

/// A shard or manifest being written.
pub struct ShardWriter {
    name: String,
    final_path: Option<PathBuf>,
    file: std::io::BufWriter<tempfile::NamedTempFile>,
    len: u64,
}

impl ShardWriter {
    pub fn write(&mut self, bytes: &[u8]) -> Result<(), StoreError> {
        self.file.write_all(bytes).map_err(|e| StoreError::Io(e.to_string()))?;
        self.len += bytes.len() as u64;
        Ok(())
    }
}

impl DirStore {
    /// `name` below the root; the root itself must exist (a missing root is a store that is
    /// not mounted, never silently recreated).
    fn path(&self, name: &str) -> Result<PathBuf, StoreError> {
        if !self.root.is_dir() {
            return Err(StoreError::Unreachable(format!("{} is not a directory", self.root.display())));
        }
        Ok(self.root.join(name))
    }
}

/// `A/B/KEYDIR/NAME` below `root` whose `A/B/KEYDIR/NAME` ends with `suffix`.
fn list_dir(root: &Path, suffix: &str) -> Vec<String> {
    let level = |p: &Path| -> Vec<PathBuf> {
        std::fs::read_dir(p).map(|d| d.flatten().map(|e| e.path()).filter(|p| p.is_dir()).collect()).unwrap_or_default()
    };
    let mut out = Vec::new();
    for a in level(root) {
        for b in level(&a) {
            for k in level(&b) {
                for f in std::fs::read_dir(&k).into_iter().flatten().flatten() {
                    let Ok(rel) = f.path().strip_prefix(root).map(|r| r.to_string_lossy().into_owned()) else {
                        continue;
                    };
                    if rel.ends_with(suffix) {
                        out.push(rel);
                    }
                }
            }
        }
    }
    out
}

/// Runs blocking file work off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| StoreError::Io(e.to_string()))?
}
