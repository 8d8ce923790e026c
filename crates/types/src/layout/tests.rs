use super::*;

fn slice(blob: u64, blob_offset: u64, offset_in_chunk: u64, len: u64) -> Slice {
    Slice { blob: Some(BlobId(blob)), blob_offset, offset_in_chunk, len }
}

#[test]
fn later_slices_cover_earlier_ones() {
    let slices = vec![slice(1, 0, 0, 100), slice(2, 10, 40, 20)];
    let got = resolve_chunk(&slices, 100);
    assert_eq!(
        got,
        vec![
            Extent { offset_in_chunk: 0, len: 40, blob: Some(BlobId(1)), blob_offset: 0 },
            Extent { offset_in_chunk: 40, len: 20, blob: Some(BlobId(2)), blob_offset: 10 },
            Extent { offset_in_chunk: 60, len: 40, blob: Some(BlobId(1)), blob_offset: 60 },
        ]
    );
}

#[test]
fn gaps_are_holes_and_size_clips() {
    let slices = vec![slice(1, 0, 10, 100)];
    let got = resolve_chunk(&slices, 50);
    assert_eq!(
        got,
        vec![
            Extent { offset_in_chunk: 0, len: 10, blob: None, blob_offset: 0 },
            Extent { offset_in_chunk: 10, len: 40, blob: Some(BlobId(1)), blob_offset: 0 },
        ]
    );
}

proptest::proptest! {
    /// Resolving must agree with painting bytes one slice after another.
    #[test]
    fn resolve_matches_byte_model(ops in proptest::collection::vec((0u64..64, 1u64..32, 0u64..8), 0..40)) {
        let chunk_len = 80u64;
        let mut model = vec![0u64; chunk_len as usize]; // 0 = hole, else blob id*1000+offset
        let mut slices = Vec::new();
        for (i, (off, len, boff)) in ops.iter().enumerate() {
            let blob = i as u64 + 1;
            slices.push(slice(blob, *boff, *off, *len));
            for b in 0..*len {
                let pos = off + b;
                if pos < chunk_len { model[pos as usize] = blob * 1000 + boff + b; }
            }
        }
        let extents = resolve_chunk(&slices, chunk_len);
        let mut painted = vec![u64::MAX; chunk_len as usize];
        let mut expect_off = 0;
        for e in &extents {
            proptest::prop_assert_eq!(e.offset_in_chunk, expect_off);
            expect_off += e.len;
            for b in 0..e.len {
                painted[(e.offset_in_chunk + b) as usize] = match e.blob { None => 0, Some(id) => id.0 * 1000 + e.blob_offset + b };
            }
        }
        proptest::prop_assert_eq!(expect_off, chunk_len);
        proptest::prop_assert_eq!(painted, model);
    }
}
