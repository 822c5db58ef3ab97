//! A fixed pool of worker threads fed by a crossbeam channel: long operations
//! (mounts, unmounts, cache population) run here so that the gRPC
//! completion-queue threads always stay free for cheap calls.

use std::thread;

use crossbeam_channel::{unbounded, Receiver, Sender};
use log::error;

pub type Job = Box<dyn FnOnce() + Send + 'static>;

pub struct Workers {
    tx: Sender<Job>,
}

impl Workers {
    pub fn new(name: &str, count: usize) -> Self {
        let (tx, rx): (Sender<Job>, Receiver<Job>) = unbounded();
        for i in 0..count {
            let rx = rx.clone();
            let spawned = thread::Builder::new()
                .name(format!("{name}-{i}"))
                .spawn(move || {
                    // Ends when every Sender is gone.
                    for job in rx.iter() {
                        job();
                    }
                });
            if let Err(e) = spawned {
                error!("cannot start worker thread {name}-{i}: {e}");
            }
        }
        Workers { tx }
    }

    pub fn submit(&self, job: Job) {
        // The receivers live as long as the threads, which only end once
        // every sender (this one included) is dropped: send cannot fail while
        // `self` exists unless every worker thread failed to start.
        if let Err(e) = self.tx.send(job) {
            error!("no worker thread is running; running the job inline");
            (e.into_inner())();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crossbeam_channel::bounded;

    #[test]
    fn jobs_run_on_pool_threads() {
        let pool = Workers::new("t", 2);
        let (tx, rx) = bounded(4);
        for _ in 0..4 {
            let tx = tx.clone();
            pool.submit(Box::new(move || {
                tx.send(thread::current().name().unwrap_or("").to_string())
                    .unwrap()
            }));
        }
        for _ in 0..4 {
            let name = rx.recv().unwrap();
            assert!(name.starts_with("t-"), "{name}");
        }
    }
}
