//! Just enough ELF reading to learn a shared library's SONAME and a program's RUNPATH without
//! binutils. Only the headers, the dynamic section and the wanted strings are read: libLLVM is
//! hundreds of megabytes.

use anyhow::{Context, Result, bail, ensure};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

const SHT_DYNAMIC: u32 = 6;
const DT_NULL: u64 = 0;
const DT_SONAME: u64 = 14;
const DT_RPATH: u64 = 15;
const DT_RUNPATH: u64 = 29;
/// Bounds what a corrupt header can make us allocate.
const MAX_READ: u64 = 16 << 20;

/// The parts of an ELF file's dynamic section we care about.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Dynamic {
    pub soname: Option<String>,
    /// DT_RUNPATH (or the older DT_RPATH) entries, in order.
    pub runpath: Vec<String>,
}

/// Reads the dynamic section of the 64-bit little-endian ELF file at `path`.
pub fn read_dynamic(path: &Path) -> Result<Dynamic> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    parse(|offset, len| {
        let mut buf = vec![0; len];
        file.read_exact_at(&mut buf, offset)?;
        Ok(buf)
    })
    .with_context(|| format!("reading the ELF dynamic section of {}", path.display()))
}

struct Section {
    kind: u32,
    offset: u64,
    size: u64,
    link: u32,
}

/// Parses through `read(offset, len)`, so tests can feed bytes and files are read piecemeal.
fn parse(read: impl Fn(u64, usize) -> std::io::Result<Vec<u8>>) -> Result<Dynamic> {
    let header = read(0, 64).context("reading the ELF header")?;
    ensure!(header.starts_with(b"\x7fELF"), "not an ELF file");
    ensure!(
        header[4] == 2 && header[5] == 1,
        "not a 64-bit little-endian ELF file"
    );
    let table_offset = u64_at(&header, 0x28);
    let entry_size = u16_at(&header, 0x3a) as usize;
    let count = u16_at(&header, 0x3c) as usize;
    if count == 0 {
        return Ok(Dynamic::default());
    }
    ensure!(entry_size >= 0x40, "bad section header size {entry_size}");
    let table = read(table_offset, entry_size * count).context("reading section headers")?;
    let sections: Vec<Section> = table
        .chunks_exact(entry_size)
        .map(|h| Section {
            kind: u32_at(h, 0x04),
            offset: u64_at(h, 0x18),
            size: u64_at(h, 0x20),
            link: u32_at(h, 0x28),
        })
        .collect();
    let Some(dynamic) = sections.iter().find(|s| s.kind == SHT_DYNAMIC) else {
        return Ok(Dynamic::default());
    };
    let Some(strings) = sections.get(dynamic.link as usize) else {
        bail!(
            "dynamic section links to missing string table {}",
            dynamic.link
        );
    };
    ensure!(dynamic.size <= MAX_READ, "dynamic section too large");
    let entries = read(dynamic.offset, dynamic.size as usize).context("reading .dynamic")?;
    let string = |offset: u64| read_cstr(&read, strings, offset);

    let mut found = Dynamic::default();
    let mut rpath = Vec::new();
    for entry in entries.chunks_exact(16) {
        let (tag, value) = (u64_at(entry, 0), u64_at(entry, 8));
        match tag {
            DT_NULL => break,
            DT_SONAME => found.soname = Some(string(value)?),
            DT_RUNPATH => found.runpath = split_path_list(&string(value)?),
            DT_RPATH => rpath = split_path_list(&string(value)?),
            _ => {}
        }
    }
    // The loader ignores DT_RPATH when DT_RUNPATH is present.
    if found.runpath.is_empty() {
        found.runpath = rpath;
    }
    Ok(found)
}

/// Reads the NUL-terminated string at `offset` in the string table, a chunk at a time.
fn read_cstr(
    read: &impl Fn(u64, usize) -> std::io::Result<Vec<u8>>,
    table: &Section,
    offset: u64,
) -> Result<String> {
    const CHUNK: u64 = 4096;
    let mut bytes = Vec::new();
    let mut at = offset;
    while at < table.size && (bytes.len() as u64) < MAX_READ {
        let len = CHUNK.min(table.size - at);
        let chunk = read(table.offset + at, len as usize).context("reading a string")?;
        if let Some(end) = chunk.iter().position(|&b| b == 0) {
            bytes.extend_from_slice(&chunk[..end]);
            return String::from_utf8(bytes).context("string is not UTF-8");
        }
        bytes.extend_from_slice(&chunk);
        at += len;
    }
    bail!("unterminated string at offset {offset}")
}

