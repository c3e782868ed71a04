//! The CPU time a task spends on its own thread, counted poll by poll.
//!
//! A span of wall-clock time around a task's work counts the time the
//! thread waited for a core as well: on a busy two-core machine, the
//! scheduler loop's turns took 52–73 µs per pick by the clock where the
//! loop used 42–54 µs of CPU (ADR 28). The thread's own CPU clock, read
//! before and after each poll, counts only the work. A task may move
//! between threads at an `.await`, never within a poll, so each reading is
//! of one thread.

use std::future::Future;
use std::pin::pin;
use std::time::Duration;

use rustix::time::{ClockId, clock_gettime};

/// The CPU time the calling thread has used so far.
fn thread_cpu() -> Duration {
    let now = clock_gettime(ClockId::ThreadCPUTime);
    Duration::new(
        u64::try_from(now.tv_sec).unwrap_or(0),
        u32::try_from(now.tv_nsec).unwrap_or(0),
    )
}

/// Runs `task`, telling `spent` the CPU time of each of its polls. Work
/// the task waits for on other threads (a pool connection's worker, a
/// spawned task, a database server) is not in it.
pub(crate) async fn cpu_counted<F: Future>(task: F, mut spent: impl FnMut(Duration)) -> F::Output {
    let mut task = pin!(task);
    std::future::poll_fn(|cx| {
        let before = thread_cpu();
        let polled = task.as_mut().poll(cx);
        spent(thread_cpu().saturating_sub(before));
        polled
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Work done in the task counts; time it spends waiting does not.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_tasks_polls_count_its_work_and_not_its_waits() {
        let mut spent = Duration::ZERO;
        let busy = Duration::from_millis(60);
        let started = std::time::Instant::now();
        let sum = cpu_counted(
            async {
                let mut sum = 0u64;
                // Work on the task's own thread, then a wait, then work.
                for _ in 0..2 {
                    let start = thread_cpu();
                    while thread_cpu() - start < busy / 2 {
                        sum = sum.wrapping_add(std::hint::black_box(1));
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                sum
            },
            |cpu| spent += cpu,
        )
        .await;
        assert!(sum > 0);
        let wall = started.elapsed();
        assert!(
            spent >= busy,
            "counted {spent:?} of CPU, the task worked {busy:?}"
        );
        assert!(
            spent < busy + Duration::from_millis(100),
            "counted {spent:?} of CPU, the task worked {busy:?} and waited the rest of {wall:?}"
        );
        assert!(wall >= Duration::from_millis(400));
    }
}
