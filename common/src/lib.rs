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

/// Marks map keys and values as aya `Pod` (with the `user` feature), so the agent can read and
/// write them in maps. Only for `#[repr(C)]` types made of integers and integer arrays, with
/// every padding byte an explicit field.
macro_rules! plain_data {
    ($($t:ty),+ $(,)?) => {$(
        // SAFETY: `#[repr(C)]` with no implicit padding and only integer fields (the caller's
        // contract, checked by the layout tests): any bit pattern is a valid value and no byte
        // is ever uninitialised.
        #[cfg(feature = "user")]
        unsafe impl aya::Pod for $t {}
    )+};
}

pub mod addr;
pub mod globals;
pub mod inbound;
pub mod maps;
pub mod outbound;
pub mod rules;
pub mod tables;

pub use addr::Addr;
