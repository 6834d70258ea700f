//! Scratch directories of test processes, shared by every test crate of the workspace
//! (`engram-e2e` exports it; the CLI and binding tests include this file by path).
//!
//! A process writes under `engram-TAG-test-PID` in the temp dir and leaves it there: the test
//! harness has no hook after the last test, and a failed test's files are what one wants to
//! look at. The next run removes the directories of processes that have ended instead; before
//! that, every full run left about 3 GB of stores and models behind.

use std::path::{Path, PathBuf};
use std::sync::Once;

/// This process's scratch directory for `tag` (created), after removing, once per process,
/// those that test processes no longer running left behind.
pub fn scratch_dir(tag: &str) -> PathBuf {
    static SWEEP: Once = Once::new();
    let tmp = std::env::temp_dir();
    SWEEP.call_once(|| remove_ended(&tmp));
    let dir = tmp.join(format!("engram-{tag}-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir)
        .unwrap_or_else(|e| panic!("cannot create scratch dir {}: {e}", dir.display()));
    dir
}

/// The process id a scratch directory name ends with, when it is one of ours.
fn owner_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix("engram-")?;
    let (_, pid) = rest.rsplit_once("-test-")?;
    pid.parse().ok()
}

/// Removes the scratch directories of processes that have ended. Only where `/proc` tells
/// which processes run; elsewhere nothing is removed.
fn remove_ended(tmp: &Path) {
    let proc = Path::new("/proc");
    if !proc.join("self").exists() {
        return;
    }
    let Ok(entries) = std::fs::read_dir(tmp) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(owner_pid) else {
            continue;
        };
        let ended = pid != std::process::id() && !proc.join(pid.to_string()).exists();
        if ended && entry.path().is_dir() {
            // Best effort: another run may be removing the same directory.
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{owner_pid, remove_ended};

    #[test]
    fn only_our_scratch_names_have_an_owner() {
        assert_eq!(owner_pid("engram-cli-test-123"), Some(123));
        assert_eq!(owner_pid("engram-uniffi-py-test-9"), Some(9));
        assert_eq!(owner_pid("engram-cli-test-12x"), None);
        assert_eq!(owner_pid("other-cli-test-123"), None);
        assert_eq!(owner_pid("engram-facts-123"), None);
    }

    #[test]
    fn only_directories_of_ended_processes_are_removed() {
        if !std::path::Path::new("/proc/self").exists() {
            eprintln!("SKIPPED: no /proc here, so scratch directories are never removed");
            return;
        }
        let base = std::env::temp_dir().join(format!("engram-sweep-check-{}", std::process::id()));
        let ended = std::process::Command::new("true").spawn().unwrap();
        let ended_pid = ended.id();
        let mut ended = ended;
        ended.wait().unwrap();
        let dirs = [
            format!("engram-a-test-{ended_pid}"),
            format!("engram-a-test-{}", std::process::id()),
            "engram-a-test-1".to_string(),
            "engram-unrelated".to_string(),
        ];
        for d in &dirs {
            std::fs::create_dir_all(base.join(d).join("inner")).unwrap();
        }
        remove_ended(&base);
        let kept: Vec<bool> = dirs.iter().map(|d| base.join(d).exists()).collect();
        std::fs::remove_dir_all(&base).unwrap();
        assert_eq!(kept, [false, true, true, true], "{dirs:?}");
    }
}
