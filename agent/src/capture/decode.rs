//! Ring-buffer record → [`RawEvent`], without copying the data bytes.

use mcpscope_common::{
    DataHeader, ProcRecord, RecordKind, Syscall, DATA_HEADER_LEN, FLAG_EGRESS, FLAG_TLS,
    FLAG_TRUNCATED,
};

use super::{Comm, DataChunk, ProcEvent, ProcKind, RawEvent};

/// A record that cannot be decoded. Counted by the caller, never fatal.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    /// Shorter than its fixed header.
    #[error("record of {0} bytes is shorter than its header")]
    Short(usize),
    /// Unknown record kind or syscall number.
    #[error("unknown record kind or syscall {0}")]
    Unknown(u32),
    /// `len` in the header disagrees with the record size.
    #[error("data length {claimed} exceeds the {available} bytes in the record")]
    Length {
        /// Bytes the header claims.
        claimed: usize,
        /// Bytes present.
        available: usize,
    },
}

fn read<T: Copy>(buf: &[u8]) -> T {
    debug_assert!(buf.len() >= std::mem::size_of::<T>());
    // SAFETY: length checked by every caller; T is a #[repr(C)] POD record;
    // read_unaligned copes with any alignment.
    unsafe { std::ptr::read_unaligned(buf.as_ptr() as *const T) }
}

/// Decodes one ring-buffer record.
pub fn decode(buf: &[u8]) -> Result<RawEvent<'_>, DecodeError> {
    if buf.len() < 4 {
        return Err(DecodeError::Short(buf.len()));
    }
    let kind = u32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]);
    match RecordKind::from_u32(kind) {
        Some(RecordKind::Data) => {
            if buf.len() < DATA_HEADER_LEN {
                return Err(DecodeError::Short(buf.len()));
            }
            let h: DataHeader = read(buf);
            let len = h.len as usize;
            let available = buf.len() - DATA_HEADER_LEN;
            if len > available {
                return Err(DecodeError::Length {
                    claimed: len,
                    available,
                });
            }
            let syscall = Syscall::from_u32(h.syscall).ok_or(DecodeError::Unknown(h.syscall))?;
            Ok(RawEvent::Data(DataChunk {
                tgid: h.tgid,
                tid: h.tid,
                fd: h.fd,
                syscall,
                egress: h.flags & FLAG_EGRESS != 0,
                ts_ns: h.ts_ns,
                total_len: h.total_len,
                offset: h.offset,
                truncated: h.flags & FLAG_TRUNCATED != 0,
                tls: h.flags & FLAG_TLS != 0,
                cgroup_id: h.cgroup_id,
                comm: Comm(h.comm),
                ino: h.ino,
                file_kind: h.file_kind,
                flow: h.flow,
                data: &buf[DATA_HEADER_LEN..DATA_HEADER_LEN + len],
            }))
        }
        Some(RecordKind::TlsBind) => {
            if buf.len() < DATA_HEADER_LEN {
                return Err(DecodeError::Short(buf.len()));
            }
            let h: DataHeader = read(buf);
            Ok(RawEvent::TlsBind(super::TlsBind {
                tgid: h.tgid,
                tid: h.tid,
                fd: h.fd,
                ino: h.ino,
                flow: h.flow,
                ts_ns: h.ts_ns,
            }))
        }
        Some(k) => {
            if buf.len() < std::mem::size_of::<ProcRecord>() {
                return Err(DecodeError::Short(buf.len()));
            }
            let r: ProcRecord = read(buf);
            let kind = match k {
                RecordKind::Exec => ProcKind::Exec,
                RecordKind::Exit => ProcKind::Exit,
                _ => ProcKind::Close,
            };
            Ok(RawEvent::Proc(ProcEvent {
                kind,
                tgid: r.tgid,
                tid: r.tid,
                fd: r.fd,
                ts_ns: r.ts_ns,
                cgroup_id: r.cgroup_id,
                comm: Comm(r.comm),
            }))
        }
        None => Err(DecodeError::Unknown(kind)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data_record(payload: &[u8], flags: u32) -> Vec<u8> {
        let h = DataHeader {
            kind: RecordKind::Data as u32,
            flags,
            tgid: 10,
            tid: 11,
            fd: 3,
            syscall: Syscall::Write as u32,
            ts_ns: 5,
            total_len: payload.len() as u64,
            offset: 0,
            len: payload.len() as u32,
            cgroup_id: 1,
            comm: *b"python3\0\0\0\0\0\0\0\0\0",
            ino: 7,
            file_kind: mcpscope_common::FILE_PIPE,
            _pad: 0,
            flow: Default::default(),
        };
        let mut v = vec![0u8; DATA_HEADER_LEN];
        // SAFETY: writing a POD header into a buffer of its size.
        unsafe { std::ptr::write_unaligned(v.as_mut_ptr() as *mut DataHeader, h) };
        v.extend_from_slice(payload);
        v
    }

    #[test]
    fn decodes_data_record_without_copying() {
        let rec = data_record(b"{\"jsonrpc\":\"2.0\"}\n", FLAG_EGRESS);
        let RawEvent::Data(d) = decode(&rec).unwrap() else {
            panic!("not data")
        };
        assert!(d.egress && !d.truncated);
        assert_eq!(d.comm.as_str(), "python3");
        assert_eq!(d.data.as_ptr(), rec[DATA_HEADER_LEN..].as_ptr());
    }

    #[test]
    fn rejects_short_and_inconsistent_records() {
        assert_eq!(decode(&[1, 0]), Err(DecodeError::Short(2)));
        let mut rec = data_record(b"abc", 0);
        rec.truncate(DATA_HEADER_LEN + 1);
        assert!(matches!(decode(&rec), Err(DecodeError::Length { .. })));
        assert_eq!(decode(&[9, 0, 0, 0]), Err(DecodeError::Unknown(9)));
    }
}
