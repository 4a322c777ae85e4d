//! Starting, pinning and stopping the workers: the one bootstrap both `c2m serve` and `c2m load`
//! run on.
//!
//! Each worker thread builds its own rings (SINGLE_ISSUER: the ring belongs to the thread that
//! made it), then its service, reports ready (or why not), and runs the event loop. The pool
//! waits for every worker to be ready, then publishes every worker's ring 0 so workers can wake
//! each other with MSG_RING. When a worker ends, its rings are dropped before its service, so
//! the kernel is done with every operation before the memory they point at is freed.

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;

use super::EngineError;
use super::io::Io;
use super::ring_set::{RingConfig, RingSet, Waker};
use super::worker::{Service, run, spawn_pinned};

/// How to lay the workers out.
#[derive(Clone, Debug)]
pub struct PoolConfig {
    pub workers: usize,
    /// Thread names are `{name}{index}`.
    pub name: &'static str,
    /// Worker i is pinned to core `(i + core_offset) % cores`: a load started beside a server
    /// starts its busiest thread on another core than the server's.
    pub core_offset: usize,
    pub ring: RingConfig,
    /// Rings each worker starts with.
    pub rings: usize,
}

/// Shared with every worker: the stop flag its service polls, and the ring 0 of every worker.
pub struct PoolShared {
    pub stop: AtomicBool,
    peers: Arc<OnceLock<Vec<RawFd>>>,
}

impl PoolShared {
    pub fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// One with no workers behind it: for testing a service without a pool.
    #[cfg(test)]
    pub fn detached() -> Arc<PoolShared> {
        Arc::new(PoolShared { stop: AtomicBool::new(false), peers: Arc::new(OnceLock::new()) })
    }
}

type Outcome<S> = Result<S, EngineError>;

pub struct WorkerPool<S> {
    shared: Arc<PoolShared>,
    wakers: Vec<Waker>,
    handles: Vec<JoinHandle<Outcome<S>>>,
}

impl<S: Service + Send + 'static> WorkerPool<S> {
    /// Starts `cfg.workers` workers; `make(id, io, shared)` builds worker `id`'s service on its
    /// own thread (it may reserve slots and add rings through `io`). Returns once every worker
    /// is running, or the first start-up error (the others are stopped).
    pub fn start<F>(cfg: &PoolConfig, make: F) -> Result<WorkerPool<S>, EngineError>
    where
        F: Fn(usize, &mut Io<S::Op>, &Arc<PoolShared>) -> Result<S, String> + Send + Sync + 'static,
    {
        let shared = Arc::new(PoolShared { stop: AtomicBool::new(false), peers: Arc::new(OnceLock::new()) });
        let make = Arc::new(make);
        let cores = core_affinity::get_core_ids().unwrap_or_default();
        let (ready_tx, ready_rx) = crossbeam::channel::bounded::<(usize, Result<(Waker, RawFd), String>)>(cfg.workers);
        let mut handles = Vec::with_capacity(cfg.workers);
        for id in 0..cfg.workers {
            let (make, shared, ready, ring_cfg, rings) =
                (make.clone(), shared.clone(), ready_tx.clone(), cfg.ring, cfg.rings);
            let core = (!cores.is_empty()).then(|| cores[(id + cfg.core_offset) % cores.len()]);
            let body = move || -> Outcome<S> {
                let setup = RingSet::new(rings, &ring_cfg).map_err(|e| e.to_string()).and_then(|set| {
                    let mut io = Io::new(id, set, shared.peers.clone());
                    let service = make(id, &mut io, &shared)?;
                    Ok((io, service))
                });
                let (mut io, mut service) = match setup {
                    Ok(v) => v,
                    Err(e) => {
                        let _ = ready.send((id, Err(e.clone())));
                        return Err(EngineError::Worker { id, message: e });
                    }
                };
                let _ = ready.send((id, Ok((io.rings().waker(), io.ring(0).ring_fd()))));
                drop(ready);
                let result = run(&mut io, &mut service);
                // The rings go first: operations still in flight (at a drain deadline) point into
                // the service's memory, which must outlive them.
                drop(io);
                result.map_err(|e| EngineError::io("the event loop", e))?;
                Ok(service)
            };
            let handle = spawn_pinned(format!("{}{id}", cfg.name), core, body)
                .map_err(|e| EngineError::io("spawning a worker thread", e))?;
            handles.push(handle);
        }
        drop(ready_tx);
        let mut wakers = vec![None; cfg.workers];
        let mut fds = vec![-1; cfg.workers];
        for _ in 0..cfg.workers {
            let failure = match ready_rx.recv() {
                Ok((id, Ok((waker, fd)))) => {
                    wakers[id] = Some(waker);
                    fds[id] = fd;
                    continue;
                }
                Ok((id, Err(message))) => EngineError::Worker { id, message },
                Err(_) => EngineError::Worker { id: usize::MAX, message: "a worker exited during start-up".into() },
            };
            shared.stop.store(true, Ordering::Relaxed);
            for waker in wakers.iter().flatten() {
                waker.wake();
            }
            for h in handles {
                let _ = h.join();
            }
            return Err(failure);
        }
        // From here on workers can wake each other (before, they rely on their ticks).
        let _ = shared.peers.set(fds);
        Ok(WorkerPool { shared, wakers: wakers.into_iter().flatten().collect(), handles })
    }

    pub fn len(&self) -> usize {
        self.handles.len()
    }

    pub fn is_empty(&self) -> bool {
        self.handles.is_empty()
    }

    pub fn shared(&self) -> &Arc<PoolShared> {
        &self.shared
    }

    /// Asks every worker to stop (its service sees `PoolShared::stopping`) and wakes it.
    pub fn stop(&self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        self.wake_all();
    }

    pub fn wake_all(&self) {
        for w in &self.wakers {
            w.wake();
        }
    }

    /// The first worker that has ended, if one has (a worker that ends on its own before it was
    /// asked to means it failed: its sessions are unreachable).
    pub fn ended(&self) -> Option<usize> {
        self.handles.iter().position(|h| h.is_finished())
    }

    /// Every worker has ended.
    pub fn all_ended(&self) -> bool {
        self.handles.iter().all(|h| h.is_finished())
    }

    /// Waits for every worker; each gives back its service (or why it failed).
    pub fn join(self) -> Vec<Outcome<S>> {
        self.handles
            .into_iter()
            .enumerate()
            .map(|(id, h)| match h.join() {
                Ok(outcome) => outcome,
                Err(panic) => Err(EngineError::Worker { id, message: format!("panicked: {}", panic_text(&panic)) }),
            })
            .collect()
    }
}

