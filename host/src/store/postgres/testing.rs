//! A real PostgreSQL for tests: a throwaway cluster started from the installed server binaries (Debian's
//! `postgresql` package, `/usr/lib/postgresql/<version>/bin`), or an existing server named by
//! `FLOWHOST_TEST_POSTGRES_URL` (a URL whose user may create databases, e.g.
//! `postgres://postgres@127.0.0.1:5432/postgres`).
//!
//! One cluster serves a whole test binary ([`TestDatabase::create`] makes a fresh database in it for each test), so
//! the suite pays for `initdb` once. The cluster runs under a small shell script that holds the read end of a pipe
//! from the test process: when the process ends, however it ends (a panic, SIGKILL), the pipe closes and the script
//! stops the server and removes its directory. As root (CI), `initdb` and the server run as the `postgres` user, who
//! owns the directory.
//!
//! Without the binaries or the variable, [`TestDatabase::create`] prints that the test was skipped and why, and
//! returns `None`; when the `CI` variable is set it panics instead, so CI never passes without having run them.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Mutex, OnceLock};

/// The variable that points the tests at an existing server instead of a throwaway cluster.
pub const URL_VARIABLE: &str = "FLOWHOST_TEST_POSTGRES_URL";

/// Runs a throwaway cluster until its stdin closes, then stops it and removes its directory. $1 the binaries, $2 the
/// port, $3 extra server settings. Prints `dir <path>`, then `ready` once the server takes connections.
const CLUSTER_SCRIPT: &str = r#"
set -eu
bin=$1; port=$2; settings=$3
dir=$(mktemp -d "${TMPDIR:-/tmp}/flowhost-postgres.XXXXXX")
if [ "$(id -u)" = 0 ]; then chown postgres: "$dir"; as="runuser -u postgres --"; else as=""; fi
cleanup() { $as "$bin/pg_ctl" -D "$dir/data" -m immediate stop >/dev/null 2>&1 || true; rm -rf "$dir"; }
trap cleanup EXIT
echo "dir $dir"
$as "$bin/initdb" -D "$dir/data" -A trust -U postgres --no-sync -E UTF8 >"$dir/initdb.log" 2>&1 \
  || { cat "$dir/initdb.log" >&2; exit 1; }
$as "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
  -o "-p $port -k $dir -c listen_addresses=127.0.0.1 $settings" start >/dev/null \
  || { cat "$dir/server.log" >&2; exit 1; }
echo ready
cat >/dev/null || true
"#;

/// Where the installed server binaries are: the newest `/usr/lib/postgresql/<version>/bin` with `initdb`.
pub fn server_binaries() -> Option<PathBuf> {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let version = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, bin)| bin)
}

/// A throwaway cluster on 127.0.0.1, stopped and removed when dropped (or when the process ends).
pub struct TestCluster {
    port: u16,
    dir: PathBuf,
    bin: PathBuf,
    script: Child,
    keepalive: Option<ChildStdin>,
}

impl TestCluster {
    /// Starts a cluster on a free port. `settings` are extra server options (`-c name=value …`).
    pub fn start(settings: &str) -> Result<Self, String> {
        let bin = server_binaries().ok_or_else(|| {
            "no PostgreSQL server binaries in /usr/lib/postgresql/*/bin (Debian's `postgresql` package)".to_string()
        })?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .map_err(|e| format!("no free port: {e}"))?
            .port();
        let mut script = Command::new("bash")
            .arg("-c")
            .arg(CLUSTER_SCRIPT)
            .arg("flowhost-test-postgres")
            .arg(&bin)
            .arg(port.to_string())
            .arg(settings)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot run bash: {e}"))?;
        let keepalive = script.stdin.take();
        let mut lines = BufReader::new(script.stdout.take().ok_or("no stdout")?).lines();
        let mut dir = None;
        loop {
            match lines.next() {
                Some(Ok(line)) if line.starts_with("dir ") => dir = Some(PathBuf::from(&line[4..])),
                Some(Ok(line)) if line == "ready" => break,
                Some(Ok(_)) => {}
                _ => {
                    let mut error = String::new();
                    if let Some(mut stderr) = script.stderr.take() {
                        let _ = std::io::Read::read_to_string(&mut stderr, &mut error);
                    }
                    let _ = script.wait();
                    return Err(format!("the throwaway PostgreSQL cluster did not start: {error}"));
                }
            }
        }
        let dir = dir.ok_or("the cluster script named no directory")?;
        Ok(TestCluster { port, dir, bin, script, keepalive })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The URL of database `database` as the superuser.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// Stops the server (fast shutdown: connections are cut), keeping its data.
    pub fn stop(&self) {
        self.pg_ctl(&["stop", "-m", "fast", "-w"]);
    }

    /// Starts the server again after [`stop`](Self::stop), on the same port.
    pub fn restart(&self) {
        let options = format!("-p {} -k {} -c listen_addresses=127.0.0.1", self.port, self.dir.display());
        let log = self.dir.join("server.log");
        self.pg_ctl(&["start", "-w", "-t", "60", "-l", log.to_str().unwrap_or("server.log"), "-o", &options]);
    }

    fn pg_ctl(&self, args: &[&str]) {
        let data = self.dir.join("data");
        let pg_ctl = self.bin.join("pg_ctl");
        let mut command = if is_root() {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(pg_ctl);
            command
        } else {
            Command::new(pg_ctl)
        };
        let status = command.arg("-D").arg(&data).args(args).stdout(Stdio::null()).status();
        assert!(status.is_ok_and(|status| status.success()), "pg_ctl {args:?} failed");
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        // The script stops the server and removes the directory once its stdin closes.
        drop(self.keepalive.take());
        let _ = self.script.wait();
    }
}

fn is_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|output| String::from_utf8_lossy(&output.stdout).trim() == "0")
}

