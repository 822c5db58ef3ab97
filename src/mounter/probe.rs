//! Calls that may hang on a FUSE server (statfs, a listing of the root), run
//! off the caller's thread on one small pool shared by every mount.
//!
//! Each mount has a `Prober` per kind of call: at most one call of that
//! kind is queued or running for the mount at any time (a caller that comes
//! while one is in flight joins it), so a hung server holds at most one
//! thread per mount. The pool keeps `POOL_THREADS` threads that answer
//! promptly; a thread whose call has run for longer than `SLOW` no longer
//! counts, and a new one takes its place when work is waiting. When the slow
//! call returns (the heal aborts a hung connection), its thread ends if the
//! pool is full again. Threads: POOL_THREADS, plus one per mount whose call
//! is slow right now; never one per staged volume.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use crate::sys::mount;

/// Threads that answer promptly.
pub(super) const POOL_THREADS: usize = 4;
/// A call running for longer than this no longer holds one of them.
const SLOW: Duration = Duration::from_secs(1);
/// How often a waiting caller looks again whether the pool must grow.
const RECHECK: Duration = Duration::from_millis(250);

/// What a call found: statfs gives the filesystem's figures.
pub(super) type Outcome = std::result::Result<Option<mount::FsStats>, String>;
pub(super) type Work = fn(&Path) -> Outcome;

#[derive(Default)]
struct Slot {
    /// Sequence of the last call asked for, and of the last one answered.
    requested: u64,
    done: u64,
    /// When the call in flight began on a pool thread (None: queued or none).
    running_since: Option<Instant>,
    result: Option<Outcome>,
}

impl Slot {
    fn in_flight(&self) -> bool {
        self.done < self.requested
    }
}

struct Shared {
    slot: Mutex<Slot>,
    cv: Condvar,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One kind of call on one mount.
pub(super) struct Prober {
    path: PathBuf,
    work: Work,
    shared: Arc<Shared>,
}

pub(super) enum Answer {
    Done(Outcome),
    /// Not answered after this long (queued time included).
    Pending(Duration),
}

impl Prober {
    pub(super) fn new(path: &Path, work: Work) -> Prober {
        Prober {
            path: path.to_path_buf(),
            work,
            shared: Arc::new(Shared {
                slot: Mutex::new(Slot::default()),
                cv: Condvar::new(),
            }),
        }
    }

    /// Queue a call unless one is in flight; the sequence to wait for.
    fn request(&self, slot: &mut Slot) -> u64 {
        if !slot.in_flight() {
            slot.requested += 1;
            pool().submit(Job {
                seq: slot.requested,
                path: self.path.clone(),
                work: self.work,
                shared: self.shared.clone(),
            });
        }
        slot.requested
    }

    /// Ask for a call (or join the one in flight) and wait until it answers
    /// or `timeout` has passed.
    pub(super) fn ask(&self, timeout: Duration) -> Answer {
        let asked = Instant::now();
        let mut slot = lock(&self.shared.slot);
        let target = self.request(&mut slot);
        loop {
            if slot.done >= target {
                return Answer::Done(slot.result.clone().unwrap_or(Ok(None)));
            }
            // Time spent running counts from its start; a call queued before
            // this ask counts from the ask.
            let since = slot.running_since.map_or(asked, |r| r.min(asked));
            let now = Instant::now();
            if now >= since + timeout {
                return Answer::Pending(now - since);
            }
            pool().grow_if_stuck();
            let wait = (since + timeout - now).min(RECHECK);
            slot = self
                .shared
                .cv
                .wait_timeout(slot, wait)
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        }
    }

    /// The last answer, and for how long the call in flight has been running
    /// (None: none is running); queues one when none is in flight. Never waits.
    pub(super) fn peek(&self) -> (Option<Outcome>, Option<Duration>) {
        let mut slot = lock(&self.shared.slot);
        self.request(&mut slot);
        let running = slot.running_since.map(|s| s.elapsed());
        let last = slot.result.clone();
        drop(slot);
        pool().grow_if_stuck();
        (last, running)
    }
}

struct Job {
    seq: u64,
    path: PathBuf,
    work: Work,
    shared: Arc<Shared>,
}

impl Job {
    fn run(self) {
        lock(&self.shared.slot).running_since = Some(Instant::now());
        let r = (self.work)(&self.path);
        let mut slot = lock(&self.shared.slot);
        slot.done = slot.done.max(self.seq);
        slot.running_since = None;
        slot.result = Some(r);
        self.shared.cv.notify_all();
    }
}

#[derive(Default)]
struct PoolState {
    queue: VecDeque<Job>,
    /// Threads waiting for work.
    idle: usize,
    /// When each busy thread's call began, by thread number.
    busy: Vec<(u64, Instant)>,
    threads: usize,
    next: u64,
}

impl PoolState {
    fn prompt(&self) -> usize {
        self.busy.iter().filter(|(_, t)| t.elapsed() < SLOW).count()
    }
}

struct Pool {
    state: Mutex<PoolState>,
    cv: Condvar,
}

fn pool() -> &'static Pool {
    static P: OnceLock<Pool> = OnceLock::new();
    P.get_or_init(|| Pool {
        state: Mutex::new(PoolState::default()),
        cv: Condvar::new(),
    })
}

