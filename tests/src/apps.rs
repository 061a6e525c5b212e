//! Real programs inside simulated pods: nginx as an upstream app, HAProxy as the sidecar proxy,
//! curl as the client. Their configuration files live in a [`Scratch`] directory that goes
//! away with the test.
use std::{
    fs,
    os::unix::fs::{PermissionsExt, chown},
    path::{Path, PathBuf},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::{
    cmd::{self, Place, Proc},
    topology::Pod,
};

pub const NGINX: &str = "/usr/sbin/nginx";
pub const HAPROXY: &str = "/usr/sbin/haproxy";
pub const CURL: &str = "curl";

/// A per-test directory under the system temp dir, removed (with its contents) on drop.
pub struct Scratch {
    pub path: PathBuf,
}

impl Scratch {
    pub fn new(name: &str) -> Result<Self> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir()
            .join("meshsteer-tests")
            .join(format!("{name}-{}-{n}", std::process::id()));
        fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        // The apps below run unprivileged and need to traverse it.
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755))?;
        Ok(Self { path })
    }

    /// A subdirectory owned by `uid:gid`: where an unprivileged app may write its pid file,
    /// sockets and temporary files.
    pub fn dir_for(&self, name: &str, uid: u32, gid: u32) -> Result<PathBuf> {
        let dir = self.path.join(name);
        fs::create_dir_all(&dir)?;
        chown(&dir, Some(uid), Some(gid))?;
        Ok(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// Polls (with `ss`, in the pod's namespace) until `sockets` TCP sockets listen on `port`
/// (one per address family an app binds), and fails early if `proc` exits first (a config
/// error, a port already taken).
pub fn wait_listening(pod: &Pod, proc: &mut Proc, port: u16, sockets: usize) -> Result<()> {
    let place = Place {
        netns: Some(&pod.netns),
        ..Default::default()
    };
    let filter = format!("sport = :{port}");
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        if let Some(status) = proc.try_wait() {
            bail!(
                "{} exited ({status}) before listening on port {port}",
                proc.name
            );
        }
        let out = cmd::run(&place, "ss", &["-Hltn", &filter])?;
        if String::from_utf8_lossy(&out.stdout).lines().count() >= sockets {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("{} is not listening on port {port} after 10s", proc.name)
}

/// nginx serving on port 80 (IPv4 and IPv6) in `pod`, as `uid:gid`, in the foreground (the
/// [`Proc`] owns it). Every request gets one line describing how it arrived:
/// - `via=`: the `X-Mesh-Proxy` header (set only by the sidecar proxy),
/// - `orig=`: the `X-Mesh-Orig-Dst` header (the original destination the proxy learned),
/// - `peer=`: the address the connection came from.
pub fn start_nginx(pod: &Pod, scratch: &Scratch, uid: u32, gid: u32) -> Result<Proc> {
    let dir = scratch.dir_for("nginx", uid, gid)?;
    let conf = nginx_config(path_str(&dir))?;
    let conf_path = dir.join("nginx.conf");
    fs::write(&conf_path, conf)?;
    let conf_path = path_str(&conf_path);
    let args = ["-p", path_str(&dir), "-e", "stderr", "-c", conf_path];
    let mut full = args.to_vec();
    full.extend(["-g", "daemon off;"]);
    let mut proc = Proc::spawn(&pod.place(uid, gid), NGINX, &full)?;
    wait_listening(pod, &mut proc, 80, 2).context("starting nginx")?;
    Ok(proc)
}

/// [`start_nginx`]'s configuration, with its pid file and temporary files in `dir` (which
/// nginx must be able to write).
pub fn nginx_config(dir: &str) -> Result<String> {
    let d = dir;
    // Every temp path a module compiled in would otherwise create under /var/lib/nginx.
    let temp_paths: String = nginx_modules_with_temp_path()?
        .iter()
        .map(|m| format!("{m}_temp_path {d}/{m};\n  "))
        .collect();
    Ok(format!(
        r#"master_process off;
pid {d}/nginx.pid;
error_log stderr warn;
events {{}}
http {{
  access_log off;
  {temp_paths}server {{
    listen 80;
    listen [::]:80 ipv6only=on;
    location / {{
      return 200 "via=$http_x_mesh_proxy orig=$http_x_mesh_orig_dst peer=$remote_addr\n";
    }}
    location /both {{
      return 200 "out=$http_x_mesh_proxy in=$http_x_mesh_inbound peer=$remote_addr\n";
    }}
  }}
}}
"#
    ))
}

/// The `*_temp_path` directives this nginx build knows (`client_body`, `proxy`, ...).
fn nginx_modules_with_temp_path() -> Result<Vec<&'static str>> {
    let out = cmd::host(NGINX, &["-V"])?;
    // `nginx -V` prints its configure arguments on stderr.
    let configure = String::from_utf8_lossy(&out.stderr).into_owned();
    let mut modules = vec!["client_body"];
    for m in ["proxy", "fastcgi", "uwsgi", "scgi"] {
        if !configure.contains(&format!("--without-http_{m}_module")) {
            modules.push(m);
        }
    }
    Ok(modules)
}

/// HAProxy as an outbound sidecar in `pod`, as `uid:gid` (1337 under Istio's default
/// rules), listening on `port`:
/// - frontend `outbound` (IPv4) marks every request with `X-Mesh-Proxy: haproxy-outbound`
///   and the destination it learned for the connection (`X-Mesh-Orig-Dst`), and forwards it
///   there: `server s 0.0.0.0:0` makes HAProxy connect to the address it gets from
///   `getsockopt(SOL_IP, SO_ORIGINAL_DST)` on the accepted connection.
/// - frontend `outbound6` (IPv6) answers by itself with `via=haproxy-outbound6 peer=<source>`.
///   HAProxy (2.6) only asks for the original destination on IPv4 listeners; on IPv6 ones it
///   takes getsockname(), the proxy's own port, and `server 0.0.0.0:0` would forward every
///   request back to itself, without end.
///
/// Its stats socket is at [`haproxy_stats_socket`].
pub fn start_haproxy(pod: &Pod, scratch: &Scratch, uid: u32, gid: u32, port: u16) -> Result<Proc> {
    let body = format!(
        r#"{}
frontend outbound6
  bind :::{port} v6only
  http-request return status 200 content-type text/plain lf-string "via=haproxy-outbound6 peer=%[src]\n"
"#,
        haproxy_outbound_http(port)
    );
    start_haproxy_with(
        pod,
        scratch,
        "haproxy",
        (uid, gid),
        "http",
        &body,
        &[(port, 2)],
    )
}

/// HAProxy as an inbound sidecar in `pod` (as `uid:gid`), on `port` (15006): like Envoy's
/// inbound listener it marks each request (`X-Mesh-Inbound: haproxy-inbound`) and passes it
/// to the app at the connection's original destination (`server 0.0.0.0:0`: under meshsteer
/// the accepted socket's own local address, which SO_ORIGINAL_DST confirms), from 127.0.0.6,
/// the inbound-passthrough source the outbound rules leave alone.
pub fn start_haproxy_inbound(
    pod: &Pod,
    scratch: &Scratch,
    uid: u32,
    gid: u32,
    port: u16,
) -> Result<Proc> {
    let body = haproxy_inbound_http(port);
    start_haproxy_with(
        pod,
        scratch,
        "haproxy-inbound",
        (uid, gid),
        "http",
        &body,
        &[(port, 1)],
    )
}

/// [`start_haproxy`]'s IPv4 frontend `outbound` on `port` and its backend `orig` (HTTP mode):
/// each request marked and forwarded to the connection's original destination.
pub fn haproxy_outbound_http(port: u16) -> String {
    format!(
        r#"frontend outbound
  bind 0.0.0.0:{port}
  http-request set-header X-Mesh-Proxy haproxy-outbound
  http-request set-header X-Mesh-Orig-Dst "%[dst]:%[dst_port]"
  default_backend orig

backend orig
  server s 0.0.0.0:0
"#
    )
}

/// [`start_haproxy_inbound`]'s frontend `inbound` on `port` and its backend `app` (HTTP mode):
/// each request marked and passed to the app at the original destination, from 127.0.0.6.
pub fn haproxy_inbound_http(port: u16) -> String {
    format!(
        r#"frontend inbound
  bind 0.0.0.0:{port}
  http-request set-header X-Mesh-Inbound haproxy-inbound
  default_backend app

backend app
  server app 0.0.0.0:0 source 127.0.0.6
"#
    )
}

/// A whole sidecar at layer 4, as the benchmark uses it: outbound on 15001 (to the original
/// destination) and inbound on 15006 (to the app's original destination, from 127.0.0.6), in
/// one process like Envoy. TCP mode carries HTTP and iperf3 alike and keeps the proxy's own
/// cost small next to what is being measured: the capture.
pub fn start_sidecar(pod: &Pod, scratch: &Scratch, uid: u32, gid: u32) -> Result<Proc> {
    let body = r#"frontend outbound
  bind 0.0.0.0:15001
  default_backend orig

backend orig
  server s 0.0.0.0:0

frontend inbound
  bind 0.0.0.0:15006
  default_backend app

backend app
  server app 0.0.0.0:0 source 127.0.0.6
"#;
    let dir = format!("sidecar-{}", pod.name);
    start_haproxy_with(
        pod,
        scratch,
        &dir,
        (uid, gid),
        "tcp",
        body,
        &[(15001, 1), (15006, 1)],
    )
}

/// Writes `global` and `defaults` (in `mode`) plus `body`, starts HAProxy in the foreground
/// (`-db`, so the [`Proc`] owns it) and waits for `(port, sockets)` to listen. Its stats socket
/// is `<scratch>/<dir>/stats.sock`.
fn start_haproxy_with(
    pod: &Pod,
    scratch: &Scratch,
    dir: &str,
    (uid, gid): (u32, u32),
    mode: &str,
    body: &str,
    listens: &[(u16, usize)],
) -> Result<Proc> {
    let dir = scratch.dir_for(dir, uid, gid)?;
    let conf = haproxy_config(path_str(&dir), mode, body);
    let conf_path = dir.join("haproxy.cfg");
    fs::write(&conf_path, conf)?;
    let args = ["-db", "-f", path_str(&conf_path)];
    let mut proc = Proc::spawn(&pod.place(uid, gid), HAPROXY, &args)?;
    for (port, sockets) in listens {
        wait_listening(pod, &mut proc, *port, *sockets)
            .with_context(|| format!("starting haproxy ({})", dir.display()))?;
    }
    Ok(proc)
}

/// A whole HAProxy configuration: `global` (pid file and stats socket `stats.sock` in `dir`)
/// and `defaults` (in `mode`), then `body`.
pub fn haproxy_config(dir: &str, mode: &str, body: &str) -> String {
    let d = dir;
    format!(
        r#"global
  pidfile {d}/haproxy.pid
  stats socket {d}/stats.sock mode 600 level user
  maxconn 8000

defaults
  mode {mode}
  maxconn 8000
  timeout connect 3s
  timeout client 30s
  timeout server 30s

{body}"#
    )
}

pub fn haproxy_stats_socket(scratch: &Scratch) -> PathBuf {
    scratch.path.join("haproxy/stats.sock")
}

/// One command on HAProxy's stats socket (`show stat`, `show info`), its whole answer.
pub fn haproxy_command(socket: &Path, command: &str) -> Result<String> {
    use std::io::{Read, Write};
    let mut s = std::os::unix::net::UnixStream::connect(socket)
        .with_context(|| format!("connecting to {}", socket.display()))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(format!("{command}\n").as_bytes())?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

/// Sessions (`stot`) HAProxy counted for `proxy`/`server` (`FRONTEND`, `BACKEND` or a
/// server name), from `show stat`.
pub fn haproxy_sessions(socket: &Path, proxy: &str, server: &str) -> Result<u64> {
    let csv = haproxy_command(socket, "show stat")?;
    let mut lines = csv.lines();
    let header: Vec<&str> = lines
        .next()
        .and_then(|h| h.strip_prefix("# "))
        .context("show stat: no header")?
        .split(',')
        .collect();
    let col = header
        .iter()
        .position(|c| *c == "stot")
        .context("show stat: no stot column")?;
    for line in lines {
        let fields: Vec<&str> = line.split(',').collect();
        if fields.len() > col && fields[0] == proxy && fields[1] == server {
            return Ok(fields[col].parse()?);
        }
    }
    bail!("show stat: no {proxy}/{server} in\n{csv}")
}

/// `curl` in `pod` as `uid:gid`: the body of a GET of `url`, or the error curl reported.
pub fn http_get(pod: &Pod, uid: u32, gid: u32, url: &str) -> Result<String> {
    let out = cmd::run(
        &pod.place(uid, gid),
        CURL,
        // --noproxy: the test process's environment must not send curl elsewhere.
        &["-sS", "--fail", "--noproxy", "*", "--max-time", "5", url],
    )?;
    Ok(String::from_utf8(out.stdout)?)
}

fn path_str(p: &Path) -> &str {
    p.to_str().unwrap_or_default()
}
