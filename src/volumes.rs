//! The volume table: one entry per volume id, each with its own lock.
//!
//! Calls on different volumes never wait for each other. On one volume:
//! - a LONG operation (stage, unstage, cache population: seconds) is
//!   exclusive; any call that meets it gets ABORTED at once and the CO
//!   retries, as the CSI spec allows ("operation pending for volume");
//! - SHORT operations (bind publish/unpublish: about a millisecond) queue on
//!   the entry and run one after another, so fifty pods starting together
//!   on one staged volume all succeed on their first try.
//!
//! Each entry also holds the volume's data (`T`); an entry whose data is
//! vacant (nothing staged or published) is dropped when the last guard on it
//! goes away, so memory does not grow with every volume ever seen.
//!
//! A short operation waits at most `SHORT_WAIT` for its turn, then gets
//! ABORTED: no gRPC thread is held for long by a queue.

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// How long a short operation queues behind others on its volume.
pub const SHORT_WAIT: Duration = Duration::from_secs(10);

/// Data that can say it holds nothing worth keeping an entry for.
pub trait Vacant {
    fn is_vacant(&self) -> bool;
}

/// Tables that only serialise calls (the controller's) keep no data.
impl Vacant for () {
    fn is_vacant(&self) -> bool {
        true
    }
}

