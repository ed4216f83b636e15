//! Where a backfill keeps its checkpoint and holds its lock: `STATE_TOPIC`
//! (next to the stream, the default), or a file (`BACKFILL_STATE_FILE`) for
//! a backfill that has no Kafka to reach, such as one reading PostHog
//! Cloud's query API.
//!
//! The file is a JSON object of checkpoints by key, replaced whole at every
//! write (written beside it, synced, renamed over it), so a kill leaves the
//! old checkpoint or the new one, never half of one. Its lock is an advisory
//! `flock` on `<file>.lock`, which the kernel releases when the process
//! dies, SIGKILL included.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;
use tracing::info;

use super::checkpoint::Checkpoint;
use crate::kafka::state::{Lock, StateTopic};
use crate::ops::shutdown::pause;

pub enum Store {
    Topic(StateTopic),
    File(PathBuf),
}

/// A held lock: while it lives, no other backfill of the same key runs.
pub enum Held {
    Topic(Lock),
    File(#[allow(dead_code)] File),
}

impl Held {
    /// False once the lock is lost (only a Kafka lock can be).
    pub fn check(&self) -> bool {
        match self {
            Held::Topic(lock) => lock.check(),
            Held::File(_) => true,
        }
    }
}

/// A write was cancelled (shutdown).
#[derive(Debug)]
pub struct Cancelled;

impl Store {
    pub fn describe(&self) -> String {
        match self {
            Store::Topic(t) => format!("STATE_TOPIC {}", t.topic()),
            Store::File(path) => format!("BACKFILL_STATE_FILE {}", path.display()),
        }
    }

    pub async fn lock(&self, name: &str, cancel: &CancellationToken) -> anyhow::Result<Held> {
        match self {
            Store::Topic(t) => t.lock(name, cancel).await.map(Held::Topic),
            Store::File(path) => file_lock(path, cancel).await.map(Held::File),
        }
    }

    pub fn get(&self, key: &str) -> anyhow::Result<Option<Checkpoint>> {
        let value = match self {
            Store::Topic(t) => tokio::task::block_in_place(|| t.read_prefix(key))?.remove(key),
            Store::File(path) => read_file(path)?
                .remove(key)
                .map(|v| serde_json::to_vec(&v).expect("JSON values serialize")),
        };
        match value {
            None => Ok(None),
            Some(value) => serde_json::from_slice(&value).map(Some).with_context(|| {
                format!(
                    "the checkpoint {key} in {} is not readable",
                    self.describe()
                )
            }),
        }
    }

