//! Just enough of a BTF reader to find struct member offsets in the running
//! kernel's `/sys/kernel/btf/vmlinux` (aya-obj keeps member offsets private).
//! Format: include/uapi/linux/btf.h — a header, a type section of
//! variable-length records, and a string section.

use std::collections::HashMap;

use mcpscope_common::FileOffsets;

/// Why offsets could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    /// The file could not be read.
    #[error("reading {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// Not a BTF blob, or cut short.
    #[error("malformed BTF: {0}")]
    Malformed(&'static str),
    /// A struct or member this kernel does not have.
    #[error("BTF has no {0}")]
    Missing(String),
}

const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;

struct Member {
    name: u32,
    ty: u32,
    bit_offset: u32,
}

struct Type {
    name: u32,
    kind: u32,
    members: Vec<Member>,
}

/// Struct layouts of one BTF blob.
pub struct Btf<'a> {
    strings: &'a [u8],
    types: Vec<Type>,
    by_name: HashMap<&'a str, u32>,
}

fn u32_at(b: &[u8], off: usize) -> Result<u32, BtfError> {
    b.get(off..off + 4)
        .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
        .ok_or(BtfError::Malformed("truncated"))
}

impl<'a> Btf<'a> {
    /// Parses a little-endian BTF blob (all structs, no other kinds kept).
    pub fn parse(data: &'a [u8]) -> Result<Self, BtfError> {
        if data.len() < 24 || data[0..2] != [0x9f, 0xeb] {
            return Err(BtfError::Malformed("bad magic"));
        }
        let hdr_len = u32_at(data, 4)? as usize;
        let type_off = u32_at(data, 8)? as usize;
        let type_len = u32_at(data, 12)? as usize;
        let str_off = u32_at(data, 16)? as usize;
        let str_len = u32_at(data, 20)? as usize;
        let types_bytes = data
            .get(hdr_len + type_off..hdr_len + type_off + type_len)
            .ok_or(BtfError::Malformed("type section"))?;
        let strings = data
            .get(hdr_len + str_off..hdr_len + str_off + str_len)
            .ok_or(BtfError::Malformed("string section"))?;
        // Type ids start at 1; index 0 is the implicit void.
        let mut types = vec![Type {
            name: 0,
            kind: 0,
            members: Vec::new(),
        }];
        let mut by_name = HashMap::new();
        let mut off = 0;
        while off < types_bytes.len() {
            let name = u32_at(types_bytes, off)?;
            let info = u32_at(types_bytes, off + 4)?;
            let kind = (info >> 24) & 0x1f;
            let vlen = (info & 0xffff) as usize;
            let kind_flag = info >> 31 == 1;
            off += 12;
            let mut members = Vec::new();
            let extra = match kind {
                1 | 14 | 17 => 4, // INT, VAR, DECL_TAG
                3 => 12,          // ARRAY
                4 | 5 => {
                    for i in 0..vlen {
                        let m = off + i * 12;
                        let raw = u32_at(types_bytes, m + 8)?;
                        let bit_offset = if kind_flag { raw & 0xff_ffff } else { raw };
                        members.push(Member {
                            name: u32_at(types_bytes, m)?,
                            ty: u32_at(types_bytes, m + 4)?,
                            bit_offset,
                        });
                    }
                    vlen * 12
                }
                6 | 13 => vlen * 8,        // ENUM, FUNC_PROTO
                15 | 19 => vlen * 12,      // DATASEC, ENUM64
                2 | 7..=12 | 16 | 18 => 0, // PTR, FWD, TYPEDEF, qualifiers, FUNC, FLOAT, TYPE_TAG
                _ => return Err(BtfError::Malformed("unknown kind")),
            };
            off += extra;
            let id = types.len() as u32;
            if kind == KIND_STRUCT && name != 0 {
                if let Ok(n) = std::str::from_utf8(cstr(strings, name)) {
                    by_name.entry(n).or_insert(id);
                }
            }
            types.push(Type {
                name,
                kind,
                members,
            });
        }
        Ok(Self {
            strings,
            types,
            by_name,
        })
    }

