//! A value owned by one dedicated thread and used through closures sent to
//! it, so async code never runs blocking work (SQLite calls, above all) on a
//! runtime worker.
//!
//! The daemon's store and registry and the HTTP API's each live in one
//! [`Owner`]. Why a thread rather than `spawn_blocking` at every call site:
//! a rusqlite `Connection` is `Send` but not `Sync`, so `spawn_blocking`
//! would need it behind a `Mutex` moved into every task, and two tasks could
//! then interleave on one connection's transactions; a thread that owns the
//! connection runs one closure at a time in arrival order, keeps its
//! statement cache warm, and a slow call (a write waiting on another
//! process's lock for the busy timeout) queues the next ones instead of
//! taking more blocking threads.

use std::panic::{AssertUnwindSafe, catch_unwind};

use tokio::sync::oneshot;

type Job<T> = Box<dyn FnOnce(&mut T) + Send>;

/// A handle to the thread that owns a `T`. Cloning it shares the thread;
/// the thread ends when the last handle is dropped.
pub struct Owner<T> {
    jobs: std::sync::mpsc::Sender<Job<T>>,
}

impl<T> Clone for Owner<T> {
    fn clone(&self) -> Self {
        Owner {
            jobs: self.jobs.clone(),
        }
    }
}

/// The owning thread is gone, or the closure panicked.
#[derive(Debug, thiserror::Error)]
#[error("the thread owning {0} stopped or panicked")]
pub struct OwnerGone(&'static str);

impl<T: Send + 'static> Owner<T> {
    /// Starts a thread named `name` that owns `value`.
    pub fn spawn(name: &'static str, mut value: T) -> std::io::Result<Owner<T>> {
        let (jobs, receiver) = std::sync::mpsc::channel::<Job<T>>();
        std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || {
                for job in receiver {
                    // A panicking closure fails its own call (its reply is
                    // dropped); the value and the thread stay.
                    let _ = catch_unwind(AssertUnwindSafe(|| job(&mut value)));
                }
            })?;
        Ok(Owner { jobs })
    }

    /// Runs `f` on the owning thread and waits (asynchronously) for its
    /// result.
    pub async fn call<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut T) -> R + Send + 'static,
    ) -> Result<R, OwnerGone> {
        let (reply, result) = oneshot::channel();
        let job: Job<T> = Box::new(move |value| {
            let _ = reply.send(f(value));
        });
        self.jobs
            .send(job)
            .map_err(|_| OwnerGone(std::any::type_name::<T>()))?;
        result
            .await
            .map_err(|_| OwnerGone(std::any::type_name::<T>()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn calls_run_in_order_on_the_owning_thread_and_a_panic_fails_only_its_call() {
        let owner = Owner::spawn("test-owner", Vec::<u32>::new()).unwrap();
        let thread = owner
            .call(|_| std::thread::current().name().map(str::to_string))
            .await
            .unwrap();
        assert_eq!(thread.as_deref(), Some("test-owner"));
        for n in 0..3 {
            owner.call(move |v| v.push(n)).await.unwrap();
        }
        let panicked = owner.call(|_: &mut Vec<u32>| panic!("boom")).await;
        assert!(panicked.is_err());
        assert_eq!(owner.call(|v| v.clone()).await.unwrap(), vec![0, 1, 2]);
    }
}
