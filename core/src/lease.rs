//! Leases: the per-key guard that still holds where OS file locks do not reach ‒ two machines
//! sharing a store over NFS (docs/architecture.md, "Locks on a shared file system").
//!
//! A key's lease is the file `runs/locks/<key>.lease`, naming its holder (host, boot id, pid)
//! and a random token. It is created whole and exclusively (written to a private file, then
//! `link`ed into place: `link` fails if the name exists, on every NFS version, and a lost reply
//! is recognised by the private file's link count). While it holds the lease, a thread of the
//! holder touches the file every `stale / 5` (checking, through the same open file, that the
//! lease is still its own). Another process finding the lease:
//!
//! * on the same machine (same host name and boot id) and another process: it already holds the
//!   key's OS lock, which that holder would still hold if it or any process it started were
//!   alive, so the lease is a dead process's and is taken over at once (another thread of the
//!   same process is alive, and is waited for like another machine);
//! * from another machine: it watches the file's mtime through its own monotonic clock (no clock
//!   is compared across machines) and takes the lease over only when the mtime has not changed
//!   for `stale` (default 60 s; `SPO_PIPE_LEASE_SECS`).
//!
//! A takeover renames the lease aside and reads what it moved: only if that is the stale
//! holder's token is it dropped; a fresh lease moved by mistake is linked back. A holder whose
//! lease was taken over (it stalled past `stale`) learns it from its heartbeat or at the latest
//! when it commits: [`Lease::check`] refuses, so it never commits over the new holder.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::error::Error;

/// Who holds a lease.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Holder {
    pub host: String,
    /// The kernel's boot id: a pid names the same process only within one boot.
    pub boot: String,
    pub pid: u32,
    pub token: String,
    /// Unix seconds when the lease was taken.
    pub since: f64,
}

impl Holder {
    fn me() -> Holder {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let (host, boot) = identity();
        Holder {
            host,
            boot,
            pid: std::process::id(),
            token: format!("{}-{}-{n}", now.as_nanos(), std::process::id()),
            since: now.as_secs_f64(),
        }
    }

    fn same_machine(&self, other: &Holder) -> bool {
        self.host == other.host && self.boot == other.boot
    }
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} pid {}", self.host, self.pid)
    }
}

/// This machine: its host name and boot id (`SPO_PIPE_HOST_ID` replaces both, so tests can play
/// two machines on one).
fn identity() -> (String, String) {
    if let Ok(id) = std::env::var("SPO_PIPE_HOST_ID") {
        return (id.clone(), id);
    }
    let host = fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into());
    let boot = fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default();
    (host, boot)
}

/// How long a lease may go without a heartbeat before another machine takes it over.
pub(crate) fn stale_after() -> Duration {
    std::env::var("SPO_PIPE_LEASE_SECS")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s > 0.0)
        .map_or(Duration::from_secs(60), Duration::from_secs_f64)
}

/// Whether a lease at `path` may belong to a live computation, for housekeeping that holds the
/// key's OS lock (sweeping staging directories, `gc`): one of this machine is not (the OS lock
/// says so); one of another machine is, unless its mtime is older than ten times the stale
/// period by this machine's clock (a crashed machine's leftover; the margin absorbs clock skew).
pub(crate) fn busy(path: &Path) -> bool {
    let Ok(Some((holder, mtime))) = read(path) else {
        return false;
    };
    let (host, boot) = identity();
    if holder.is_some_and(|h| h.host == host && h.boot == boot) {
        return false;
    }
    SystemTime::now()
        .duration_since(mtime)
        .map_or(true, |age| age < stale_after() * 10)
}

/// A held lease; released (its file removed, if still its own) when dropped.
#[derive(Debug)]
pub struct Lease {
    path: PathBuf,
    me: Holder,
    lost: Arc<AtomicBool>,
    stop: Arc<(Mutex<bool>, Condvar)>,
    beat: Option<JoinHandle<()>>,
}

