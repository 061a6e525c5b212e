//! The `meshsteer` commands, one file each, and their arguments ([`args`]).
pub mod args;
pub mod cni;
pub mod explain;
pub mod install_cni;
pub mod mount_bpffs;
pub mod run;
pub mod status;
pub mod trace;
pub mod uninstall;
