//! A TensorBoard event-file writer for scalars.
//!
//! TensorBoard reads `events.out.tfevents.*` files: a sequence of records, each
//! `len: u64 LE | masked_crc32c(len): u32 | data: [u8; len] | masked_crc32c(data): u32`, where `data`
//! is a serialised `tensorflow.Event` protobuf. Scalars are `Event { wall_time, step, summary {
//! value { tag, simple_value } } }`. The protobuf is small enough to encode by hand, which keeps a
//! protobuf toolchain out of the build.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// Appends scalar summaries to one event file.
pub struct EventWriter {
    path: PathBuf,
    out: BufWriter<File>,
}

impl EventWriter {
    /// Creates `dir/events.out.tfevents.<secs>.<host>` and writes the file-version header event.
    pub fn create(dir: &Path, wall_time: f64) -> Result<EventWriter> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create TensorBoard folder {}", dir.display()))?;
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "realign".to_string());
        let path = dir.join(format!("events.out.tfevents.{}.{host}", wall_time as u64));
        let file = File::create(&path)
            .with_context(|| format!("cannot create TensorBoard file {}", path.display()))?;
        let mut w = EventWriter {
            path,
            out: BufWriter::new(file),
        };
        // Event { wall_time = 1, file_version = 3 }
        let mut event = Vec::new();
        put_double(&mut event, 1, wall_time);
        put_bytes(&mut event, 3, b"brain.Event:2");
        w.write_record(&event)?;
        Ok(w)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes one event holding every `(tag, value)` scalar for `step`. Non-finite values are kept
    /// (TensorBoard shows NaN), since hiding them would hide a broken run.
    pub fn add_scalars(
        &mut self,
        step: u64,
        wall_time: f64,
        scalars: &[(&str, f64)],
    ) -> Result<()> {
        let mut summary = Vec::new();
        for (tag, value) in scalars {
            // Summary.Value { tag = 1, simple_value = 2 (float) }
            let mut v = Vec::new();
            put_bytes(&mut v, 1, tag.as_bytes());
            put_float(&mut v, 2, *value as f32);
            put_bytes(&mut summary, 1, &v);
        }
        // Event { wall_time = 1, step = 2, summary = 5 }
        let mut event = Vec::new();
        put_double(&mut event, 1, wall_time);
        put_varint_field(&mut event, 2, step);
        put_bytes(&mut event, 5, &summary);
        self.write_record(&event)
    }

    /// Pushes buffered records to the OS so a live TensorBoard sees them.
    pub fn flush(&mut self) -> Result<()> {
        self.out
            .flush()
            .with_context(|| format!("cannot write {}", self.path.display()))
    }

    fn write_record(&mut self, data: &[u8]) -> Result<()> {
        let len = (data.len() as u64).to_le_bytes();
        let mut rec = Vec::with_capacity(data.len() + 16);
        rec.extend_from_slice(&len);
        rec.extend_from_slice(&masked_crc(&len).to_le_bytes());
        rec.extend_from_slice(data);
        rec.extend_from_slice(&masked_crc(data).to_le_bytes());
        self.out
            .write_all(&rec)
            .with_context(|| format!("cannot write {}", self.path.display()))
    }
}

/// TFRecord's masked CRC-32C: rotate right by 15 and add a constant, so that CRCs of CRCs differ.
fn masked_crc(data: &[u8]) -> u32 {
    let crc = crc32c::crc32c(data);
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

fn put_varint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

fn put_key(buf: &mut Vec<u8>, field: u32, wire_type: u8) {
    put_varint(buf, ((field as u64) << 3) | wire_type as u64);
}

fn put_varint_field(buf: &mut Vec<u8>, field: u32, v: u64) {
    put_key(buf, field, 0);
    put_varint(buf, v);
}

fn put_double(buf: &mut Vec<u8>, field: u32, v: f64) {
    put_key(buf, field, 1);
    buf.extend_from_slice(&v.to_le_bytes());
}

fn put_float(buf: &mut Vec<u8>, field: u32, v: f32) {
    put_key(buf, field, 5);
    buf.extend_from_slice(&v.to_le_bytes());
}

fn put_bytes(buf: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    put_key(buf, field, 2);
    put_varint(buf, bytes.len() as u64);
    buf.extend_from_slice(bytes);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_matches_the_standard_check_value() {
        // The CRC-32C check value of "123456789" is 0xE3069283 (RFC 3720).
        assert_eq!(crc32c::crc32c(b"123456789"), 0xE306_9283);
    }

    #[test]
    fn varint_encoding_matches_protobuf() {
        let mut b = Vec::new();
        put_varint(&mut b, 300);
        assert_eq!(b, [0xAC, 0x02]);
    }

    #[test]
    fn records_frame_and_checksum_the_event() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = EventWriter::create(dir.path(), 1000.0).unwrap();
        w.add_scalars(7, 1001.0, &[("reward/mean", 0.5)]).unwrap();
        w.flush().unwrap();
        let bytes = std::fs::read(w.path()).unwrap();
        // Walk the records and verify both CRCs of each.
        let mut off = 0;
        let mut records = Vec::new();
        while off < bytes.len() {
            let len = u64::from_le_bytes(bytes[off..off + 8].try_into().unwrap()) as usize;
            let len_crc = u32::from_le_bytes(bytes[off + 8..off + 12].try_into().unwrap());
            assert_eq!(len_crc, masked_crc(&bytes[off..off + 8]));
            let data = &bytes[off + 12..off + 12 + len];
            let data_crc =
                u32::from_le_bytes(bytes[off + 12 + len..off + 16 + len].try_into().unwrap());
            assert_eq!(data_crc, masked_crc(data));
            records.push(data.to_vec());
            off += 16 + len;
        }
        assert_eq!(records.len(), 2);
        let scalar = &records[1];
        // The tag and the f32 value appear verbatim in the scalar event.
        assert!(scalar.windows(11).any(|w| w == b"reward/mean"));
        assert!(scalar.windows(4).any(|w| w == 0.5f32.to_le_bytes()));
        // step = 7 encoded as field 2 varint.
        assert!(scalar.windows(2).any(|w| w == [0x10, 7]));
    }
}
