//! One session budget for the whole server. The kernel's SO_REUSEPORT hash picks the worker of
//! each connection, with a seed that changes every boot, so a limit split evenly over the
//! workers refuses connections the server has room for (seen: 5,130 of 10,000 on one of two
//! workers, every run of a boot). Each worker reserves address space for every session; this
//! counter is what admits them.

use std::sync::atomic::{AtomicUsize, Ordering};

#[derive(Debug)]
pub struct SessionBudget {
    limit: usize,
    in_use: AtomicUsize,
}

impl SessionBudget {
    pub fn new(limit: usize) -> SessionBudget {
        SessionBudget { limit, in_use: AtomicUsize::new(0) }
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Takes one session from the budget; `false` when the server is full.
    pub fn try_take(&self) -> bool {
        self.in_use.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < self.limit).then_some(n + 1)).is_ok()
    }

    /// Gives back a session taken with [`SessionBudget::try_take`].
    pub fn give_back(&self) {
        let before = self.in_use.fetch_sub(1, Ordering::AcqRel);
        debug_assert!(before > 0, "a session given back that was never taken");
    }

    pub fn in_use(&self) -> usize {
        self.in_use.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn admits_exactly_the_limit_whoever_asks() {
        let budget = Arc::new(SessionBudget::new(1000));
        // Two "workers" take as fast as they can; one may win far more often (an uneven hash).
        let handles: Vec<_> = (0..2)
            .map(|_| {
                let b = budget.clone();
                std::thread::spawn(move || (0..1000).filter(|_| b.try_take()).count())
            })
            .collect();
        let taken: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
        assert_eq!(taken, 1000);
        assert!(!budget.try_take());
        budget.give_back();
        assert!(budget.try_take());
        assert_eq!(budget.in_use(), 1000);
    }
}
