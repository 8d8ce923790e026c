//! A blob file's header as read back from a disk that may hold anything.
#![no_main]
use libfuzzer_sys::fuzz_target;
use shoal_blob_store::{BlobHeader, HEADER_BYTES};

fuzz_target!(|data: &[u8]| {
    if let Some(bytes) = data.get(..HEADER_BYTES as usize) {
        let header: &[u8; HEADER_BYTES as usize] = bytes.try_into().expect("sized");
        if let Ok(h) = BlobHeader::decode(shoal_types::BlobId(1), header) {
            let _ = (h.n_blocks(), h.table_offset(), h.data_offset(), h.file_bytes());
            let _ = h.block_len(h.n_blocks().saturating_sub(1));
        }
    }
});
