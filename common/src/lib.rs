//! Types shared by meshsteer's eBPF programs and its agent.
//!
//! Everything that crosses the kernel/user boundary is a plain `#[repr(C)]` struct with explicit
//! padding, so both sides agree on the layout byte for byte. The capture decision itself lives
//! here too ([`outbound::decide`]): the eBPF programs and `meshsteer explain` run the very same
//! code, so they cannot disagree.
//!
//! Module dependencies point one way: [`addr`] and [`rules`] are leaves, [`maps`] builds on
//! them, and the decisions ([`outbound`], [`inbound`]) on all of it through [`tables`].
#![no_std]

pub mod addr;
pub mod inbound;
pub mod maps;
pub mod outbound;
pub mod rules;
pub mod tables;

#[cfg(feature = "user")]
mod user;

pub use addr::Addr;
