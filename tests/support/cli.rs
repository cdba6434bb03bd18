//! The `minch` command-line client run as a process (needs the `cli` feature, which builds it):
//! its output collected through pipes as it comes, and every run bounded (killed, and the test
//! failed with its output, if it has not exited within [`RUN_LIMIT`]).

use std::{
    io::{Read, Write},
    process::{Child, ChildStdin, Command, Stdio},
    sync::{Arc, Mutex},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use super::PROXY_VARIABLES;

/// The `minch` binary Cargo built for these tests.
pub const BIN: &str = env!("CARGO_BIN_EXE_minch");

/// The longest a run of the binary may take before the test kills it and fails.
pub const RUN_LIMIT: Duration = Duration::from_secs(30);

/// How long to wait for a line of output.
pub const WAIT: Duration = Duration::from_secs(15);

/// How long the output may take to arrive in full once the process has exited.
const OUTPUT_END: Duration = Duration::from_secs(5);

/// A running `minch` (or a shell running it), its output collected as it comes; killed when
/// dropped.
pub struct Run {
    child: Child,
    pub stdin: Option<ChildStdin>,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
    readers: Vec<JoinHandle<()>>,
}

/// How a run ended.
#[derive(Debug)]
pub struct Ended {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// Starts `minch` with these arguments, stdin, stdout and stderr piped, and colour left to
/// its defaults (NO_COLOR removed from the environment).
pub fn minch(args: &[&str]) -> Run {
    minch_with(args, |_| {})
}

/// [`minch`], with `configure` applied to the command last (so it can set NO_COLOR, or give
/// no stdin, for one).
pub fn minch_with(args: &[&str], configure: impl FnOnce(&mut Command)) -> Run {
    let mut command = Command::new(BIN);
    command.args(args);
    defaults(&mut command);
    configure(&mut command);
    start(command)
}

/// Starts `command` (minch, or a shell running it) with its streams piped and NO_COLOR removed.
pub fn spawn(mut command: Command) -> Run {
    defaults(&mut command);
    start(command)
}

/// Removes the proxy variables ([`PROXY_VARIABLES`]) from the command's environment.
pub fn without_proxy_variables(command: &mut Command) {
    for name in PROXY_VARIABLES {
        command.env_remove(name);
    }
}

fn defaults(command: &mut Command) {
    command
        .env_remove("NO_COLOR")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
}

fn start(mut command: Command) -> Run {
    let mut child = command.spawn().expect("start minch");
    let collect = |mut stream: Box<dyn Read + Send>| {
        let text = Arc::new(Mutex::new(String::new()));
        let sink = Arc::clone(&text);
        let reader = std::thread::spawn(move || {
            let mut buffer = [0u8; 4096];
            while let Ok(n) = stream.read(&mut buffer) {
                if n == 0 {
                    break;
                }
                let chunk = String::from_utf8_lossy(&buffer[..n]).into_owned();
                sink.lock().unwrap().push_str(&chunk);
            }
        });
        (text, reader)
    };
    let (stdout, out_reader) = collect(Box::new(child.stdout.take().unwrap()));
    let (stderr, err_reader) = collect(Box::new(child.stderr.take().unwrap()));
    Run {
        stdin: child.stdin.take(),
        child,
        stdout,
        stderr,
        readers: vec![out_reader, err_reader],
    }
}

impl Run {
    /// The process id (to send it a signal).
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    pub fn stdout(&self) -> String {
        self.stdout.lock().unwrap().clone()
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits until stderr contains `needle` `times` times; panics with the output otherwise.
    #[track_caller]
    pub fn wait_stderr(&self, needle: &str, times: usize) {
        let deadline = Instant::now() + WAIT;
        while self.stderr().matches(needle).count() < times {
            assert!(
                Instant::now() < deadline,
                "no {needle:?} (x{times}) on stderr in {WAIT:?}\nstdout:\n{}\nstderr:\n{}",
                self.stdout(),
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[track_caller]
    pub fn wait_stdout(&self, needle: &str) {
        let deadline = Instant::now() + WAIT;
        while !self.stdout().contains(needle) {
            assert!(
                Instant::now() < deadline,
                "no {needle:?} on stdout in {WAIT:?}\nstdout:\n{}\nstderr:\n{}",
                self.stdout(),
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn type_line(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin still open");
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .expect("write to minch's stdin");
        stdin.flush().expect("flush minch's stdin");
    }

    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// Waits for the exit (at most [`RUN_LIMIT`]), then for the rest of the output.
    #[track_caller]
    pub fn finish(mut self) -> Ended {
        let deadline = Instant::now() + RUN_LIMIT;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("wait for minch") {
                break status;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "minch did not exit within {RUN_LIMIT:?}\nstdout:\n{}\nstderr:\n{}",
                    self.stdout(),
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        // The readers end at the pipes' end, right after the exit: 100 ms at least, then until
        // both have ended (bounded, in case something the process started still holds a pipe).
        std::thread::sleep(Duration::from_millis(100));
        let deadline = Instant::now() + OUTPUT_END;
        while !self.readers.iter().all(JoinHandle::is_finished) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        Ended {
            code: status.code(),
            stdout: self.stdout(),
            stderr: self.stderr(),
        }
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Ended {
    #[track_caller]
    pub fn assert_code(&self, code: i32) {
        assert_eq!(
            self.code,
            Some(code),
            "exit code\nstdout:\n{}\nstderr:\n{}",
            self.stdout,
            self.stderr
        );
    }
}
