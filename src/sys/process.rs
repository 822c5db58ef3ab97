//! Processes: starting mounters in their own session, telling whether a PID
//! is still the process we started, signalling and reaping.

use std::fs;
use std::io;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{kill, killpg, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{setsid, Pid};

use crate::error::{Error, Result};

/// A running process, known by its pid AND its start time: a pid the
/// kernel gave to another process since is never taken for it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Running {
    pub pid: i32,
    pub start_ticks: u64,
}

/// What /proc/PID/stat says about a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStat {
    pub state: char,
    pub start_ticks: u64,
}

/// Parse /proc/PID/stat text: the command name may contain spaces and
/// parentheses, so split after the last ')'.
pub fn parse_stat(text: &str) -> Option<ProcStat> {
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // fields[0] is field 3 (state); field 22 (starttime) is fields[19].
    Some(ProcStat {
        state: fields.first()?.chars().next()?,
        start_ticks: fields.get(19)?.parse().ok()?,
    })
}

pub fn stat(pid: i32) -> Option<ProcStat> {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|t| parse_stat(&t))
}

/// True when `pid` runs and is the very process started at `start_ticks`
/// (not a zombie, not a new process that reused the PID).
pub fn is_alive(pid: i32, start_ticks: u64) -> bool {
    pid > 0
        && matches!(stat(pid), Some(s) if s.start_ticks == start_ticks && s.state != 'Z' && s.state != 'X')
}

/// A pidfd of `run` (pidfd_open, Linux 5.3): readable once the process has
/// exited, whoever its parent is. None when the process is gone, or the pid
/// now names another process (checked after the open, so the fd cannot
/// name a process that reused the pid).
pub fn pidfd(run: Running) -> Option<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    if run.pid <= 0 {
        return None;
    }
    // SAFETY: pidfd_open(2) with a pid and no flags returns a new fd or -1.
    let fd = unsafe { nix::libc::syscall(nix::libc::SYS_pidfd_open, run.pid, 0) };
    let fd = std::os::fd::RawFd::try_from(fd)
        .ok()
        .filter(|fd| *fd >= 0)?;
    // SAFETY: `fd` was just returned by pidfd_open; nothing else owns it.
    let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
    (stat(run.pid)?.start_ticks == run.start_ticks).then_some(fd)
}

/// Start `cmd` as the leader of a new session (setsid), so that it outlives
/// the daemon and can be signalled as a group. Output goes to `log`.
pub fn spawn_session(mut cmd: Command, log: &Path) -> Result<(i32, u64)> {
    let out = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| Error::io("open", log, e))?;
    let err = out.try_clone().map_err(|e| Error::io("dup", log, e))?;
    cmd.stdin(Stdio::null()).stdout(out).stderr(err);
    // SAFETY: the closure runs in the forked child before exec and only calls
    // setsid(2), which is async-signal-safe and touches no shared state.
    unsafe {
        cmd.pre_exec(|| setsid().map(|_| ()).map_err(io::Error::from));
    }
    let program = cmd.get_program().to_string_lossy().into_owned();
    let child = cmd
        .spawn()
        .map_err(|e| Error::io("spawn", Path::new(&program), e))?;
    // A pid_t always fits; `Child::id` is u32 only by std's choice.
    let pid = i32::try_from(child.id()).unwrap_or(i32::MAX);
    // The Child handle is dropped without waiting: reaping is done by pid
    // (reap()), also after a daemon restart when the process is no longer ours.
    drop(child);
    let start = stat(pid).map(|s| s.start_ticks).unwrap_or(0);
    Ok((pid, start))
}

/// Collect the exit status of our child `pid` if it has exited, so it does not
/// linger as a zombie. Harmless for processes that are not our children.
pub fn reap(pid: i32) -> Option<WaitStatus> {
    match waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG)) {
        Ok(WaitStatus::StillAlive) | Err(_) => None,
        Ok(status) => Some(status),
    }
}

/// Reap `pid` only if it is still the process started at `start_ticks`
/// (now a zombie): a reused pid may be another child of ours, whose exit
/// status its own waiter needs.
fn reap_exited(pid: i32, start_ticks: u64) {
    if stat(pid).is_some_and(|s| s.start_ticks == start_ticks) {
        reap(pid);
    }
}

/// Send `sig` to the process group led by `pid` (falls back to the process).
pub fn signal_group(pid: i32, sig: Signal) {
    if killpg(Pid::from_raw(pid), sig) == Err(Errno::ESRCH) {
        let _ = kill(Pid::from_raw(pid), sig);
    }
}