/// The server the tests of this process share: `FLOWHOST_TEST_POSTGRES_URL`'s, or a throwaway cluster started on
/// first use (and never dropped: it goes when the process ends). The admin URL, or why there is none.
fn shared_server() -> &'static Result<String, String> {
    static SERVER: OnceLock<Result<String, String>> = OnceLock::new();
    static CLUSTER: Mutex<Option<TestCluster>> = Mutex::new(None);
    SERVER.get_or_init(|| {
        if let Ok(url) = std::env::var(URL_VARIABLE)
            && !url.is_empty()
        {
            return Ok(url);
        }
        let cluster = TestCluster::start("-c fsync=off -c max_connections=300")?;
        let url = cluster.url("postgres");
        *CLUSTER.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(cluster);
        // Kept in a static, so never dropped: the script cleans up when the process ends.
        Ok(url)
    })
}

/// Says loudly that a test did not run, or fails it when `CI` is set.
fn skip(test: &str, why: &str) {
    if std::env::var_os("CI").is_some() {
        panic!("{test}: needs PostgreSQL, and CI must run it: {why}");
    }
    eprintln!(
        "\n*** SKIPPED {test}: it needs PostgreSQL: {why}. Install Debian's `postgresql` package (the tests start a \
         throwaway cluster from its binaries) or set {URL_VARIABLE} to a server's URL. ***\n"
    );
}

/// A fresh, empty database for one test, dropped (on an existing server) when the guard is dropped; on a throwaway
/// cluster it goes with the cluster.
pub struct TestDatabase {
    url: String,
    admin: String,
    name: String,
}

impl TestDatabase {
    /// A new database on the shared server, or `None` (after saying so) when there is no server to use.
    pub async fn create(test: &str) -> Option<TestDatabase> {
        let admin = match shared_server() {
            Ok(url) => url.clone(),
            Err(why) => {
                skip(test, why);
                return None;
            }
        };
        let name = format!("flowhost_test_{}", uuid::Uuid::new_v4().simple());
        let mut conn = connect(&admin).await;
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("cannot create a test database: {e}"));
        let _ = sqlx::Connection::close(conn).await;
        let mut url = url::Url::parse(&admin).expect("the admin URL");
        url.set_path(&name);
        Some(TestDatabase { url: url.to_string(), admin, name })
    }

    /// The database's URL (with `parameters`, e.g. `pool_size=2`, when not empty).
    pub fn url(&self, parameters: &str) -> String {
        if parameters.is_empty() {
            return self.url.clone();
        }
        let separator = if self.url.contains('?') { '&' } else { '?' };
        format!("{}{separator}{parameters}", self.url)
    }

    /// A store on the database: each call is another "process" (its own pools).
    pub async fn store(&self) -> super::PostgresStore {
        self.store_with("").await
    }

    pub async fn store_with(&self, parameters: &str) -> super::PostgresStore {
        let location = super::location::PostgresLocation::parse(&self.url(parameters)).expect("a test URL");
        super::PostgresStore::open(&location).await.unwrap_or_else(|e| panic!("cannot open the test store: {e}"))
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        if std::env::var(URL_VARIABLE).map_or(true, |url| url.is_empty()) {
            return;
        }
        let (admin, name) = (self.admin.clone(), self.name.clone());
        // A runtime of its own: the test's may be shutting down.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
            runtime.block_on(async {
                let mut conn = connect(&admin).await;
                let drop = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
                let _ = sqlx::query(sqlx::AssertSqlSafe(drop)).execute(&mut conn).await;
            });
            Some(())
        })
        .join();
    }
}

async fn connect(url: &str) -> sqlx::PgConnection {
    use std::str::FromStr;
    let options = sqlx::postgres::PgConnectOptions::from_str(url).expect("a PostgreSQL URL");
    sqlx::ConnectOptions::connect(&options).await.unwrap_or_else(|e| panic!("cannot connect to the test server: {e}"))
}
