//! rtnetlink messages on the wire, for the requests the agent makes (`local_addrs`,
//! `passthrough`) and their tests.
use netlink_packet_core::{NetlinkHeader, NetlinkMessage, NetlinkPayload};
use netlink_packet_route::RouteNetlinkMessage;

/// A request with these header `flags` (sequence number 1: one request per socket at a time).
pub fn request(flags: u16, payload: RouteNetlinkMessage) -> Vec<u8> {
    let mut header = NetlinkHeader::default();
    header.flags = flags;
    header.sequence_number = 1;
    encode(NetlinkMessage::new(
        header,
        NetlinkPayload::InnerMessage(payload),
    ))
}

/// `msg` with its length fields filled in, as bytes.
pub fn encode(mut msg: NetlinkMessage<RouteNetlinkMessage>) -> Vec<u8> {
    msg.finalize();
    let mut buf = vec![0; msg.buffer_len()];
    msg.serialize(&mut buf);
    buf
}
