//! The plugin ↔ agent protocol on the agent's unix socket.
//!
//! One connection carries one exchange: the plugin writes one [`Request`], the agent answers
//! with one [`Reply`], each as a single line of JSON ending in `\n`. A message is at most
//! [`MAX_MESSAGE`] bytes with its newline, so neither side reads without bound from a bad peer.
//!
//! Both sides share these types. The plugin uses the blocking [`read_message`] and
//! [`write_message`]; the agent frames lines on its own async stream and calls [`encode`] and
//! [`decode`].

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::IpAddr;
use std::path::PathBuf;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Where the agent listens unless the plugin's config says otherwise (`agentSocket`).
pub const DEFAULT_SOCKET: &str = "/run/meshsteer/cni.sock";

/// The longest message either side accepts, its terminating newline included.
pub const MAX_MESSAGE: usize = 64 * 1024;

/// The CNI operation the plugin was run for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Command {
    /// Enrol the pod; reply once its capture is in effect (or it needs none).
    Add,
    /// Remove the pod's enrolment; a pod the agent does not know is already removed.
    Del,
    /// Say whether the pod's capture is (still) in effect.
    Check,
}

/// The pod, from CNI_ARGS (`K8S_POD_NAMESPACE`, `K8S_POD_NAME`, `K8S_POD_UID`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodRef {
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

/// What the plugin asks of the agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Request {
    pub command: Command,
    pub pod: PodRef,
    /// CNI_CONTAINERID: the sandbox's id.
    pub container_id: String,
    /// CNI_NETNS: the pod's network namespace. DEL may come without it (the namespace may be
    /// gone already).
    pub netns: Option<PathBuf>,
    /// CNI_IFNAME: the pod's interface.
    pub ifname: String,
    /// The pod's addresses, from the chain's `prevResult` (best effort for DEL and CHECK,
    /// whose `prevResult` may be missing: then empty).
    pub ips: Vec<IpAddr>,
}

/// The agent's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "camelCase")]
pub enum Reply {
    /// The pod's capture is in effect (ADD, CHECK).
    Captured,
    /// The pod needs no capture, by the Kubernetes mode's pod selection (ADD, CHECK).
    NotMeshed { why: String },
    /// The pod is not enrolled (any more): DEL's success, whether or not it was known.
    Removed,
    /// Capture cannot be applied to this pod (an unsupported annotation, over budget, …). The
    /// plugin fails, so the pod never runs uncaptured.
    Refused { reason: String },
    /// Anything else went wrong; the plugin fails.
    Failed { reason: String },
}

/// A message that could not be read, written or parsed.
#[derive(Debug, thiserror::Error)]
pub enum ProtoError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("message longer than {MAX_MESSAGE} bytes")]
    TooLarge,
    #[error("connection closed before a complete message ({0} bytes, no newline)")]
    Truncated(usize),
    #[error("malformed message: {0}")]
    Json(#[from] serde_json::Error),
}

/// `msg` as one line of JSON, newline included.
pub fn encode<T: Serialize>(msg: &T) -> Vec<u8> {
    // Our types are structs, enums, strings and addresses: always representable in JSON.
    let mut line = serde_json::to_vec(msg).expect("protocol messages always serialize");
    line.push(b'\n');
    line
}

/// One message from `line`, with or without its newline. Fails on anything over
/// [`MAX_MESSAGE`], so the agent can apply the same cap as [`read_message`].
pub fn decode<T: DeserializeOwned>(line: &[u8]) -> Result<T, ProtoError> {
    if line.len() > MAX_MESSAGE {
        return Err(ProtoError::TooLarge);
    }
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    Ok(serde_json::from_slice(line)?)
}

/// Writes `msg` as one line. The caller bounds the time with the stream's write timeout.
pub fn write_message<T: Serialize>(mut stream: impl Write, msg: &T) -> Result<(), ProtoError> {
    stream.write_all(&encode(msg))?;
    stream.flush()?;
    Ok(())
}