fn panic_text(panic: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "no message".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Completion;
    use std::time::{Duration, Instant};

    crate::service_ops! {
        /// No ops of its own: the test services live on ticks and wakes.
        enum Idle {
            Nothing: free,
        }
    }

    /// Ticks every millisecond; panics at tick `panic_at` if asked; worker 0 wakes worker 1.
    struct Ticker {
        shared: Arc<PoolShared>,
        ticks: u32,
        wakes: u32,
        panic_at: Option<u32>,
    }

    impl Service for Ticker {
        type Op = Idle;
        fn start(&mut self, io: &mut Io<Idle>) {
            io.tick_every(Duration::from_millis(1));
        }
        fn on_completion(&mut self, _io: &mut Io<Idle>, _c: Completion<Idle>) {}
        fn on_quiet(&mut self, _io: &mut Io<Idle>, _slot: u32) {}
        fn on_tick(&mut self, io: &mut Io<Idle>) {
            self.ticks += 1;
            assert_ne!(Some(self.ticks), self.panic_at, "the test's worker fails on purpose");
            if io.worker() == 0 {
                io.wake(1);
            }
        }
        fn on_wake(&mut self, _io: &mut Io<Idle>) {
            self.wakes += 1;
        }
        fn after_batch(&mut self, _io: &mut Io<Idle>) {}
        fn done(&self) -> bool {
            self.shared.stopping()
        }
    }

    fn config(workers: usize) -> PoolConfig {
        PoolConfig {
            workers,
            name: "c2m-test",
            core_offset: 0,
            ring: RingConfig { sq_entries: 8, cq_entries: 32, files: 8, recv_buffers: 4, recv_buffer_size: 64 },
            rings: 1,
        }
    }

    fn ticker(panic_at: Option<u32>) -> impl Fn(usize, &mut Io<Idle>, &Arc<PoolShared>) -> Result<Ticker, String> {
        move |id, _io, shared| {
            Ok(Ticker { shared: shared.clone(), ticks: 0, wakes: 0, panic_at: panic_at.filter(|_| id == 1) })
        }
    }

    #[test]
    fn workers_tick_wake_each_other_and_stop() {
        let pool = WorkerPool::start(&config(2), ticker(None)).unwrap();
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(pool.ended(), None);
        pool.stop();
        let workers: Vec<Ticker> = pool.join().into_iter().map(Result::unwrap).collect();
        assert!(
            workers.iter().all(|w| w.ticks > 5),
            "ticks: {:?}",
            workers.iter().map(|w| w.ticks).collect::<Vec<_>>()
        );
        assert!(workers[1].wakes > 0, "worker 0's MSG_RING reached worker 1");
    }

    #[test]
    fn a_worker_that_cannot_start_fails_the_start() {
        let make = |id: usize, _io: &mut Io<Idle>, shared: &Arc<PoolShared>| match id {
            1 => Err("no room".to_string()),
            _ => Ok(Ticker { shared: shared.clone(), ticks: 0, wakes: 0, panic_at: None }),
        };
        match WorkerPool::start(&config(2), make) {
            Err(EngineError::Worker { id: 1, message }) => assert_eq!(message, "no room"),
            Err(e) => panic!("wrong error: {e}"),
            Ok(_) => panic!("started with a failed worker"),
        }
    }

    /// A worker that dies is noticed, and its death is reported, not lost.
    #[test]
    fn a_worker_that_dies_is_noticed() {
        let pool = WorkerPool::start(&config(2), ticker(Some(3))).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while pool.ended().is_none() {
            assert!(Instant::now() < deadline, "the failed worker was not noticed");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(pool.ended(), Some(1));
        pool.stop();
        let outcomes = pool.join();
        assert!(outcomes[0].is_ok());
        match &outcomes[1] {
            Err(EngineError::Worker { id: 1, message }) => assert!(message.contains("on purpose"), "{message}"),
            other => panic!("{:?}", other.as_ref().err()),
        }
    }
}
