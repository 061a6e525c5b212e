//! One test binary, the isolation of many: tests of one area (one module of the integration
//! binary, e.g. `outbound`) run in parallel with each other, never with another area's.
//!
//! When each area was its own test binary, cargo ran the binaries one after another, so a
//! heavy test (a million connections, a 64 MiB slow reader) never shared the machine with a
//! timing check of another area (a restart that must reconcile within a second). The gate
//! keeps that: a test enters its area (through [`crate::Node::new`], or [`enter`] for the few
//! tests without a node) and waits while another area has tests running.
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};

/// The area whose tests are running now, and how many hold it.
#[derive(Default)]
struct Gate {
    area: Option<String>,
    holders: usize,
}

static GATE: Mutex<Gate> = Mutex::new(Gate {
    area: None,
    holders: 0,
});
static CHANGED: Condvar = Condvar::new();

/// A held area: released (and waiting tests of other areas woken) on drop, panics included.
#[must_use = "the area is held only as long as the guard lives"]
pub struct AreaGuard(());

/// Enters the calling test's area, waiting while another area's tests run.
pub fn enter() -> AreaGuard {
    let area = current_area();
    let mut gate = lock();
    while gate.area.as_ref().is_some_and(|a| *a != area) {
        gate = CHANGED.wait(gate).unwrap_or_else(PoisonError::into_inner);
    }
    gate.area = Some(area);
    gate.holders += 1;
    AreaGuard(())
}

impl Drop for AreaGuard {
    fn drop(&mut self) {
        let mut gate = lock();
        gate.holders -= 1;
        if gate.holders == 0 {
            gate.area = None;
            CHANGED.notify_all();
        }
    }
}

fn lock() -> MutexGuard<'static, Gate> {
    // A test that panicked while holding the lock left the count consistent (no code between
    // lock and unlock can panic), so a poisoned gate is still good.
    GATE.lock().unwrap_or_else(PoisonError::into_inner)
}

/// libtest names each test's thread after the test (`outbound::istio_default_rule_set`): the
/// area is its first segment. Run one at a time (`--test-threads=1`), tests may share one
/// thread name, and then one area, which is right: nothing runs beside them.
fn current_area() -> String {
    let thread = std::thread::current();
    let name = thread.name().unwrap_or("");
    name.split("::").next().unwrap_or(name).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::thread;
    use std::time::Duration;

    /// Two areas' "tests" on four threads: at no time do both run.
    #[test]
    fn areas_never_overlap() {
        let running = Arc::new([AtomicUsize::new(0), AtomicUsize::new(0)]);
        let handles: Vec<_> = (0..4)
            .map(|i| {
                let running = running.clone();
                thread::Builder::new()
                    .name(format!("area{}::t{i}", i % 2))
                    .spawn(move || {
                        let _area = enter();
                        running[i % 2].fetch_add(1, Ordering::SeqCst);
                        let other = running[1 - i % 2].load(Ordering::SeqCst);
                        thread::sleep(Duration::from_millis(50));
                        running[i % 2].fetch_sub(1, Ordering::SeqCst);
                        other
                    })
                    .unwrap()
            })
            .collect();
        for h in handles {
            assert_eq!(h.join().unwrap(), 0, "another area was running");
        }
    }
}
