//! The built `meshsteer-cni` binary, run as a runtime runs it (CNI_* environment, config on
//! stdin), against a fake agent: a unix listener in a temporary directory that records the
//! requests and answers scripted replies. No root needed.

use std::io::Write;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use meshsteer_cni::env::host_path;
use meshsteer_cni::proto::{self, Command as Op, PodRef, Reply, Request};
use serde_json::{Value, json};

/// A temporary directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "meshsteer-cni-bin-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn socket(&self) -> PathBuf {
        self.0.join("cni.sock")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A fake agent on `socket` that answers one connection per reply, in order, and returns the
/// requests it got.
fn agent(socket: &Path, replies: Vec<Reply>) -> JoinHandle<Vec<Request>> {
    let listener = UnixListener::bind(socket).unwrap();
    thread::spawn(move || {
        replies
            .into_iter()
            .map(|reply| {
                let (stream, _) = listener.accept().unwrap();
                let request: Request = proto::read_message(&stream).unwrap();
                proto::write_message(&stream, &reply).unwrap();
                request
            })
            .collect()
    })
}

struct Run {
    code: i32,
    stdout: Value,
    stdout_raw: String,
    stderr: String,
    took: Duration,
}

const ARGS: &str = "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=cart-0;\
                    K8S_POD_INFRA_CONTAINER_ID=c0ffee;K8S_POD_UID=6f1d3c2a-0b1e-4c5d-9e8f-7a6b5c4d3e2f";

/// Runs the binary with `command`, the kubelet's CNI_ARGS unless `env` overrides, and `conf`
/// on stdin.
fn run(command: &str, env: &[(&str, &str)], conf: &Value) -> Run {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_meshsteer-cni"));
    cmd.env_clear()
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", "c0ffee")
        .env("CNI_NETNS", "/var/run/netns/cni-1234")
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", "/opt/cni/bin")
        .env("CNI_ARGS", ARGS);
    for (k, v) in env {
        if v.is_empty() {
            cmd.env_remove(k);
        } else {
            cmd.env(k, v);
        }
    }
    let start = Instant::now();
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(&serde_json::to_vec(conf).unwrap())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout_raw = String::from_utf8(out.stdout).unwrap();
    Run {
        code: out.status.code().unwrap(),
        stdout: if stdout_raw.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&stdout_raw).unwrap()
        },
        stdout_raw,
        stderr: String::from_utf8(out.stderr).unwrap(),
        took: start.elapsed(),
    }
}

/// What the bridge plugin hands on (1.0.0): two host interfaces, the pod's eth0.
fn prev_result(version: &str) -> Value {
    json!({
        "cniVersion": version,
        "interfaces": [
            {"name": "cni0", "mac": "0a:58:0a:f4:01:01"},
            {"name": "veth3a1b", "mac": "6e:1c:22:9b:00:01"},
            {"name": "eth0", "mac": "0a:58:0a:f4:01:07", "sandbox": "/var/run/netns/cni-1234"}
        ],
        "ips": [
            {"address": "10.244.1.7/24", "gateway": "10.244.1.1", "interface": 2},
            {"address": "fd00:10:244:1::7/64", "gateway": "fd00:10:244:1::1", "interface": 2}
        ],
        "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}],
        "dns": {"nameservers": ["10.96.0.10"], "search": ["svc.cluster.local"]}
    })
}

fn conf(version: &str, socket: &Path, extra: Value) -> Value {
    let mut conf = json!({
        "cniVersion": version,
        "name": "k8s-pod-network",
        "type": "meshsteer-cni",
        "agentSocket": socket,
        "timeoutSeconds": 5,
        "prevResult": prev_result(version),
    });
    for (k, v) in extra.as_object().unwrap() {
        if v.is_null() {
            conf.as_object_mut().unwrap().remove(k);
        } else {
            conf[k] = v.clone();
        }
    }
    conf
}

fn pod() -> PodRef {
    PodRef {
        namespace: "shop".into(),
        name: "cart-0".into(),
        uid: "6f1d3c2a-0b1e-4c5d-9e8f-7a6b5c4d3e2f".into(),
    }
}

#[test]
fn add_captured_prints_prev_result_back() {
    for version in ["1.0.0", "0.4.0", "0.3.1"] {
        let dir = TempDir::new();
        let agent = agent(&dir.socket(), vec![Reply::Captured]);
        let r = run("ADD", &[], &conf(version, &dir.socket(), json!({})));
        assert_eq!(r.code, 0, "{version}: {}{}", r.stdout_raw, r.stderr);
        assert_eq!(r.stdout, prev_result(version), "{version}");
        assert!(r.stdout_raw.ends_with('\n'));
        let requests = agent.join().unwrap();
        assert_eq!(
            requests,
            [Request {
                command: Op::Add,
                pod: pod(),
                container_id: "c0ffee".into(),
                // As the agent can open it (/var/run may be a symlink to /run here).
                netns: Some(host_path(Path::new("/var/run/netns/cni-1234"))),
                ifname: "eth0".into(),
                ips: vec![
                    "10.244.1.7".parse().unwrap(),
                    "fd00:10:244:1::7".parse().unwrap()
                ],
            }]
        );
        assert!(r.stderr.contains("captured"), "{}", r.stderr);
    }
}

