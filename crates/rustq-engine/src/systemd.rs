//! systemd's notify protocol (`sd_notify(3)`), spoken as `sidekiq` speaks it, so a unit written
//! for Sidekiq (`Type=notify`, `WatchdogSec=`) runs `rustq-worker` unchanged: `READY=1` once the
//! process is registered and about to fetch, `WATCHDOG=1` every half `WATCHDOG_USEC` while the
//! runtime is alive, `STOPPING=1` when it begins to stop. Without `NOTIFY_SOCKET`, nothing.

use std::ffi::OsStr;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

/// The service manager's notification socket.
pub struct Notifier {
    socket: UnixDatagram,
    addr: SocketAddr,
}

impl Notifier {
    /// From `NOTIFY_SOCKET` (a path, or `@name` for an abstract socket); `None` when unset or
    /// unusable (logged).
    pub fn from_env() -> Option<Notifier> {
        let target = std::env::var_os("NOTIFY_SOCKET")?;
        match Notifier::new(&target) {
            Ok(notifier) => Some(notifier),
            Err(e) => {
                tracing::warn!(socket = ?target, error = %e, "cannot use systemd's NOTIFY_SOCKET");
                None
            }
        }
    }

    fn new(target: &OsStr) -> std::io::Result<Notifier> {
        let addr = match target.as_bytes().strip_prefix(b"@") {
            Some(name) => SocketAddr::from_abstract_name(name)?,
            None => SocketAddr::from_pathname(target)?,
        };
        let socket = UnixDatagram::unbound()?;
        // Never stall the runtime on a full socket: a lost notice is logged, not waited for.
        socket.set_nonblocking(true)?;
        Ok(Notifier { socket, addr })
    }

    /// Sends one state line (`READY=1`, `STOPPING=1`, `WATCHDOG=1`).
    pub fn notify(&self, state: &str) {
        if let Err(e) = self.socket.send_to_addr(state.as_bytes(), &self.addr) {
            tracing::warn!(state, error = %e, "systemd notification failed");
        }
    }
}

/// How often to ping systemd's watchdog: half of `WATCHDOG_USEC`, when it is set and meant for
/// this process (`WATCHDOG_PID` unset or ours).
pub fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.trim().parse().ok()?;
    if usec == 0 {
        return None;
    }
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.trim() != std::process::id().to_string() {
            return None;
        }
    }
    Some(Duration::from_micros(usec / 2))
}

/// Pings the watchdog until the process has stopped. It runs on the engine's runtime, so a
/// wedged runtime stops the pings and systemd restarts the process.
pub struct Watchdog {
    /// Where the pings go.
    pub notifier: std::sync::Arc<Notifier>,
    /// How often.
    pub every: Duration,
}

impl crate::service::Service for Watchdog {
    fn name(&self) -> &'static str {
        "watchdog"
    }

    fn run(self: Box<Self>) -> crate::service::BoxFuture<()> {
        Box::pin(async move {
            loop {
                tokio::time::sleep(self.every).await;
                self.notifier.notify("WATCHDOG=1");
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notices_reach_a_path_socket_and_an_abstract_one() {
        let dir = std::env::temp_dir().join(format!("rustq-notify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&path);
        let listener = UnixDatagram::bind(&path).unwrap();
        Notifier::new(path.as_os_str()).unwrap().notify("READY=1");
        let mut buf = [0u8; 64];
        let n = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");

        let name = format!("rustq-notify-test-{}", std::process::id());
        let abstract_listener =
            UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap())
                .unwrap();
        Notifier::new(OsStr::new(&format!("@{name}")))
            .unwrap()
            .notify("STOPPING=1");
        let n = abstract_listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"STOPPING=1");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