/// Reads one line, at most [`MAX_MESSAGE`] bytes, and parses it. The caller bounds the time
/// with the stream's read timeout. Bytes after the newline are not read (one message per
/// connection).
pub fn read_message<T: DeserializeOwned>(stream: impl Read) -> Result<T, ProtoError> {
    // One byte over the cap tells an overlong line from one that just fits.
    let mut reader = BufReader::new(stream.take(MAX_MESSAGE as u64 + 1));
    let mut line = Vec::new();
    reader.read_until(b'\n', &mut line)?;
    if line.last() != Some(&b'\n') {
        return Err(if line.len() > MAX_MESSAGE {
            ProtoError::TooLarge
        } else {
            ProtoError::Truncated(line.len())
        });
    }
    decode(&line)
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};
    use std::os::unix::net::UnixStream;

    use serde_json::json;

    use super::*;

    fn request() -> Request {
        Request {
            command: Command::Add,
            pod: PodRef {
                namespace: "shop".into(),
                name: "cart-0".into(),
                uid: "0f9a1c52-4d1e-4f43-9b1a-3d2c6e5f7a80".into(),
            },
            container_id: "abc123".into(),
            netns: Some("/var/run/netns/cni-1".into()),
            ifname: "eth0".into(),
            ips: vec![
                IpAddr::V4(Ipv4Addr::new(10, 244, 0, 7)),
                IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 7)),
            ],
        }
    }

    #[test]
    fn request_wire_shape() {
        let line = encode(&request());
        assert_eq!(line.last(), Some(&b'\n'));
        assert_eq!(line.iter().filter(|&&b| b == b'\n').count(), 1);
        let value: serde_json::Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(
            value,
            json!({
                "command": "ADD",
                "pod": {"namespace": "shop", "name": "cart-0",
                        "uid": "0f9a1c52-4d1e-4f43-9b1a-3d2c6e5f7a80"},
                "containerId": "abc123",
                "netns": "/var/run/netns/cni-1",
                "ifname": "eth0",
                "ips": ["10.244.0.7", "fd00::7"],
            })
        );
        assert_eq!(decode::<Request>(&line).unwrap(), request());
    }

    #[test]
    fn del_without_netns() {
        let req = Request {
            command: Command::Del,
            netns: None,
            ips: vec![],
            ..request()
        };
        let value: serde_json::Value = serde_json::from_slice(&encode(&req)).unwrap();
        assert_eq!(value["command"], "DEL");
        assert_eq!(value["netns"], serde_json::Value::Null);
        assert_eq!(decode::<Request>(&encode(&req)).unwrap(), req);
    }

    #[test]
    fn reply_wire_shapes() {
        let cases = [
            (Reply::Captured, json!({"reply": "captured"})),
            (
                Reply::NotMeshed {
                    why: "no sidecar".into(),
                },
                json!({"reply": "notMeshed", "why": "no sidecar"}),
            ),
            (Reply::Removed, json!({"reply": "removed"})),
            (
                Reply::Refused { reason: "r".into() },
                json!({"reply": "refused", "reason": "r"}),
            ),
            (
                Reply::Failed { reason: "f".into() },
                json!({"reply": "failed", "reason": "f"}),
            ),
        ];
        for (reply, wire) in cases {
            let line = encode(&reply);
            assert_eq!(
                serde_json::from_slice::<serde_json::Value>(&line).unwrap(),
                wire
            );
            assert_eq!(decode::<Reply>(&line).unwrap(), reply);
        }
        assert!(matches!(
            decode::<Reply>(br#"{"reply":"maybe"}"#),
            Err(ProtoError::Json(_))
        ));
    }

    #[test]
    fn one_message_over_a_socket() {
        let (a, b) = UnixStream::pair().unwrap();
        write_message(&a, &request()).unwrap();
        assert_eq!(read_message::<Request>(&b).unwrap(), request());
        write_message(&b, &Reply::Captured).unwrap();
        assert_eq!(read_message::<Reply>(&a).unwrap(), Reply::Captured);
    }

    #[test]
    fn overlong_and_truncated_messages_are_refused() {
        // A line that never ends stops at the cap, without reading the rest.
        let endless = io::repeat(b' ');
        assert!(matches!(
            read_message::<Reply>(endless),
            Err(ProtoError::TooLarge)
        ));
        assert!(matches!(
            decode::<Reply>(&vec![b' '; MAX_MESSAGE + 1]),
            Err(ProtoError::TooLarge)
        ));
        // Exactly at the cap (newline included) is accepted.
        let mut line = br#"{"reply":"captured"}"#.to_vec();
        line.resize(MAX_MESSAGE - 1, b' ');
        line.push(b'\n');
        assert_eq!(read_message::<Reply>(&line[..]).unwrap(), Reply::Captured);
        // A peer that closes mid-line.
        assert!(matches!(
            read_message::<Reply>(&br#"{"reply":"capt"#[..]),
            Err(ProtoError::Truncated(14))
        ));
        assert!(matches!(
            read_message::<Reply>(&b""[..]),
            Err(ProtoError::Truncated(0))
        ));
    }
}
