//! Just enough of the BTF format (Documentation/bpf/btf.rst) to find struct member offsets in
//! the kernel's own BTF. aya parses BTF too, but keeps those types private.
use anyhow::{Context, Result, bail, ensure};

pub struct Btf<'a> {
    types: &'a [u8],
    strings: &'a [u8],
}

const MAGIC: u16 = 0xeb9f;
const KIND_STRUCT: u32 = 4;

fn u32_at(b: &[u8], at: usize) -> Result<u32> {
    let bytes = b.get(at..at + 4).context("truncated BTF")?;
    Ok(u32::from_le_bytes(bytes.try_into()?))
}

impl<'a> Btf<'a> {
    pub fn parse(data: &'a [u8]) -> Result<Self> {
        ensure!(
            data.len() >= 24 && u16::from_le_bytes([data[0], data[1]]) == MAGIC,
            "not little-endian BTF"
        );
        let hdr_len = u32_at(data, 4)? as usize;
        let (type_off, type_len) = (u32_at(data, 8)? as usize, u32_at(data, 12)? as usize);
        let (str_off, str_len) = (u32_at(data, 16)? as usize, u32_at(data, 20)? as usize);
        let section = |off: usize, len: usize| {
            data.get(hdr_len + off..hdr_len + off + len)
                .context("BTF section out of bounds")
        };
        Ok(Self {
            types: section(type_off, type_len)?,
            strings: section(str_off, str_len)?,
        })
    }

    fn name(&self, off: u32) -> &'a [u8] {
        let rest = self.strings.get(off as usize..).unwrap_or_default();
        &rest[..rest.iter().position(|b| *b == 0).unwrap_or(rest.len())]
    }

    /// Byte offset of `member` in the first struct named `strukt`.
    pub fn member_offset(&self, strukt: &str, member: &str) -> Result<u32> {
        let mut at = 0;
        while at < self.types.len() {
            let name = u32_at(self.types, at)?;
            let info = u32_at(self.types, at + 4)?;
            let (kind, vlen, kflag) = ((info >> 24) & 0x1f, info & 0xffff, info >> 31);
            let body = at + 12;
            if kind == KIND_STRUCT && self.name(name) == strukt.as_bytes() {
                for i in 0..vlen as usize {
                    let m = body + 12 * i;
                    if self.name(u32_at(self.types, m)?) == member.as_bytes() {
                        let raw = u32_at(self.types, m + 8)?;
                        // With kind_flag: bitfield size in the top 8 bits, offset below.
                        let (bitfield, bits) = if kflag == 1 {
                            (raw >> 24, raw & 0xff_ffff)
                        } else {
                            (0, raw)
                        };
                        ensure!(
                            bitfield == 0 && bits % 8 == 0,
                            "{strukt}::{member} is a bitfield"
                        );
                        return Ok(bits / 8);
                    }
                }
                bail!("struct {strukt} has no member {member}");
            }
            at = body + extra_len(kind, vlen)?;
        }
        bail!("no struct {strukt}")
    }
}

/// The running kernel's own BTF.
const VMLINUX: &str = "/sys/kernel/btf/vmlinux";

/// Byte offsets of `fields` (struct, member) in the running kernel's structs, in order: what
/// programs that read kernel memory need, as aya has no CO-RE for Rust programs.
pub fn kernel_offsets<const N: usize>(fields: [(&str, &str); N]) -> Result<[u32; N]> {
    let data = std::fs::read(VMLINUX).with_context(|| format!("reading {VMLINUX}"))?;
    offsets_in(&data, fields).with_context(|| format!("in {VMLINUX}"))
}

/// [`kernel_offsets`] in the BTF blob `data`.
pub fn offsets_in<const N: usize>(data: &[u8], fields: [(&str, &str); N]) -> Result<[u32; N]> {
    let btf = Btf::parse(data).context("parsing BTF")?;
    let mut out = [0; N];
    for (o, (s, m)) in out.iter_mut().zip(fields) {
        *o = btf
            .member_offset(s, m)
            .with_context(|| format!("the kernel has no struct {s}::{m}"))?;
    }
    Ok(out)
}

/// Bytes that follow a type's 12-byte header, by kind.
fn extra_len(kind: u32, vlen: u32) -> Result<usize> {
    let vlen = vlen as usize;
    Ok(match kind {
        // INT, VAR, DECL_TAG
        1 | 14 | 17 => 4,
        // PTR, FWD, TYPEDEF, VOLATILE, CONST, RESTRICT, FUNC, FLOAT, TYPE_TAG
        2 | 7..=12 | 16 | 18 => 0,
        // ARRAY
        3 => 12,
        // STRUCT, UNION, DATASEC, ENUM64
        4 | 5 | 15 | 19 => 12 * vlen,
        // ENUM, FUNC_PROTO
        6 | 13 => 8 * vlen,
        other => bail!("unknown BTF kind {other}"),
    })
}

#[cfg(test)]
mod tests {
    use super::Btf;

    /// A BTF blob: `int`, `struct sk_psock { int a; int msg_tot_len @12; }` and, with kind_flag
    /// set, `struct bits { int c @8; int b:3 @ bit 40; }`.
    fn blob() -> Vec<u8> {
        let strings = b"\0int\0sk_psock\0a\0msg_tot_len\0bits\0b\0c\0";
        let name = |s: &str| {
            let needle = format!("\0{s}\0");
            (strings
                .windows(needle.len())
                .position(|w| w == needle.as_bytes())
                .expect("name")
                + 1) as u32
        };
        let mut types = Vec::new();
        let mut push = |words: &[u32]| {
            for w in words {
                types.extend_from_slice(&w.to_le_bytes());
            }
        };
        push(&[name("int"), 1 << 24, 4, 32]);
        push(&[name("sk_psock"), (4 << 24) | 2, 16]);
        push(&[name("a"), 1, 0, name("msg_tot_len"), 1, 96]);
        push(&[name("bits"), (1 << 31) | (4 << 24) | 2, 16]);
        push(&[name("c"), 1, 64, name("b"), 1, (3 << 24) | 40]);
        let mut out = Vec::new();
        out.extend_from_slice(&0xeb9f_u16.to_le_bytes());
        out.extend_from_slice(&[1, 0]);
        for w in [
            24,
            0,
            types.len() as u32,
            types.len() as u32,
            strings.len() as u32,
        ] {
            out.extend_from_slice(&w.to_le_bytes());
        }
        out.extend_from_slice(&types);
        out.extend_from_slice(strings);
        out
    }

    #[test]
    fn finds_member_offsets() {
        let data = blob();
        let btf = Btf::parse(&data).unwrap();
        assert_eq!(btf.member_offset("sk_psock", "msg_tot_len").unwrap(), 12);
        assert_eq!(btf.member_offset("sk_psock", "a").unwrap(), 0);
        assert_eq!(btf.member_offset("bits", "c").unwrap(), 8);
        let e = |s, m| format!("{:#}", btf.member_offset(s, m).unwrap_err());
        assert!(e("bits", "b").contains("bitfield"));
        assert!(e("sk_psock", "nope").contains("no member nope"));
        assert!(e("sock", "sk_user_data").contains("no struct sock"));
    }

    #[test]
    fn refuses_what_is_not_btf() {
        assert!(Btf::parse(b"not btf at all, not at all").is_err());
        let mut data = blob();
        data.truncate(30);
        assert!(Btf::parse(&data).is_err());
    }
}
