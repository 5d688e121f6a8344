//! A Postgres server of one test's own, in a temporary directory on a free port, that the
//! test may crash (`stop -m immediate`) and start again without touching the server every
//! other test uses. Run as the `postgres` user when the suite runs as root (initdb refuses
//! root).

use std::path::PathBuf;
use std::process::Command;

pub struct PrivatePostgres {
    server: Server,
}

/// Where the server lives; cheap to hand to a blocking task.
#[derive(Clone)]
struct Server {
    dir: PathBuf,
    port: u16,
    bin: PathBuf,
}

impl PrivatePostgres {
    /// initdb (trust authentication) and start; panics with what failed.
    pub async fn start() -> Self {
        let server = tokio::task::spawn_blocking(|| {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|listener| listener.local_addr())
                .expect("a free port")
                .port();
            let dir = std::env::temp_dir().join(format!("cr-pg-{}", uuid::Uuid::new_v4().simple()));
            std::fs::create_dir(&dir).expect("a directory for the server");
            if is_root() {
                run(Command::new("chown").arg("postgres:postgres").arg(&dir));
            }
            let server = Server {
                dir,
                port,
                bin: server_binaries(),
            };
            let data = server.data();
            server.as_owner(&[
                "initdb",
                "-D",
                &data,
                "-U",
                "postgres",
                "--auth=trust",
                "--no-sync",
            ]);
            server.start();
            server
        })
        .await
        .expect("private Postgres");
        Self { server }
    }

    pub fn addr(&self) -> std::net::SocketAddr {
        ([127, 0, 0, 1], self.server.port).into()
    }

    pub fn admin_url(&self) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/postgres",
            self.server.port
        )
    }

    /// Kills the server the way a crash or a power cut would: no shutdown checkpoint,
    /// every session cut.
    pub async fn crash(&self) {
        let server = self.server.clone();
        tokio::task::spawn_blocking(move || server.stop())
            .await
            .unwrap();
    }

    /// Starts the server again (crash recovery runs first).
    pub async fn start_again(&self) {
        let server = self.server.clone();
        tokio::task::spawn_blocking(move || server.start())
            .await
            .unwrap();
    }
}

impl Server {
    fn data(&self) -> String {
        self.dir.join("data").display().to_string()
    }

    fn start(&self) {
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -k {} -c fsync=off",
            self.port,
            self.dir.display()
        );
        let log = self.dir.join("server.log").display().to_string();
        self.as_owner(&[
            "pg_ctl",
            "-D",
            &self.data(),
            "-l",
            &log,
            "-o",
            &options,
            "-w",
            "start",
        ]);
    }

    fn stop(&self) {
        self.as_owner(&[
            "pg_ctl",
            "-D",
            &self.data(),
            "-m",
            "immediate",
            "-w",
            "stop",
        ]);
    }

    /// Runs a server binary as the data directory's owner.
    fn command(&self, program: &str) -> Command {
        let program = self.bin.join(program);
        if is_root() {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(program);
            command
        } else {
            Command::new(program)
        }
    }

    fn as_owner(&self, args: &[&str]) {
        run(self.command(args[0]).args(&args[1..]));
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let data = self.server.data();
        let _ = self
            .server
            .command("pg_ctl")
            .args(["-D", &data, "-m", "immediate", "stop"])
            .output();
        let _ = std::fs::remove_dir_all(&self.server.dir);
    }
}

/// Debian's server binaries (`scripts/ensure-postgres` installs them), newest version.
fn server_binaries() -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("Postgres server binaries under /usr/lib/postgresql (scripts/test installs them)")
        .filter_map(|entry| entry.ok().map(|entry| entry.path().join("bin")))
        .filter(|bin| bin.join("initdb").exists())
        .collect();
    versions.sort();
    versions
        .pop()
        .expect("an initdb under /usr/lib/postgresql/*/bin")
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| out.stdout.starts_with(b"0\n"))
}

fn run(command: &mut Command) {
    let out = command.output().expect("the command runs");
    assert!(
        out.status.success(),
        "{command:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