/// What is at a lease's path: its holder (`None` if it cannot be parsed) and its mtime.
fn read(path: &Path) -> io::Result<Option<(Option<Holder>, SystemTime)>> {
    match File::open(path) {
        Ok(mut f) => {
            // Through an open file: on NFS, opening revalidates the cached attributes.
            let mtime = f.metadata()?.modified()?;
            let mut s = String::new();
            f.read_to_string(&mut s)?;
            Ok(Some((serde_json::from_str(&s).ok(), mtime)))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Creates `path` holding `me`, whole, only if nothing is there: `Ok(false)` if something is.
fn create(path: &Path, me: &Holder) -> io::Result<bool> {
    let tmp = path.with_extension(format!("lease.new.{}", me.token));
    let json = serde_json::to_vec(me).map_err(io::Error::other)?;
    {
        let mut f = File::create(&tmp)?;
        // Not fsynced: after a crash of this machine its leases are a dead machine's anyway.
        f.write_all(&json)?;
    }
    let r = match fs::hard_link(&tmp, path) {
        Ok(()) => Ok(true),
        // NFS: a retransmitted LINK whose first reply was lost answers EEXIST although it
        // worked; the private file's link count tells.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            Ok(fs::metadata(&tmp).is_ok_and(|m| m.nlink() == 2))
        }
        Err(e) => Err(e),
    };
    let _ = fs::remove_file(&tmp);
    r
}

/// Moves the lease at `path` aside if it is `token`'s (`None`: an unparsable one) and drops
/// it; puts back whatever else it moved. Returns whether it dropped `token`'s lease.
fn take_aside(path: &Path, token: Option<&str>, mine: &str) -> io::Result<bool> {
    let aside = path.with_extension(format!("lease.old.{mine}"));
    match fs::rename(path, &aside) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    }
    let moved = read(&aside)?.and_then(|(h, _)| h);
    let was = moved.as_ref().map(|h| h.token.as_str());
    if was == token {
        fs::remove_file(&aside)?;
        return Ok(true);
    }
    // Not the lease we meant (a fresh one): back into place unless a newer one is there now,
    // in which case the holder we moved finds its lease gone and refuses to commit.
    match fs::hard_link(&aside, path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    fs::remove_file(&aside)?;
    Ok(false)
}

impl Lease {
    /// Takes the lease at `path` (the caller holds the key's OS lock), waiting while another
    /// machine's holder is alive; `on_wait` is called once, with that holder, if it waits.
    pub fn acquire(path: &Path, on_wait: &mut dyn FnMut(&Holder)) -> Result<Lease, Error> {
        Lease::acquire_as(path, Holder::me(), stale_after(), on_wait)
    }

    fn acquire_as(
        path: &Path,
        me: Holder,
        stale: Duration,
        on_wait: &mut dyn FnMut(&Holder),
    ) -> Result<Lease, Error> {
        let poll = (stale / 50).clamp(Duration::from_millis(10), Duration::from_secs(1));
        let err = |e: io::Error| Error::io(path, e);
        // The holder and mtime last seen, and since when (this process's clock) they are so.
        let mut seen: Option<(Option<String>, SystemTime, Instant)> = None;
        let mut waited = false;
        loop {
            if create(path, &me).map_err(err)? {
                return Ok(Lease::start(path.to_owned(), me, stale));
            }
            let Some((holder, mtime)) = read(path).map_err(err)? else {
                continue; // released meanwhile
            };
            let token = holder.as_ref().map(|h| h.token.clone());
            let dead = match &holder {
                // Another thread of this process (two nodes of one key): alive, and on NFS its
                // OS lock does not exclude this thread (the emulated flock is a POSIX lock,
                // owned by the process), so it is waited for like a live machine.
                Some(h) if h.same_machine(&me) && h.pid == me.pid => false,
                Some(h) if h.same_machine(&me) => true,
                _ => match &seen {
                    Some((t, m, since)) if *t == token && *m == mtime => since.elapsed() >= stale,
                    _ => {
                        seen = Some((token.clone(), mtime, Instant::now()));
                        false
                    }
                },
            };
            if dead {
                if take_aside(path, token.as_deref(), &me.token).map_err(err)? {
                    let who =
                        holder.map_or_else(|| "an unreadable lease".into(), |h| h.to_string());
                    tracing::warn!(
                        "{}: took over the lease of {who} (no heartbeat for {:.0} s, or its process on this machine is gone)",
                        path.display(),
                        stale.as_secs_f64()
                    );
                }
                seen = None;
                continue;
            }
            if !waited {
                waited = true;
                if let Some(h) = &holder {
                    on_wait(h);
                }
            }
            std::thread::sleep(poll);
        }
    }

    fn start(path: PathBuf, me: Holder, stale: Duration) -> Lease {
        let lost = Arc::new(AtomicBool::new(false));
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let beat = {
            let (path, token, lost, stop) = (
                path.clone(),
                me.token.clone(),
                Arc::clone(&lost),
                Arc::clone(&stop),
            );
            std::thread::Builder::new()
                .name("spo-lease".into())
                .spawn(move || heartbeat(&path, &token, &lost, &stop, stale / 5))
                .ok()
        };
        Lease {
            path,
            me,
            lost,
            stop,
            beat,
        }
    }

    /// Whether this process still holds the lease (read from the file now).
    pub fn check(&self) -> Result<(), Error> {
        let current = read(&self.path)
            .map_err(|e| Error::io(&self.path, e))?
            .and_then(|(h, _)| h);
        match current {
            Some(h) if h.token == self.me.token && !self.lost.load(Ordering::Relaxed) => Ok(()),
            other => Err(Error::LeaseLost {
                path: self.path.clone(),
                holder: other.map_or_else(|| "nobody".into(), |h| h.to_string()),
            }),
        }
    }
}

fn heartbeat(
    path: &Path,
    token: &str,
    lost: &AtomicBool,
    stop: &(Mutex<bool>, Condvar),
    every: Duration,
) {
    let (m, cv) = stop;
    let mut stopped = m.lock().unwrap_or_else(|p| p.into_inner());
    loop {
        // Checks the flag before sleeping, so a stop signalled before this thread first waits
        // is not missed (a release would otherwise wait out one whole beat).
        let (g, _) = cv
            .wait_timeout_while(stopped, every, |stop| !*stop)
            .unwrap_or_else(|p| p.into_inner());
        stopped = g;
        if *stopped {
            return;
        }
        // Through one open file: the lease checked is the lease touched.
        let touched = (|| -> io::Result<bool> {
            let mut f = fs::OpenOptions::new().read(true).write(true).open(path)?;
            let mut s = String::new();
            f.read_to_string(&mut s)?;
            let ours = serde_json::from_str::<Holder>(&s).is_ok_and(|h| h.token == token);
            if ours {
                f.set_modified(SystemTime::now())?;
            }
            Ok(ours)
        })();
        match touched {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!(
                    "{}: this process's lease was taken over; the cell will not be committed",
                    path.display()
                );
                lost.store(true, Ordering::Relaxed);
                return;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                tracing::warn!(
                    "{}: this process's lease is gone; the cell will not be committed",
                    path.display()
                );
                lost.store(true, Ordering::Relaxed);
                return;
            }
            // Another I/O error (an NFS hiccup): try again at the next beat.
            Err(e) => tracing::warn!("{}: heartbeat failed: {e}", path.display()),
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        {
            let (m, cv) = &*self.stop;
            *m.lock().unwrap_or_else(|p| p.into_inner()) = true;
            cv.notify_all();
        }
        if let Some(t) = self.beat.take() {
            let _ = t.join();
        }
        let _ = take_aside(&self.path, Some(&self.me.token), &self.me.token);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn holder(host: &str, token: &str) -> Holder {
        Holder {
            host: host.into(),
            boot: host.into(),
            pid: 1,
            token: token.into(),
            since: 0.0,
        }
    }

    #[test]
    fn a_lease_is_exclusive_and_released_on_drop() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("k.lease");
        let a = Lease::acquire(&p, &mut |_| {}).unwrap();
        a.check().unwrap();
        assert!(
            !create(&p, &holder("x", "t")).unwrap(),
            "a second create must fail"
        );
        drop(a);
        assert!(!p.exists());
        assert_eq!(
            fs::read_dir(d.path()).unwrap().count(),
            0,
            "no temp file left"
        );
    }

    #[test]
    fn take_aside_drops_only_the_named_lease() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("k.lease");
        assert!(create(&p, &holder("x", "fresh")).unwrap());
        assert!(!take_aside(&p, Some("stale"), "me").unwrap());
        assert_eq!(
            read(&p).unwrap().unwrap().0.unwrap().token,
            "fresh",
            "put back"
        );
        assert!(take_aside(&p, Some("fresh"), "me").unwrap());
        assert!(!p.exists());
        assert_eq!(fs::read_dir(d.path()).unwrap().count(), 0);
    }

    #[test]
    fn a_lease_of_this_machine_whose_process_is_gone_is_taken_at_once() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("k.lease");
        let mut dead = Holder::me();
        dead.token = "dead".into();
        dead.pid = dead.pid.wrapping_add(1_000_000); // another process of this machine
        assert!(create(&p, &dead).unwrap());
        let mut waited = false;
        let l = Lease::acquire(&p, &mut |_| waited = true).unwrap();
        assert!(!waited);
        l.check().unwrap();
    }

    /// Two threads of one process (two nodes with one key) are both alive: the second waits.
    #[test]
    fn another_thread_of_this_process_is_waited_for() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("k.lease");
        let first = Lease::acquire(&p, &mut |_| {}).unwrap();
        let released = AtomicBool::new(false);
        std::thread::scope(|s| {
            s.spawn(|| {
                std::thread::sleep(Duration::from_millis(300));
                released.store(true, Ordering::SeqCst);
                drop(first);
            });
            let mut waited = false;
            let second = Lease::acquire(&p, &mut |_| waited = true).unwrap();
            assert!(waited && released.load(Ordering::SeqCst));
            second.check().unwrap();
        });
    }

    /// Two "machines" (identities) reach one lease through two paths (a symlinked directory):
    /// never both inside; the one that waits says whom it waits for.
    #[test]
    fn two_machines_through_two_paths_never_hold_one_lease_together() {
        let d = tempfile::tempdir().unwrap();
        let real = d.path().join("real");
        fs::create_dir(&real).unwrap();
        let alias = d.path().join("alias");
        std::os::unix::fs::symlink(&real, &alias).unwrap();
        let inside = AtomicU64::new(0);
        let entries = AtomicU64::new(0);
        std::thread::scope(|s| {
            for (host, dir) in [("node-a", &real), ("node-b", &alias)] {
                let (inside, entries) = (&inside, &entries);
                s.spawn(move || {
                    for _ in 0..25 {
                        let me = Holder {
                            host: host.into(),
                            ..Holder::me()
                        };
                        let l = Lease::acquire_as(
                            &dir.join("k.lease"),
                            me,
                            Duration::from_secs(2),
                            &mut |h| assert_ne!(h.host, host),
                        )
                        .unwrap();
                        assert_eq!(inside.fetch_add(1, Ordering::SeqCst), 0, "two holders");
                        std::thread::sleep(Duration::from_millis(2));
                        l.check().unwrap();
                        inside.fetch_sub(1, Ordering::SeqCst);
                        entries.fetch_add(1, Ordering::SeqCst);
                        drop(l);
                    }
                });
            }
        });
        assert_eq!(entries.load(Ordering::SeqCst), 50);
        assert_eq!(
            fs::read_dir(&real).unwrap().count(),
            0,
            "nothing left behind"
        );
    }

    /// Another machine's lease that stops beating is taken over once it has not changed for
    /// `stale`; its old holder then fails `check` (it would not commit).
    #[test]
    fn a_silent_lease_of_another_machine_is_taken_over_and_its_holder_told() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("k.lease");
        let other = Holder {
            host: "node-b".into(),
            boot: "b".into(),
            ..Holder::me()
        };
        // Held by node-b with a heartbeat far slower than the taker's patience: silent.
        let old = Lease::start(p.clone(), other, Duration::from_secs(3600));
        assert!(create(&p, &old.me).is_ok());
        let mut waited_for = None;
        let new = Lease::acquire_as(&p, Holder::me(), Duration::from_millis(300), &mut |h| {
            waited_for = Some(h.host.clone())
        })
        .unwrap();
        assert_eq!(waited_for.as_deref(), Some("node-b"));
        new.check().unwrap();
        let e = old.check().unwrap_err().to_string();
        assert!(e.contains("lease") && e.contains(&new.me.host), "{e}");
        drop(old); // must not remove the new holder's lease
        new.check().unwrap();
    }

    /// A live lease of another machine (beating) is waited for, however long, and taken when
    /// released.
    #[test]
    fn a_beating_lease_is_never_taken_over() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("k.lease");
        let other = Holder {
            host: "node-b".into(),
            boot: "b".into(),
            ..Holder::me()
        };
        assert!(create(&p, &other).unwrap());
        // Beats every 20 ms; the taker's patience is 1 s; held for 2 s.
        let held = Lease::start(p.clone(), other, Duration::from_millis(100));
        let released = AtomicBool::new(false);
        std::thread::scope(|s| {
            s.spawn(|| {
                std::thread::sleep(Duration::from_secs(2));
                held.check().unwrap();
                released.store(true, Ordering::SeqCst);
                drop(held);
            });
            let l =
                Lease::acquire_as(&p, Holder::me(), Duration::from_secs(1), &mut |_| {}).unwrap();
            assert!(
                released.load(Ordering::SeqCst),
                "taken while its holder beat"
            );
            l.check().unwrap();
        });
    }
}
