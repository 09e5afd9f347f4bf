//! A process group that ends with spo-pipe, however spo-pipe ends.
//!
//! The group's leader is a watchdog: `sh` blocked reading a pipe whose only writer is this
//! process. When spo-pipe ends in any way ‒ normal exit, error, panic, a signal, `kill -9` ‒ the
//! kernel closes the writer, the read returns, and the watchdog kills its whole group: the
//! command and everything it started (pipelines, subshells, background jobs). On every path
//! through spo-pipe itself (success, failure, unwinding) [`ProcessGroup`]'s drop kills the
//! group and waits until no member is left, so nothing writes into a cell after it returns.
//! No `pre_exec` hook is used, so std spawns with `posix_spawn` and never copies a big heap.

use std::io::{self, PipeWriter};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The watchdog's script: wait for spo-pipe's end of the pipe to close, then kill the group.
const WATCHDOG: &str = "read -r _; kill -s KILL 0";

/// A process group led by a watchdog; members are started with [`ProcessGroup::spawn`].
pub struct ProcessGroup {
    watchdog: Child,
    pgid: i32,
    _alive: PipeWriter,
}

impl ProcessGroup {
    pub fn new() -> io::Result<ProcessGroup> {
        let (reader, writer) = io::pipe()?;
        let watchdog = Command::new("sh")
            .args(["-c", WATCHDOG])
            .stdin(reader)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()?;
        let pgid = i32::try_from(watchdog.id()).map_err(io::Error::other)?;
        Ok(ProcessGroup {
            watchdog,
            pgid,
            _alive: writer,
        })
    }

    /// Starts `cmd` in the group.
    pub fn spawn(&self, cmd: &mut Command) -> io::Result<Child> {
        cmd.process_group(self.pgid).spawn()
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        // SAFETY: killpg only sends a signal to the group this value owns.
        unsafe { libc::killpg(self.pgid, libc::SIGKILL) };
        let _ = self.watchdog.wait();
        wait_until_gone(self.pgid);
    }
}

/// Waits (up to ten seconds) until no live process is left in group `pgid`. Killed members
/// reparented to init may linger as zombies; those hold no files and are not waited for.
fn wait_until_gone(pgid: i32) {
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(10) {
        // SAFETY: signal 0 only checks whether the group exists.
        if unsafe { libc::kill(-pgid, 0) } != 0 || !has_live_member(pgid) {
            return;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    tracing::warn!("processes of group {pgid} are still running after SIGKILL");
}

/// Whether some non-zombie process is in group `pgid` (from `/proc/<pid>/stat`).
fn has_live_member(pgid: i32) -> bool {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return true;
    };
    dir.filter_map(Result::ok)
        .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
        .any(|stat| {
            // `pid (comm) state ppid pgrp ...`; comm may hold spaces and parentheses.
            let Some((_, rest)) = stat.rsplit_once(')') else {
                return false;
            };
            let mut f = rest.split_whitespace();
            let state = f.next();
            let group = f.nth(1).and_then(|g| g.parse::<i32>().ok());
            group == Some(pgid) && state != Some("Z") && state != Some("X")
        })
}