    /// Byte offset of `strukt.member`, looking inside anonymous structs and
    /// unions.
    pub fn offset(&self, strukt: &str, member: &str) -> Result<u32, BtfError> {
        let id = *self
            .by_name
            .get(strukt)
            .ok_or_else(|| BtfError::Missing(format!("struct {strukt}")))?;
        self.find(id, member.as_bytes(), 0)
            .ok_or_else(|| BtfError::Missing(format!("{strukt}.{member}")))
    }

    fn find(&self, id: u32, member: &[u8], base_bits: u32) -> Option<u32> {
        let t = self.types.get(id as usize)?;
        for m in &t.members {
            let bits = base_bits + m.bit_offset;
            if m.name != 0 && cstr(self.strings, m.name) == member {
                return Some(bits / 8);
            }
            if m.name == 0 {
                let inner = self.types.get(m.ty as usize)?;
                if inner.kind == KIND_STRUCT || inner.kind == KIND_UNION {
                    if let Some(o) = self.find(m.ty, member, bits) {
                        return Some(o);
                    }
                }
            }
        }
        let _ = t.name;
        None
    }
}

fn cstr(strings: &[u8], off: u32) -> &[u8] {
    let s = &strings[(off as usize).min(strings.len())..];
    &s[..memchr::memchr(0, s).unwrap_or(s.len())]
}

/// Offsets for the kernel's fd → inode walk, from the running kernel.
pub fn file_offsets() -> Result<FileOffsets, BtfError> {
    let path = "/sys/kernel/btf/vmlinux";
    let data = std::fs::read(path).map_err(|source| BtfError::Io {
        path: path.into(),
        source,
    })?;
    let btf = Btf::parse(&data)?;
    Ok(FileOffsets {
        task_files: btf.offset("task_struct", "files")?,
        files_fdt: btf.offset("files_struct", "fdt")?,
        fdt_fd: btf.offset("fdtable", "fd")?,
        fdt_max_fds: btf.offset("fdtable", "max_fds")?,
        file_inode: btf.offset("file", "f_inode")?,
        inode_ino: btf.offset("inode", "i_ino")?,
        inode_mode: btf.offset("inode", "i_mode")?,
        valid: 1,
        ..socket_offsets(&btf).unwrap_or_default()
    })
}

/// Offsets of the socket walk (file → socket → sock_common); all zero
/// when this kernel lacks one (then TCP ends are matched through /proc).
fn socket_offsets(btf: &Btf<'_>) -> Result<FileOffsets, BtfError> {
    let common = btf.offset("sock", "__sk_common")?;
    let skc = |m: &str| btf.offset("sock_common", m).map(|o| o + common);
    Ok(FileOffsets {
        file_private_data: btf.offset("file", "private_data")?,
        socket_sk: btf.offset("socket", "sk")?,
        skc_family: skc("skc_family")?,
        skc_num: skc("skc_num")?,
        skc_dport: skc("skc_dport")?,
        skc_daddr: skc("skc_daddr")?,
        skc_rcv_saddr: skc("skc_rcv_saddr")?,
        skc_v6_daddr: skc("skc_v6_daddr")?,
        skc_v6_rcv_saddr: skc("skc_v6_rcv_saddr")?,
        sock_valid: 1,
        ..FileOffsets::default()
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn running_kernel_offsets_are_plausible() {
        // Every Linux with BTF has these structs; skip only without BTF.
        let Ok(o) = super::file_offsets() else { return };
        assert_eq!(o.valid, 1);
        assert!(o.task_files > 0 && o.file_inode > 0 && o.inode_ino > 0);
        assert_eq!(
            o.inode_mode, 0,
            "i_mode is the first member of struct inode"
        );
        assert_eq!(o.sock_valid, 1, "socket offsets found");
        assert!(o.skc_dport > 0 && o.skc_v6_daddr > o.skc_daddr);
    }
}
