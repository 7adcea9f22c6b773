//! The log driver: a process containerd's shim starts next to each container (its
//! `binary://` logging scheme) that turns the container's stdout and stderr into JSON
//! lines in the alloc's log directory.
//!
//! Why a separate process rather than FIFOs drained by the agent: it is a child of the
//! shim, not of `mill`, so a `mill` restart neither loses nor blocks output; the agent
//! only reads the files.
//!
//! The protocol: the shim runs `mill agent-log-driver DIR` with the container's stdout
//! on fd 3, stderr on fd 4 and a pipe on fd 5 that the driver closes once it is ready.

use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::FromRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// The file the driver appends to; rotated files are named `<unix-nanos>.log`.
pub const CURRENT: &str = "current.log";
/// The driver's settings, written by the agent into the log directory.
pub const SETTINGS: &str = "driver.json";
/// Lines longer than this are split.
const MAX_LINE: usize = 16 * 1024;

/// What the agent tells the driver.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct DriverSettings {
    /// Rotate `current.log` once it is this large.
    pub rotate_bytes: u64,
}

/// One line as stored (the agent adds the alloc's name when serving it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredLine {
    /// RFC 3339 UTC with nanoseconds.
    pub ts: String,
    /// `stdout` or `stderr`.
    pub stream: String,
    /// The line, without its newline.
    pub line: String,
}

struct Writer {
    dir: PathBuf,
    file: File,
    written: u64,
    rotate_bytes: u64,
}

impl Writer {
    fn open(dir: &Path) -> std::io::Result<Writer> {
        let settings: DriverSettings = std::fs::read(dir.join(SETTINGS))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(DriverSettings {
                rotate_bytes: 8 << 20,
            });
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(CURRENT))?;
        let written = file.metadata()?.len();
        Ok(Writer {
            dir: dir.to_path_buf(),
            file,
            written,
            rotate_bytes: settings.rotate_bytes.max(4096),
        })
    }

    fn write(&mut self, stream: &str, line: &str) -> std::io::Result<()> {
        let record = StoredLine {
            ts: jiff::Timestamp::now().to_string(),
            stream: stream.to_string(),
            line: line.to_string(),
        };
        let mut bytes = serde_json::to_vec(&record).map_err(std::io::Error::other)?;
        bytes.push(b'\n');
        self.file.write_all(&bytes)?;
        self.written += bytes.len() as u64;
        if self.written >= self.rotate_bytes {
            let nanos = jiff::Timestamp::now().as_nanosecond();
            std::fs::rename(
                self.dir.join(CURRENT),
                self.dir.join(format!("{nanos}.log")),
            )?;
            self.file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.dir.join(CURRENT))?;
            self.written = 0;
        }
        Ok(())
    }
}

/// Runs the driver until the container closes both streams.
pub fn run(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    // SAFETY: containerd's binary logging protocol hands this process exactly these
    // three descriptors (stdout pipe, stderr pipe, ready pipe) and nothing else in the
    // process owns or closes them.
    let (stdout, stderr, ready) = unsafe {
        (
            File::from_raw_fd(3),
            File::from_raw_fd(4),
            File::from_raw_fd(5),
        )
    };
    let writer = Arc::new(Mutex::new(Writer::open(dir)?));
    drop(ready);
    let pump = |source: File, stream: &'static str| {
        let writer = writer.clone();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(source);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match reader.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
                while buf.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                    buf.pop();
                }
                let text = String::from_utf8_lossy(&buf);
                let mut writer = writer.lock().unwrap_or_else(|p| p.into_inner());
                for piece in split(&text) {
                    if writer.write(stream, piece).is_err() {
                        return;
                    }
                }
            }
        })
    };
    let a = pump(stdout, "stdout");
    let b = pump(stderr, "stderr");
    a.join().ok();
    b.join().ok();
    Ok(())
}

/// Splits a line into pieces of at most [`MAX_LINE`] bytes on char boundaries.
fn split(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = text;
    while rest.len() > MAX_LINE {
        let mut cut = MAX_LINE;
        while !rest.is_char_boundary(cut) {
            cut -= 1;
        }
        out.push(&rest[..cut]);
        rest = &rest[cut..];
    }
    out.push(rest);
    out
}
