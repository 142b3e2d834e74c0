//! Servers a test starts for itself on a spare port, so it can restart or
//! empty them without touching the shared ones.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A port nobody listens on right now.
pub fn spare_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a spare port")
}

fn wait_until(what: &str, timeout: Duration, mut ready: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ready() {
        assert!(start.elapsed() < timeout, "{what} did not come up in {timeout:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A Redis of this test's own, keeping nothing on disk.
pub struct PrivateRedis {
    pub port: u16,
    child: Option<Child>,
}

impl PrivateRedis {
    pub fn start() -> Self {
        let mut redis = Self {
            port: spare_port(),
            child: None,
        };
        redis.spawn();
        redis
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        self.child = Some(child);
        let port = self.port;
        wait_until("redis-server", Duration::from_secs(10), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
    }

    /// Stops it (SIGKILL): everything in it is gone.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops it and starts it again, empty, on the same port.
    pub fn restart_empty(&mut self) {
        self.stop();
        self.spawn();
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A PostgreSQL cluster of this test's own (trust auth, user postgres),
/// run as the `postgres` OS user when the test runs as root.
pub struct PrivatePostgres {
    pub port: u16,
    dir: PathBuf,
    bin: PathBuf,
}

fn as_postgres(program: &Path) -> Command {
    let is_root = std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false);
    if is_root {
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", "postgres", "--"]).arg(program);
        cmd
    } else {
        Command::new(program)
    }
}

impl PrivatePostgres {
    pub fn start(label: &str) -> Self {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .expect("PostgreSQL server binaries in /usr/lib/postgresql")
            .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
            .filter(|p| p.join("initdb").exists())
            .max()
            .expect("an initdb");
        let dir = std::env::temp_dir().join(format!("{label}-pg-{}", spare_port()));
        std::fs::create_dir_all(&dir).unwrap();
        let _ = Command::new("chown")
            .args(["postgres:postgres"])
            .arg(&dir)
            .status();
        let status = as_postgres(&bin.join("initdb"))
            .args(["-A", "trust", "-U", "postgres", "--no-sync", "-D"])
            .arg(dir.join("data"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("initdb");
        assert!(status.success(), "initdb failed");
        let pg = Self {
            port: spare_port(),
            dir,
            bin,
        };
        pg.ctl(&["start"]);
        pg
    }

    fn ctl(&self, args: &[&str]) {
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -k {} -c fsync=off",
            self.port,
            self.dir.display()
        );
        let status = as_postgres(&self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(["-w", "-m", "fast", "-o", &options, "-l"])
            .arg(self.dir.join("log"))
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("pg_ctl");
        assert!(status.success(), "pg_ctl {args:?} failed");
    }

    /// A URL for database `db` on it.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// Restarts it (fast shutdown: open connections are cut).
    pub fn restart(&self) {
        self.ctl(&["restart"]);
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let _ = as_postgres(&self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(["-m", "immediate", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// GET `path` from `addr` (host:port): the status code and the body.
pub fn http_get(addr: &str, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).expect("connect to the metrics address");
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    if let Err(e) = stream.write_all(request.as_bytes()) {
        return (0, format!("request not sent: {e}"));
    }
    let mut response = String::new();
    if let Err(e) = stream.read_to_string(&mut response) {
        return (0, format!("no response: {e}"));
    }
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// The value of the first sample of metric `name` with `labels` (as they
/// appear between the braces) in a Prometheus text body.
pub fn metric(body: &str, name: &str, labels: &str) -> f64 {
    let wanted = if labels.is_empty() {
        name.to_owned()
    } else {
        format!("{name}{{{labels}}}")
    };
    body.lines()
        .find_map(|line| {
            line.strip_prefix(&wanted)
                .and_then(|rest| rest.trim().parse().ok())
        })
        .unwrap_or(0.0)
}

/// Every command a Redis server receives, as `redis-cli monitor` prints
/// them, collected while the monitor lives: a test can wait until a
/// worker's job loop has made a given call.
pub struct RedisMonitor {
    child: Child,
    lines: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl RedisMonitor {
    /// Starts monitoring the Redis at `url` (`redis://host:port`).
    pub fn start(url: &str) -> Self {
        let authority = url.trim_start_matches("redis://").trim_end_matches('/');
        let (host, port) = authority.rsplit_once(':').unwrap_or((authority, "6379"));
        let mut child = Command::new("redis-cli")
            .args(["-h", host, "-p", port, "monitor"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-cli monitor");
        let stdout = child.stdout.take().expect("monitor output");
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
                sink.lock().expect("monitor lines").push(line);
            }
        });
        let monitor = Self { child, lines };
        wait_until("redis-cli monitor", Duration::from_secs(10), || {
            monitor
                .lines
                .lock()
                .expect("monitor lines")
                .iter()
                .any(|l| l == "OK")
        });
        monitor
    }

    /// When (server time, seconds) each command whose line contains every
    /// one of `parts` was received.
    fn times_of(&self, parts: &[&str]) -> Vec<f64> {
        self.lines
            .lock()
            .expect("monitor lines")
            .iter()
            .filter(|line| parts.iter().all(|p| line.contains(p)))
            .filter_map(|line| line.split_whitespace().next()?.parse().ok())
            .collect()
    }

    /// Waits until commands containing every one of `parts` have been
    /// received over at least `span`: the first and the latest of them that
    /// far apart.
    pub fn wait_for_span(&self, parts: &[&str], span: Duration, timeout: Duration) {
        wait_until(
            &format!("Redis commands with {parts:?} over {span:?}"),
            timeout,
            || {
                let times = self.times_of(parts);
                matches!((times.first(), times.last()), (Some(a), Some(b)) if b - a >= span.as_secs_f64())
            },
        );
    }
}

impl Drop for RedisMonitor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
