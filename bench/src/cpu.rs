//! CPU time spent by a process, read from `/proc/PID/stat`: user plus
//! system time of all its threads. The scenarios print it beside their
//! rates. On a machine this small the receiver and the ingest client share
//! the cores with the daemon, so a wall-clock rate moves with whatever else
//! runs; the daemon's CPU time per delivery is its own cost, and the two
//! processes' shares show where the cores went.

use std::time::Duration;

/// CPU time (user + system) of process `pid`, or `None` when it cannot be
/// read (no `/proc`, or the process is gone).
pub fn of_process(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let ticks = ticks_in_stat(&stat)?;
    Some(ticks_to_duration(ticks, clock_ticks_per_second()?))
}

/// CPU time of this process (the receiver, the ingest client and the rest
/// of the harness).
pub fn of_self() -> Option<Duration> {
    of_process(std::process::id())
}

/// CPU used between two readings, as a number of cores: 1.0 is one core
/// kept busy for the whole of `wall`.
pub fn cores(used: Duration, wall: Duration) -> f64 {
    if wall.is_zero() {
        return 0.0;
    }
    used.as_secs_f64() / wall.as_secs_f64()
}

/// `utime + stime` (fields 14 and 15) of a `/proc/PID/stat` line. The
/// command name (field 2) sits in parentheses and may itself hold spaces and
/// parentheses, so fields are counted from the last `)`.
fn ticks_in_stat(stat: &str) -> Option<u64> {
    let (_, after_name) = stat.rsplit_once(')')?;
    let mut fields = after_name.split_whitespace();
    // After the name come field 3 (state) .. so utime is the 12th.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

fn ticks_to_duration(ticks: u64, per_second: u64) -> Duration {
    let per_second = per_second.max(1);
    Duration::from_secs(ticks / per_second)
        + Duration::from_nanos((ticks % per_second) * 1_000_000_000 / per_second)
}

fn clock_ticks_per_second() -> Option<u64> {
    // SAFETY: sysconf only reads a constant of the running system.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(ticks).ok().filter(|&t| t > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_last_parenthesis() {
        // A made-up command name with a space and a ')' inside.
        let stat = "4242 (odd) name) S 1 4242 4242 0 -1 4194560 900 0 0 0 1234 56 0 0 20 0 9 0 100";
        assert_eq!(ticks_in_stat(stat), Some(1290));
    }

    #[test]
    fn a_truncated_stat_line_reads_as_nothing() {
        assert_eq!(ticks_in_stat("4242 (repeaterd) S 1 2 3"), None);
        assert_eq!(ticks_in_stat("no parenthesis at all"), None);
    }

    #[test]
    fn ticks_convert_at_the_given_rate() {
        assert_eq!(ticks_to_duration(250, 100), Duration::from_millis(2_500));
        assert_eq!(ticks_to_duration(3, 1_000), Duration::from_millis(3));
    }

    #[test]
    fn this_process_has_used_some_cpu() {
        let spin = std::time::Instant::now();
        let mut x = 0u64;
        while spin.elapsed() < Duration::from_millis(50) {
            x = x.wrapping_mul(31).wrapping_add(7);
        }
        std::hint::black_box(x);
        let used = of_self().expect("/proc/self/stat is readable on Linux");
        assert!(used >= Duration::from_millis(10), "{used:?}");
    }

    #[test]
    fn cores_divide_cpu_by_wall_time() {
        let two = cores(Duration::from_secs(4), Duration::from_secs(2));
        assert!((two - 2.0).abs() < 1e-9);
        assert_eq!(cores(Duration::from_secs(1), Duration::ZERO), 0.0);
    }
}