impl Vacant for u32 {
    fn is_vacant(&self) -> bool {
        *self == 0
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Long(&'static str),
    Short(&'static str),
}

#[derive(Default)]
struct Gate {
    long: Option<&'static str>,
    short_busy: bool,
}

struct Entry<T> {
    gate: Mutex<Gate>,
    turn: Condvar,
    data: Mutex<T>,
}

pub struct VolumeTable<T> {
    map: Mutex<HashMap<String, Arc<Entry<T>>>>,
}

/// Holds the right to operate on one volume; dropping it lets the next call in.
pub struct Guard<T: Default + Vacant> {
    table: Arc<VolumeTable<T>>,
    id: String,
    entry: Arc<Entry<T>>,
    op: Op,
    /// False for the throw-away guard of a call that was turned away.
    held: bool,
}

/// Locks that are only ever held for short, panic-free critical sections:
/// a poisoned lock still holds consistent data, so take it over.
fn lock<U>(m: &Mutex<U>) -> MutexGuard<'_, U> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl<T: Default + Vacant> Default for VolumeTable<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Default + Vacant> VolumeTable<T> {
    pub fn new() -> Self {
        VolumeTable {
            map: Mutex::new(HashMap::new()),
        }
    }

    fn entry(&self, id: &str) -> Arc<Entry<T>> {
        let mut map = lock(&self.map);
        map.entry(id.to_string())
            .or_insert_with(|| {
                Arc::new(Entry {
                    gate: Mutex::new(Gate::default()),
                    turn: Condvar::new(),
                    data: Mutex::new(T::default()),
                })
            })
            .clone()
    }

    /// Take the volume for `op`. Long operations and anything meeting a long
    /// operation fail with ABORTED without waiting; short operations wait for
    /// the short operation ahead of them.
    pub fn acquire(self: &Arc<Self>, id: &str, op: Op) -> Result<Guard<T>> {
        let entry = self.entry(id);
        let result = {
            let mut gate = lock(&entry.gate);
            match op {
                Op::Long(name) => {
                    if let Some(running) = gate.long {
                        Err(running)
                    } else {
                        gate.long = Some(name);
                        // Wait for the short call that may be running (~1 ms);
                        // calls arriving from now on see `long` and abort.
                        while gate.short_busy {
                            gate = entry.turn.wait(gate).unwrap_or_else(|p| p.into_inner());
                        }
                        Ok(())
                    }
                }
                Op::Short(_) => {
                    let deadline = Instant::now() + SHORT_WAIT;
                    loop {
                        if let Some(running) = gate.long {
                            break Err(running);
                        }
                        if !gate.short_busy {
                            gate.short_busy = true;
                            break Ok(());
                        }
                        let left = deadline.saturating_duration_since(Instant::now());
                        if left.is_zero() {
                            break Err("queued calls on this volume");
                        }
                        gate = entry
                            .turn
                            .wait_timeout(gate, left)
                            .unwrap_or_else(|p| p.into_inner())
                            .0;
                    }
                }
            }
        };
        let guard = Guard {
            table: self.clone(),
            id: id.to_string(),
            entry,
            op,
            held: result.is_ok(),
        };
        // A turned-away guard releases nothing when dropped here, but still
        // lets Drop collect an unused entry.
        result.map(|()| guard).map_err(|running| Error::Aborted {
            volume: id.to_string(),
            op: running,
        })
    }

    /// A copy of a volume's data without taking its gate: for observers (the
    /// watchdog) that must never turn a CO call away. None if unknown.
    pub fn snapshot(&self, id: &str) -> Option<T>
    where
        T: Clone,
    {
        let entry = lock(&self.map).get(id).cloned()?;
        let data = lock(&entry.data).clone();
        Some(data)
    }

    /// Ids of the volumes that currently have an entry.
    pub fn ids(&self) -> Vec<String> {
        lock(&self.map).keys().cloned().collect()
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        lock(&self.map).len()
    }

    /// Whether no volume has an entry.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<T: Default + Vacant> Guard<T> {
    /// The volume's data. Only the guard holder touches it, so this never waits
    /// for long.
    pub fn data(&self) -> MutexGuard<'_, T> {
        lock(&self.entry.data)
    }

    pub fn id(&self) -> &str {
        &self.id
    }
}

impl<T: Default + Vacant> Drop for Guard<T> {
    fn drop(&mut self) {
        if self.held {
            let mut gate = lock(&self.entry.gate);
            match self.op {
                Op::Long(_) => gate.long = None,
                Op::Short(_) => gate.short_busy = false,
            }
            drop(gate);
            self.entry.turn.notify_all();
        }
        // Collect the entry when nothing is recorded for the volume and no
        // other call holds or waits on it (waiters hold an Arc clone).
        let mut map = lock(&self.table.map);
        if Arc::strong_count(&self.entry) == 2 && lock(&self.entry.data).is_vacant() {
            map.remove(&self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crossbeam_channel::bounded;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::thread;
    use std::time::{Duration, Instant};

    #[test]
    fn long_op_aborts_everyone_else_at_once() {
        let table = Arc::new(VolumeTable::<u32>::new());
        let (started_tx, started_rx) = bounded(0);
        let (release_tx, release_rx) = bounded::<()>(0);
        let t = table.clone();
        let holder = thread::spawn(move || {
            let g = t.acquire("vol", Op::Long("NodeStageVolume")).unwrap();
            *g.data() = 1;
            started_tx.send(()).unwrap();
            release_rx.recv().unwrap();
        });
        started_rx.recv().unwrap();
        // Each call names the stage it met: it was turned away because of
        // it, at once (a short call that had queued instead would end its
        // wait with "queued calls on this volume", and the holder does not
        // let go until these calls are done).
        for op in [
            Op::Long("NodeUnstageVolume"),
            Op::Short("NodePublishVolume"),
        ] {
            match table.acquire("vol", op) {
                Err(Error::Aborted { volume, op }) => {
                    assert_eq!(volume, "vol");
                    assert_eq!(op, "NodeStageVolume");
                }
                _ => panic!("expected ABORTED"),
            }
        }
        // Another volume is not affected.
        drop(table.acquire("other", Op::Long("NodeStageVolume")).unwrap());
        release_tx.send(()).unwrap();
        holder.join().unwrap();
        // Once the long op is done, the volume is free again.
        let g = table
            .acquire("vol", Op::Short("NodePublishVolume"))
            .unwrap();
        assert_eq!(*g.data(), 1);
    }

    #[test]
    fn fifty_short_ops_all_succeed_one_at_a_time() {
        let table = Arc::new(VolumeTable::<u32>::new());
        let inside = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..50)
            .map(|_| {
                let (t, inside) = (table.clone(), inside.clone());
                thread::spawn(move || {
                    let g = t.acquire("vol", Op::Short("NodePublishVolume")).unwrap();
                    assert_eq!(inside.fetch_add(1, Ordering::SeqCst), 0, "two inside");
                    *g.data() += 1;
                    thread::sleep(Duration::from_millis(1));
                    inside.fetch_sub(1, Ordering::SeqCst);
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(*table.acquire("vol", Op::Short("x")).unwrap().data(), 50);
    }

    #[test]
    fn long_op_waits_for_running_short_op_then_excludes() {
        let table = Arc::new(VolumeTable::<u32>::new());
        let short = table
            .acquire("vol", Op::Short("NodePublishVolume"))
            .unwrap();
        let t = table.clone();
        let (done_tx, done_rx) = bounded(1);
        let long = thread::spawn(move || {
            let g = t.acquire("vol", Op::Long("NodeUnstageVolume")).unwrap();
            done_tx.send(()).unwrap();
            thread::sleep(Duration::from_millis(50));
            drop(g);
        });
        // The long op has registered itself but waits for the short one.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if lock(&table.entry("vol").gate).long.is_some() {
                break;
            }
            assert!(Instant::now() < deadline);
            thread::sleep(Duration::from_millis(1));
        }
        assert!(done_rx.try_recv().is_err());
        assert!(matches!(
            table.acquire("vol", Op::Short("NodePublishVolume")),
            Err(Error::Aborted { .. })
        ));
        drop(short);
        done_rx.recv_timeout(Duration::from_secs(5)).unwrap();
        long.join().unwrap();
    }

    #[test]
    fn snapshots_never_wait_or_abort() {
        let table = Arc::new(VolumeTable::<u32>::new());
        assert_eq!(table.snapshot("v"), None);
        let g = table.acquire("v", Op::Long("NodeStageVolume")).unwrap();
        *g.data() = 5;
        // While the long operation holds the gate, a snapshot still reads.
        assert_eq!(table.snapshot("v"), Some(5));
        drop(g);
        assert_eq!(table.snapshot("v"), Some(5));
        assert_eq!(table.len(), 1, "snapshots create no entries");
    }

    #[test]
    fn entries_are_collected_when_empty() {
        let table = Arc::new(VolumeTable::<u32>::new());
        drop(table.acquire("a", Op::Long("x")).unwrap());
        assert!(table.is_empty());
        {
            let g = table.acquire("b", Op::Short("x")).unwrap();
            *g.data() = 7;
        }
        assert_eq!(table.ids(), vec!["b".to_string()]);
        {
            let g = table.acquire("b", Op::Long("x")).unwrap();
            *g.data() = 0;
        }
        assert!(table.is_empty());
        // An aborted call on a busy volume leaves the holder's entry in place.
        let g = table.acquire("c", Op::Long("x")).unwrap();
        assert!(table.acquire("c", Op::Short("y")).is_err());
        assert_eq!(table.len(), 1);
        drop(g);
        assert!(table.is_empty());
    }
}
