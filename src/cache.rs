//! The on-disk cache of what is slow to compute and fixed by the weights: ROME/MEMIT's
//! key statistics, MEMIT's optimised values, the unedited model's health baseline.
//! Files are named by a fingerprint of the weights ([`crate::model::ParamStore::fingerprint`])
//! and of their other inputs, so a changed model never reads a stale entry.

use std::path::{Path, PathBuf};

use tch::Tensor;

use crate::error::{Error, Result};

/// `$FTEDIT_CACHE`, else `$XDG_CACHE_HOME/ftedit`, else `~/.cache/ftedit`.
pub fn dir() -> PathBuf {
    if let Some(d) = std::env::var_os("FTEDIT_CACHE") {
        return PathBuf::from(d);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("ftedit")
}

/// Writes a cache file whole or not at all (creating its folder): `write` fills a
/// per-process temporary file, which is then renamed, so runs sharing the cache
/// (`--shard`, sweeps) may write at once.
fn write_whole(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let dir = path.parent().expect("a file in a folder");
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    write(&tmp)?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

/// Writes `tensors` to the cache file `path` (safetensors).
pub fn write_tensors(path: &Path, tensors: &[(&str, &Tensor)]) -> Result<()> {
    write_whole(path, |tmp| Ok(Tensor::write_safetensors(tensors, tmp)?))
}

/// Writes `text` to the cache file `path`.
pub fn write_text(path: &Path, text: &str) -> Result<()> {
    write_whole(path, |tmp| {
        std::fs::write(tmp, text).map_err(|e| Error::io(tmp, e))
    })
}