#[test]
fn add_not_meshed_succeeds_unchanged() {
    let dir = TempDir::new();
    let agent = agent(
        &dir.socket(),
        vec![Reply::NotMeshed {
            why: "no istio-proxy container".into(),
        }],
    );
    let r = run("ADD", &[], &conf("1.0.0", &dir.socket(), json!({})));
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.stdout, prev_result("1.0.0"));
    agent.join().unwrap();
}

#[test]
fn add_refused_fails_with_the_reason() {
    let dir = TempDir::new();
    let reason = "unsupported annotation traffic.sidecar.istio.io/kubevirtInterfaces";
    let agent = agent(
        &dir.socket(),
        vec![
            Reply::Refused {
                reason: reason.into(),
            },
            Reply::Failed {
                reason: "cgroup of pod not found".into(),
            },
        ],
    );
    let r = run("ADD", &[], &conf("0.4.0", &dir.socket(), json!({})));
    assert_eq!(r.code, 1);
    assert_eq!(r.stdout["cniVersion"], "0.4.0");
    assert_eq!(r.stdout["code"], 100);
    assert_eq!(
        r.stdout["msg"],
        format!("meshsteer refused pod shop/cart-0: {reason}")
    );
    assert!(r.stdout["details"].is_string());
    let r = run("ADD", &[], &conf("1.0.0", &dir.socket(), json!({})));
    assert_eq!((r.code, &r.stdout["code"]), (1, &json!(101)));
    assert!(
        r.stdout["msg"]
            .as_str()
            .unwrap()
            .contains("cgroup of pod not found")
    );
    agent.join().unwrap();
}

#[test]
fn add_without_an_agent_fails_after_the_timeout_naming_the_socket() {
    let dir = TempDir::new();
    let socket = dir.socket();
    let r = run(
        "ADD",
        &[],
        &conf("1.0.0", &socket, json!({"timeoutSeconds": 1})),
    );
    assert_eq!(r.code, 1);
    assert_eq!(r.stdout["code"], 11);
    let msg = r.stdout["msg"].as_str().unwrap();
    assert!(
        msg.starts_with(&format!(
            "meshsteer agent not reachable at {} for 1s: ",
            socket.display()
        )),
        "{msg}"
    );
    // It kept trying for the whole timeout.
    assert!(r.took >= Duration::from_secs(1), "{:?}", r.took);
    assert!(r.stderr.contains("not reachable"), "{}", r.stderr);
}

#[test]
fn add_waits_for_an_agent_that_is_starting() {
    let dir = TempDir::new();
    let socket = dir.socket();
    let late = {
        let socket = socket.clone();
        thread::spawn(move || {
            thread::sleep(Duration::from_millis(500));
            agent(&socket, vec![Reply::Captured]).join().unwrap()
        })
    };
    let r = run("ADD", &[], &conf("1.0.0", &socket, json!({})));
    assert_eq!(r.code, 0, "{}", r.stdout_raw);
    assert_eq!(r.stdout, prev_result("1.0.0"));
    assert_eq!(late.join().unwrap().len(), 1);
}

#[test]
fn add_needs_a_chain_and_a_pod() {
    let dir = TempDir::new();
    let socket = dir.socket();
    let r = run(
        "ADD",
        &[],
        &conf("1.0.0", &socket, json!({"prevResult": null})),
    );
    assert_eq!((r.code, &r.stdout["code"]), (1, &json!(7)));
    assert!(r.stdout["msg"].as_str().unwrap().contains("chained"));

    let r = run(
        "ADD",
        &[("CNI_ARGS", "K8S_POD_NAMESPACE=shop;K8S_POD_NAME=cart-0")],
        &conf("1.0.0", &socket, json!({})),
    );
    assert_eq!((r.code, &r.stdout["code"]), (1, &json!(4)));
    assert!(r.stdout["msg"].as_str().unwrap().contains("K8S_POD_UID"));

    let r = run(
        "ADD",
        &[("CNI_NETNS", "")],
        &conf("1.0.0", &socket, json!({})),
    );
    assert_eq!((r.code, &r.stdout["code"]), (1, &json!(4)));
    assert!(r.stdout["msg"].as_str().unwrap().contains("CNI_NETNS"));

    let r = run(
        "ADD",
        &[],
        &conf("1.0.0", &socket, json!({"timeoutSeconds": 0})),
    );
    assert_eq!((r.code, &r.stdout["code"]), (1, &json!(7)));
    assert!(r.stdout["msg"].as_str().unwrap().contains("timeoutSeconds"));

    let r = run("ADD", &[], &conf("0.2.0", &socket, json!({})));
    assert_eq!((r.code, &r.stdout["code"]), (1, &json!(1)));
}