/// Wait until the process is gone (reaping it if it is our child).
pub fn wait_gone(pid: i32, start_ticks: u64, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        // Looked at first, reaped after: reaping first left a process that
        // exited in between a zombie nobody would collect (seen at 3 of
        // 1,000 unstages in benches/scale.sh).
        if !is_alive(pid, start_ticks) {
            reap_exited(pid, start_ticks);
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// SIGTERM the process group now, SIGKILL it after `grace`, and wait (5 s at
/// most) until the process is gone. Returns whether it is.
pub fn terminate(pid: i32, start_ticks: u64, grace: Duration) -> bool {
    if !is_alive(pid, start_ticks) {
        reap_exited(pid, start_ticks);
        return true;
    }
    signal_group(pid, Signal::SIGTERM);
    if wait_gone(pid, start_ticks, grace) {
        return true;
    }
    signal_group(pid, Signal::SIGKILL);
    wait_gone(pid, start_ticks, Duration::from_secs(5))
}

/// How a process ended, in words for an error message.
pub fn describe_exit(status: &WaitStatus) -> String {
    match status {
        WaitStatus::Exited(_, code) => format!("exited with code {code}"),
        WaitStatus::Signaled(_, sig, _) => format!("was killed by {sig}"),
        other => format!("ended ({other:?})"),
    }
}

/// Keep the output file of process `pid` (its stderr, fd 2) bounded: when
/// it is a regular file over `max` bytes, cut it to its last `keep` bytes.
/// The writer appends (O_APPEND), so it goes on at the new end; lines
/// written during the cut may be lost, which a log can afford. Found
/// through /proc so that it also works for mounters adopted after a
/// restart, whose log path the daemon did not open.
pub fn cap_output(pid: i32, max: u64, keep: u64) -> io::Result<bool> {
    use std::io::{Read, Seek, SeekFrom, Write};
    let path = format!("/proc/{pid}/fd/2");
    let mut f = fs::OpenOptions::new().read(true).write(true).open(&path)?;
    let meta = f.metadata()?;
    if !meta.is_file() || meta.len() <= max {
        return Ok(false);
    }
    f.seek(SeekFrom::Start(meta.len().saturating_sub(keep)))?;
    let mut tail = Vec::with_capacity(usize::try_from(keep).unwrap_or(0));
    Read::by_ref(&mut f).take(keep).read_to_end(&mut tail)?;
    // Start at a line boundary.
    let start = tail.iter().position(|b| *b == b'\n').map_or(0, |p| p + 1);
    f.set_len(0)?;
    f.seek(SeekFrom::Start(0))?;
    f.write_all(format!("[bindery: log cut to its last {keep} bytes]\n").as_bytes())?;
    f.write_all(&tail[start..])?;
    Ok(true)
}

/// The nice value of background work (deletion of pods' trees): below the
/// threads that answer the kubelet, which run at the daemon's own.
pub const BACKGROUND_NICE: i32 = 10;

const IOPRIO_WHO_PROCESS: nix::libc::c_long = 1;
const IOPRIO_CLASS_SHIFT: u32 = 13;
/// The idle I/O class: served when the disk has nothing else queued. The
/// kernel's schedulers still serve it under constant load (mq-deadline ages
/// every request after `prio_aging_expire`, 10 s; BFQ serves the idle class
/// at least every 200 ms), so it is slowed, never stopped.
pub const IOPRIO_CLASS_IDLE: u32 = 3;

/// Make the calling thread background work: nice `BACKGROUND_NICE` for the
/// CPU, the idle I/O class for the disk. Threads it starts afterwards
/// inherit both. Lowering its own priority needs no privilege; the error
/// (e.g. a seccomp profile that refuses ioprio_set) is for the caller to log.
pub fn run_in_background() -> std::result::Result<(), Errno> {
    let tid = nix::unistd::gettid().as_raw();
    let who = nix::libc::id_t::try_from(tid).map_err(|_| Errno::EINVAL)?;
    // SAFETY: setpriority takes integers only and touches no memory of ours.
    Errno::result(unsafe {
        nix::libc::setpriority(nix::libc::PRIO_PROCESS, who, BACKGROUND_NICE)
    })?;
    let value = nix::libc::c_long::from(IOPRIO_CLASS_IDLE << IOPRIO_CLASS_SHIFT);
    // SAFETY: ioprio_set takes integers only and touches no memory of ours.
    Errno::result(unsafe {
        nix::libc::syscall(
            nix::libc::SYS_ioprio_set,
            IOPRIO_WHO_PROCESS,
            nix::libc::c_long::from(tid),
            value,
        )
    })
    .map(drop)
}

/// Thread `tid`'s nice value and I/O priority class (0: none set, which the
/// kernel treats as best-effort at the nice value's level).
pub fn thread_priority(tid: i32) -> std::result::Result<(i32, u32), Errno> {
    let stat = fs::read_to_string(format!("/proc/self/task/{tid}/stat"))
        .map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(nix::libc::EIO)))?;
    // Field 19 (nice), counted after the command name's closing parenthesis.
    let nice = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().nth(16))
        .and_then(|n| n.parse().ok())
        .ok_or(Errno::EINVAL)?;
    // SAFETY: ioprio_get takes integers only and touches no memory of ours.
    let prio = Errno::result(unsafe {
        nix::libc::syscall(
            nix::libc::SYS_ioprio_get,
            IOPRIO_WHO_PROCESS,
            nix::libc::c_long::from(tid),
        )
    })?;
    let class = u32::try_from(prio).map_err(|_| Errno::EINVAL)? >> IOPRIO_CLASS_SHIFT;
    Ok((nice, class))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_odd_names() {
        let t = "1234 (s3fs (x) y) S 1 1234 1234 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 3 0 987654 1000 100";
        let s = parse_stat(t).unwrap();
        assert_eq!(s.state, 'S');
        assert_eq!(s.start_ticks, 987654);
        assert!(parse_stat("garbage").is_none());
    }

    #[test]
    fn background_threads_run_below_the_daemon() {
        let before = thread_priority(nix::unistd::gettid().as_raw()).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        thread::spawn(move || {
            run_in_background().unwrap();
            let me = thread_priority(nix::unistd::gettid().as_raw()).unwrap();
            // A thread it starts inherits both.
            let child = thread::spawn(|| thread_priority(nix::unistd::gettid().as_raw()).unwrap())
                .join()
                .unwrap();
            tx.send((me, child)).unwrap();
        })
        .join()
        .unwrap();
        let (me, child) = rx.recv().unwrap();
        assert_eq!(me, (BACKGROUND_NICE, IOPRIO_CLASS_IDLE));
        assert_eq!(child, me);
        // Only that thread: the caller keeps its own.
        assert_eq!(
            thread_priority(nix::unistd::gettid().as_raw()).unwrap(),
            before
        );
    }

    #[test]
    fn spawned_session_is_tracked_and_stopped() {
        let dir = std::env::temp_dir().join(format!("bindery-proc-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let log = dir.join("log");
        let mut cmd = Command::new("sleep");
        cmd.arg("30");
        let (pid, start) = spawn_session(cmd, &log).unwrap();
        assert!(is_alive(pid, start));
        assert!(
            !is_alive(pid, start + 1),
            "a different start time is another process"
        );
        // A new session: its session id is its own pid.
        let sid = nix::unistd::getsid(Some(Pid::from_raw(pid))).unwrap();
        assert_eq!(sid.as_raw(), pid);
        terminate(pid, start, Duration::from_millis(50));
        assert!(!is_alive(pid, start));
        assert_eq!(stat(pid), None, "reaped, not left a zombie");
        fs::remove_dir_all(&dir).unwrap();
    }

    /// A child that exits while it is waited for is always reaped, never
    /// left a zombie, whenever it exits in the wait.
    #[test]
    fn children_that_exit_during_the_wait_are_reaped() {
        let dir = std::env::temp_dir().join(format!("bindery-reap-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let log = dir.join("log");
        for _ in 0..100 {
            let mut cmd = Command::new("true");
            cmd.arg("x");
            let (pid, start) = spawn_session(cmd, &log).unwrap();
            assert!(wait_gone(pid, start, Duration::from_secs(10)));
            assert_eq!(stat(pid), None, "child {pid} left a zombie");
        }
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn output_is_capped() {
        let dir = std::env::temp_dir().join(format!("bindery-cap-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let log = dir.join("log");
        let mut cmd = Command::new("sh");
        cmd.args([
            "-c",
            "i=0; while [ $i -lt 3000 ]; do echo line $i >&2; i=$((i+1)); done; sleep 30",
        ]);
        let (pid, start) = spawn_session(cmd, &log).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while fs::read_to_string(&log).unwrap_or_default().lines().count() < 3000 {
            assert!(Instant::now() < deadline, "no output");
            thread::sleep(Duration::from_millis(20));
        }
        assert!(cap_output(pid, 4096, 1024).unwrap());
        let text = fs::read_to_string(&log).unwrap();
        assert!(text.len() <= 1100, "{}", text.len());
        assert!(text.starts_with("[bindery: log cut"), "{text}");
        assert!(text.trim_end().ends_with("line 2999"), "{text}");
        assert!(!cap_output(pid, 4096, 1024).unwrap());
        terminate(pid, start, Duration::from_millis(100));
        assert!(!is_alive(pid, start));
        fs::remove_dir_all(&dir).unwrap();
    }
}
