//! A real nginx (Debian's) on loopback serving a directory, for HTTP remotes in tests.
//! Each listening port is one "mirror"; requests are logged with their Range and status.

use super::free_port;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct Nginx {
    child: Child,
    pub ports: Vec<u16>,
    dir: PathBuf,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM lets the master stop its workers (SIGKILL would leave them behind); SIGKILL
        // only if it has not exited within a few seconds.
        if let Ok(pid) = i32::try_from(self.child.id()) {
            // SAFETY: kill(2) with a pid this process started and has not reaped yet.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let start = std::time::Instant::now();
        while start.elapsed() < std::time::Duration::from_secs(5) {
            if self.child.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Nginx {
    /// Serves `root` on `mirrors` loopback ports. `limit_rate` (bytes/s per connection) if set.
    pub fn start(root: &Path, work: &Path, mirrors: usize, limit_rate: Option<u64>) -> Nginx {
        let nginx = ["/usr/sbin/nginx", "/usr/bin/nginx"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .expect("nginx is required for this test (the README's test command installs nginx-light)");
        std::fs::create_dir_all(work.join("tmp")).unwrap();
        let ports: Vec<u16> = (0..mirrors).map(|_| free_port()).collect();
        let mut servers = String::new();
        for (i, p) in ports.iter().enumerate() {
            servers.push_str(&format!(
                "server {{ listen 127.0.0.1:{p}; root {root}; access_log {work}/access{i}.log ranges; {rate} location / {{ }} }}\n",
                root = root.display(),
                work = work.display(),
                rate = limit_rate.map(|r| format!("limit_rate {r};")).unwrap_or_default(),
            ));
        }
        // SAFETY: geteuid has no preconditions.
        let user = if unsafe { libc::geteuid() } == 0 { "user root;" } else { "" };
        let conf = format!(
            "daemon off; {user} worker_processes 1; error_log {w}/error.log; pid {w}/nginx.pid;\n\
             events {{ worker_connections 256; }}\n\
             http {{ log_format ranges '$request \"$http_range\" $status $body_bytes_sent';\n\
             client_body_temp_path {w}/tmp; proxy_temp_path {w}/tmp; fastcgi_temp_path {w}/tmp;\n\
             uwsgi_temp_path {w}/tmp; scgi_temp_path {w}/tmp; default_type application/octet-stream;\n\
             {servers} }}\n",
            w = work.display()
        );
        let conf_path = work.join("nginx.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let child = Command::new(nginx)
            .arg("-c")
            .arg(&conf_path)
            .arg("-p")
            .arg(work)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let n = Nginx { child, ports, dir: work.to_path_buf() };
        for p in &n.ports {
            super::wait_until(
                Duration::from_secs(60),
                &format!("nginx to listen on {p} ({})", n.dir.display()),
                || std::net::TcpStream::connect(("127.0.0.1", *p)).is_ok(),
            );
        }
        n
    }

    pub fn url(&self, mirror: usize, path: &str) -> String {
        format!("http://127.0.0.1:{}/{}", self.ports[mirror], path.trim_start_matches('/'))
    }

    pub fn access_log(&self, mirror: usize) -> String {
        std::fs::read_to_string(self.dir.join(format!("access{mirror}.log"))).unwrap_or_default()
    }

    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("error.log")).unwrap_or_default()
    }
}
