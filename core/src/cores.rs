//! The run's core budget: `--jobs` cores shared by the cells computing at once.
//!
//! A cell that can split its work (a training step's batch, say) asks how many threads it may
//! use *now*: its fair share of the budget, which grows when the cells beside it finish. A
//! cell computing alone on a 2-core budget gets both cores; two cells get one each.

use std::sync::atomic::{AtomicUsize, Ordering};

/// Cores shared by the cells of one run.
#[derive(Debug)]
pub struct CoreBudget {
    total: usize,
    running: AtomicUsize,
}

impl CoreBudget {
    /// A budget of `total` cores (at least one).
    pub fn new(total: usize) -> CoreBudget {
        CoreBudget {
            total: total.max(1),
            running: AtomicUsize::new(0),
        }
    }

    /// A cell starts computing.
    pub(crate) fn enter(&self) {
        self.running.fetch_add(1, Ordering::SeqCst);
    }

    /// A cell stops computing.
    pub(crate) fn leave(&self) {
        self.running.fetch_sub(1, Ordering::SeqCst);
    }

    /// One computing cell's fair share now: ⌊total / running⌋, at least one.
    pub fn share(&self) -> usize {
        let running = self.running.load(Ordering::SeqCst).max(1);
        (self.total / running).max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn share_divides_the_budget_among_running_cells() {
        let b = CoreBudget::new(4);
        assert_eq!(b.share(), 4, "an idle budget lends everything");
        b.enter();
        assert_eq!(b.share(), 4);
        b.enter();
        assert_eq!(b.share(), 2);
        b.enter();
        assert_eq!(b.share(), 1);
        b.enter();
        b.enter();
        assert_eq!(b.share(), 1, "never below one");
        for _ in 0..4 {
            b.leave();
        }
        assert_eq!(b.share(), 4);
        assert_eq!(CoreBudget::new(0).share(), 1);
    }
}