#[test]
fn del_without_an_agent_succeeds_at_once() {
    let dir = TempDir::new();
    // The longest timeout: DEL must not wait for it.
    let conf = conf("1.0.0", &dir.socket(), json!({"timeoutSeconds": 300}));
    for _ in 0..2 {
        let r = run("DEL", &[], &conf);
        assert_eq!(r.code, 0, "{}", r.stdout_raw);
        assert_eq!(r.stdout_raw, "");
        assert!(r.stderr.contains("not reachable"), "{}", r.stderr);
        assert!(r.took < Duration::from_secs(60), "{:?}", r.took);
    }
}

#[test]
fn del_twice_and_without_netns() {
    let dir = TempDir::new();
    let agent = agent(&dir.socket(), vec![Reply::Removed, Reply::Removed]);
    let conf = conf("1.0.0", &dir.socket(), json!({}));
    assert_eq!(run("DEL", &[], &conf).code, 0);
    let r = run("DEL", &[("CNI_NETNS", "")], &conf);
    assert_eq!(r.code, 0, "{}", r.stdout_raw);
    let requests = agent.join().unwrap();
    assert_eq!(requests[0].command, Op::Del);
    assert_eq!(
        requests[0].netns,
        Some(host_path(Path::new("/var/run/netns/cni-1234")))
    );
    assert_eq!(requests[1].netns, None);
    assert_eq!(requests[1].pod, pod());

    // Without the pod's identity there can be no enrolment: nothing to ask.
    let r = run("DEL", &[("CNI_ARGS", "")], &conf);
    assert_eq!(r.code, 0, "{}", r.stdout_raw);
}

#[test]
fn check() {
    let dir = TempDir::new();
    let agent = agent(
        &dir.socket(),
        vec![
            Reply::Captured,
            Reply::NotMeshed { why: "n/a".into() },
            Reply::Removed,
            Reply::Failed {
                reason: "connect4 program detached from the pod's cgroup".into(),
            },
        ],
    );
    let conf = conf("1.0.0", &dir.socket(), json!({}));
    for _ in 0..2 {
        let r = run("CHECK", &[], &conf);
        assert_eq!((r.code, r.stdout_raw.as_str()), (0, ""));
    }
    let r = run("CHECK", &[], &conf);
    assert_eq!((r.code, &r.stdout["code"]), (1, &json!(103)));
    let r = run("CHECK", &[], &conf);
    assert_eq!((r.code, &r.stdout["code"]), (1, &json!(101)));
    assert!(r.stdout["msg"].as_str().unwrap().contains("detached"));
    let requests = agent.join().unwrap();
    assert!(requests.iter().all(|r| r.command == Op::Check));

    // No agent: capture cannot be in effect.
    let r = run("CHECK", &[], &conf);
    assert_eq!((r.code, &r.stdout["code"]), (1, &json!(11)));
    // CHECK does not exist before 0.4.0.
    let r = run("CHECK", &[], &conf_v("0.3.1", &dir.socket()));
    assert_eq!((r.code, &r.stdout["code"]), (1, &json!(1)));
}

fn conf_v(version: &str, socket: &Path) -> Value {
    conf(version, socket, json!({}))
}

#[test]
fn a_garbled_reply_is_a_protocol_error() {
    let dir = TempDir::new();
    let listener = UnixListener::bind(dir.socket()).unwrap();
    let fake = thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let _: Request = proto::read_message(&stream).unwrap();
        stream.write_all(b"{\"reply\":\"ok\"}\n").unwrap();
    });
    let r = run("ADD", &[], &conf_v("1.0.0", &dir.socket()));
    assert_eq!((r.code, &r.stdout["code"]), (1, &json!(102)));
    fake.join().unwrap();
}

#[test]
fn version() {
    let r = run("VERSION", &[], &json!({"cniVersion": "1.0.0"}));
    assert_eq!(r.code, 0);
    assert_eq!(
        r.stdout,
        json!({"cniVersion": "1.0.0",
               "supportedVersions": ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]})
    );
    let r = run("VERSION", &[], &json!({"cniVersion": "0.4.0"}));
    assert_eq!(r.stdout["cniVersion"], "0.4.0");
}

#[test]
fn gc_and_status() {
    let dir = TempDir::new();
    let conf = json!({"cniVersion": "1.1.0", "name": "k8s-pod-network", "type": "meshsteer-cni",
                      "agentSocket": dir.socket(),
                      "cni.dev/valid-attachments": [{"containerID": "c0ffee", "ifname": "eth0"}]});
    let r = run("GC", &[], &conf);
    assert_eq!((r.code, r.stdout_raw.as_str()), (0, ""));
    let r = run("STATUS", &[], &conf);
    assert_eq!((r.code, &r.stdout["code"]), (1, &json!(50)));
    let _listener = UnixListener::bind(dir.socket()).unwrap();
    let r = run("STATUS", &[], &conf);
    assert_eq!((r.code, r.stdout_raw.as_str()), (0, ""), "{}", r.stderr);
}