impl Pool {
    fn submit(&'static self, job: Job) {
        let mut st = lock(&self.state);
        st.queue.push_back(job);
        self.grow(&mut st);
        drop(st);
        self.cv.notify_one();
    }

    fn grow_if_stuck(&'static self) {
        let mut st = lock(&self.state);
        if !st.queue.is_empty() {
            self.grow(&mut st);
        }
    }

    /// Start threads while work waits for one and fewer than POOL_THREADS
    /// answer promptly.
    fn grow(&'static self, st: &mut PoolState) {
        while st.queue.len() > st.idle && st.idle + st.prompt() < POOL_THREADS {
            let spawned = thread::Builder::new()
                .name("fuse-probe".into())
                .spawn(move || self.work());
            match spawned {
                Ok(_) => {
                    st.idle += 1;
                    st.threads += 1;
                }
                Err(e) => {
                    // The queued work waits for a thread that frees up.
                    log::warn!("cannot start a probe thread: {e}");
                    break;
                }
            }
        }
    }

    /// A pool thread: counted idle by `grow` before it starts.
    fn work(&'static self) {
        let mut st = lock(&self.state);
        loop {
            let Some(job) = st.queue.pop_front() else {
                st = self.cv.wait(st).unwrap_or_else(|p| p.into_inner());
                continue;
            };
            st.idle -= 1;
            let me = st.next;
            st.next += 1;
            st.busy.push((me, Instant::now()));
            drop(st);
            job.run();
            st = lock(&self.state);
            st.busy.retain(|(n, _)| *n != me);
            if st.idle + st.prompt() >= POOL_THREADS {
                // Others took this thread's place while it was slow.
                st.threads -= 1;
                return;
            }
            st.idle += 1;
        }
    }
}

/// Threads in the pool now.
#[cfg(test)]
pub(super) fn threads() -> usize {
    lock(&pool().state).threads
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    static RELEASE: AtomicBool = AtomicBool::new(false);

    fn hang(_: &Path) -> Outcome {
        while !RELEASE.load(Ordering::SeqCst) {
            thread::sleep(Duration::from_millis(5));
        }
        Ok(None)
    }

    fn quick(_: &Path) -> Outcome {
        Ok(None)
    }

    fn wait_for(what: &str, f: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !f() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// Many mounts share a few threads; mounts that hang hold one thread
    /// each and never starve the others; the pool shrinks back when they
    /// return. (One test: the pool is process-wide.)
    #[test]
    fn hung_mounts_never_starve_the_others_and_threads_stay_bounded() {
        let quick_ones: Vec<Prober> = (0..200)
            .map(|i| Prober::new(Path::new(&format!("/q{i}")), quick))
            .collect();
        for p in &quick_ones {
            assert!(matches!(
                p.ask(Duration::from_secs(10)),
                Answer::Done(Ok(None))
            ));
        }
        assert!(threads() <= POOL_THREADS, "{} threads", threads());

        // More hung mounts than the pool has threads.
        let hung: Vec<Prober> = (0..POOL_THREADS + 2)
            .map(|i| Prober::new(Path::new(&format!("/h{i}")), hang))
            .collect();
        for h in &hung {
            let (_, _) = h.peek();
            // Joining the call in flight never queues a second one.
            let (_, _) = h.peek();
        }
        wait_for("every hung call to run", || {
            hung.iter().all(|h| h.peek().1.is_some())
        });
        assert!(threads() <= POOL_THREADS + hung.len());
        for p in &quick_ones {
            assert!(matches!(
                p.ask(Duration::from_secs(10)),
                Answer::Done(Ok(None))
            ));
        }
        assert!(
            threads() <= POOL_THREADS + hung.len(),
            "{} threads",
            threads()
        );
        assert!(matches!(
            hung[0].ask(Duration::from_millis(50)),
            Answer::Pending(_)
        ));

        RELEASE.store(true, Ordering::SeqCst);
        for h in &hung {
            assert!(matches!(
                h.ask(Duration::from_secs(10)),
                Answer::Done(Ok(None))
            ));
        }
        wait_for("the pool to shrink back", || threads() <= POOL_THREADS);
    }
}