fn split_path_list(list: &str) -> Vec<String> {
    list.split(':')
        .filter(|p| !p.is_empty())
        .map(str::to_owned)
        .collect()
}

fn u16_at(bytes: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(bytes[at..at + 2].try_into().expect("2 bytes"))
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal ELF64: header, string table, dynamic section, then three section headers
    /// (null, .dynstr, .dynamic).
    fn synthetic_elf(dynamic: &[(u64, &str)]) -> Vec<u8> {
        let mut strtab = vec![0u8];
        let mut entries = Vec::new();
        for (tag, value) in dynamic {
            entries.push((*tag, strtab.len() as u64));
            strtab.extend_from_slice(value.as_bytes());
            strtab.push(0);
        }
        entries.push((DT_NULL, 0));
        while strtab.len() % 8 != 0 {
            strtab.push(0);
        }
        let strtab_offset = 64u64;
        let dynamic_offset = strtab_offset + strtab.len() as u64;
        let dynamic_size = entries.len() as u64 * 16;
        let table_offset = dynamic_offset + dynamic_size;

        let mut elf = vec![0u8; 64];
        elf[..6].copy_from_slice(b"\x7fELF\x02\x01");
        elf[0x28..0x30].copy_from_slice(&table_offset.to_le_bytes());
        elf[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes());
        elf[0x3c..0x3e].copy_from_slice(&3u16.to_le_bytes());
        elf.extend_from_slice(&strtab);
        for (tag, value) in entries {
            elf.extend_from_slice(&tag.to_le_bytes());
            elf.extend_from_slice(&value.to_le_bytes());
        }
        let header = |kind: u32, offset: u64, size: u64, link: u32| {
            let mut h = vec![0u8; 64];
            h[0x04..0x08].copy_from_slice(&kind.to_le_bytes());
            h[0x18..0x20].copy_from_slice(&offset.to_le_bytes());
            h[0x20..0x28].copy_from_slice(&size.to_le_bytes());
            h[0x28..0x2c].copy_from_slice(&link.to_le_bytes());
            h
        };
        elf.extend(header(0, 0, 0, 0));
        elf.extend(header(3, strtab_offset, strtab.len() as u64, 0));
        elf.extend(header(SHT_DYNAMIC, dynamic_offset, dynamic_size, 1));
        elf
    }

    fn parse_bytes(bytes: &[u8]) -> Result<Dynamic> {
        parse(|offset, len| {
            let start = offset as usize;
            bytes
                .get(start..start + len)
                .map(<[u8]>::to_vec)
                .ok_or_else(|| std::io::ErrorKind::UnexpectedEof.into())
        })
    }

    #[test]
    fn reads_soname_and_runpath() {
        let elf = synthetic_elf(&[
            (DT_SONAME, "libLLVM.so.22.1-rust-1.97.0-nightly"),
            (DT_RUNPATH, "/tmp/boot/llvm/lib:$ORIGIN/../lib"),
        ]);
        let found = parse_bytes(&elf).unwrap();
        assert_eq!(
            found.soname.as_deref(),
            Some("libLLVM.so.22.1-rust-1.97.0-nightly")
        );
        assert_eq!(found.runpath, ["/tmp/boot/llvm/lib", "$ORIGIN/../lib"]);
    }

    #[test]
    fn runpath_wins_over_rpath() {
        let elf = synthetic_elf(&[(DT_RPATH, "/old"), (DT_RUNPATH, "/new")]);
        assert_eq!(parse_bytes(&elf).unwrap().runpath, ["/new"]);
        let elf = synthetic_elf(&[(DT_RPATH, "/old")]);
        assert_eq!(parse_bytes(&elf).unwrap().runpath, ["/old"]);
    }

    #[test]
    fn no_dynamic_entries() {
        assert_eq!(
            parse_bytes(&synthetic_elf(&[])).unwrap(),
            Dynamic::default()
        );
    }

    #[test]
    fn rejects_non_elf() {
        let mut text = b"INPUT(libLLVM.so.22.1-rust-1.97.0-nightly)\n".to_vec();
        text.resize(64, b' ');
        assert!(parse_bytes(&text).is_err());
        assert!(parse_bytes(b"short").is_err());
    }

    #[test]
    fn reads_a_real_binary() {
        let exe = std::env::current_exe().unwrap();
        // Test binaries are linked without RUNPATH; what matters is that parsing copes.
        assert!(read_dynamic(&exe).unwrap().soname.is_none());
    }
}