    pub async fn put(
        &self,
        key: &str,
        checkpoint: &Checkpoint,
        cancel: &CancellationToken,
    ) -> Result<(), Cancelled> {
        match self {
            Store::Topic(t) => t.put(key, checkpoint, cancel).await.map_err(|_| Cancelled),
            Store::File(path) => {
                let mut attempt = 0u32;
                loop {
                    match write_file(path, key, checkpoint) {
                        Ok(()) => return Ok(()),
                        Err(e) => {
                            if crate::ops::log_limit::worth_logging(attempt.into()) {
                                tracing::warn!(file = %path.display(), error = %format!("{e:#}"), "writing the checkpoint file failed; retrying");
                            }
                            pause(Duration::from_secs(1), cancel)
                                .await
                                .map_err(|_| Cancelled)?;
                            attempt = attempt.saturating_add(1);
                        }
                    }
                }
            }
        }
    }
}

fn read_file(path: &Path) -> anyhow::Result<BTreeMap<String, serde_json::Value>> {
    match std::fs::read(path) {
        Ok(bytes) if bytes.is_empty() => Ok(BTreeMap::new()),
        Ok(bytes) => serde_json::from_slice(&bytes).with_context(|| {
            format!(
                "BACKFILL_STATE_FILE {} is not a checkpoint file (a JSON object)",
                path.display()
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
        Err(e) => {
            Err(e).with_context(|| format!("cannot read BACKFILL_STATE_FILE {}", path.display()))
        }
    }
}

fn write_file(path: &Path, key: &str, checkpoint: &Checkpoint) -> anyhow::Result<()> {
    let mut all = read_file(path)?;
    all.insert(key.to_owned(), serde_json::to_value(checkpoint)?);
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(".tmp");
    let temporary = PathBuf::from(temporary);
    let mut file = File::create(&temporary)
        .with_context(|| format!("cannot write {}", temporary.display()))?;
    file.write_all(&serde_json::to_vec_pretty(&all)?)?;
    file.sync_all()?;
    std::fs::rename(&temporary, path)
        .with_context(|| format!("cannot replace {}", path.display()))?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        // The rename itself is durable once the directory is synced.
        if let Ok(dir) = File::open(dir) {
            let _ = dir.sync_all();
        }
    }
    Ok(())
}

async fn file_lock(path: &Path, cancel: &CancellationToken) -> anyhow::Result<File> {
    let mut name = path.as_os_str().to_owned();
    name.push(".lock");
    let lock_path = PathBuf::from(name);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .with_context(|| {
            format!(
                "cannot open {} (BACKFILL_STATE_FILE's lock)",
                lock_path.display()
            )
        })?;
    let mut told = false;
    loop {
        match try_lock(&file) {
            Ok(true) => return Ok(file),
            Ok(false) => {
                if !told {
                    info!(lock = %lock_path.display(), "another backfill uses this BACKFILL_STATE_FILE (each running backfill needs its own file); waiting for it to end");
                    told = true;
                }
                pause(Duration::from_millis(500), cancel)
                    .await
                    .map_err(|_| anyhow::anyhow!("interrupted while waiting for the lock"))?;
            }
            Err(e) => {
                return Err(e).with_context(|| format!("cannot lock {}", lock_path.display()))
            }
        }
    }
}

/// An exclusive `flock` without waiting: Ok(false) when another holds it.
fn try_lock(file: &File) -> std::io::Result<bool> {
    fs4::fs_std::FileExt::try_lock_exclusive(file)
}

#[cfg(test)]
mod tests {
    use super::super::checkpoint::Totals;
    use super::*;

    fn checkpoint(n: i64) -> Checkpoint {
        Checkpoint {
            team_id: n,
            until_ms: n,
            overlap_from_ms: n,
            from_us: None,
            cursor: None,
            complete: false,
            totals: Totals::default(),
            source: "api".into(),
            follow: true,
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_file_keeps_each_key_and_its_latest_checkpoint() {
        let dir = std::env::temp_dir().join(format!("pc-store-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let store = Store::File(dir.join("state.json"));
        let cancel = CancellationToken::new();
        assert_eq!(store.get("a").unwrap(), None);
        store.put("a", &checkpoint(1), &cancel).await.unwrap();
        store.put("b", &checkpoint(2), &cancel).await.unwrap();
        store.put("a", &checkpoint(3), &cancel).await.unwrap();
        assert_eq!(store.get("a").unwrap(), Some(checkpoint(3)));
        assert_eq!(store.get("b").unwrap(), Some(checkpoint(2)));
        std::fs::write(dir.join("bad.json"), b"not json").unwrap();
        let bad = Store::File(dir.join("bad.json")).get("a").unwrap_err();
        assert!(
            format!("{bad:#}").contains("BACKFILL_STATE_FILE"),
            "{bad:#}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_second_holder_of_the_file_lock_waits() {
        let dir = std::env::temp_dir().join(format!("pc-lock-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let store = Store::File(dir.join("state.json"));
        let cancel = CancellationToken::new();
        let first = store.lock("x", &cancel).await.unwrap();
        let waiting = CancellationToken::new();
        let second = {
            let waiting = waiting.clone();
            let path = dir.join("state.json");
            tokio::spawn(async move { Store::File(path).lock("x", &waiting).await.is_ok() })
        };
        tokio::time::sleep(Duration::from_millis(700)).await;
        assert!(!second.is_finished(), "the second took a held lock");
        drop(first);
        assert!(
            second.await.unwrap(),
            "the second got the lock once released"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
