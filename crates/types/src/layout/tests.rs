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

    /// Laying slices in batches with `overlay` gives the bytes of laying them all in order, and
    /// keeps the list flat: what the metadata service stores for a chunk.
    #[test]
    fn overlay_matches_laying_everything(
        batches in proptest::collection::vec(proptest::collection::vec((0u64..90, 1u64..32, 0u64..8, 0u8..5), 0..12), 0..8),
        old_form in proptest::collection::vec((0u64..64, 1u64..32, 0u64..8), 0..6),
    ) {
        let chunk_len = 80u64;
        // A list in the older form (overlapping, in write order) to start from.
        let mut stored: Vec<Slice> = old_form.iter().enumerate().map(|(i, (o, l, b))| slice(100 + i as u64, *b, *o, *l)).collect();
        let mut all = stored.clone();
        for (n, batch) in batches.iter().enumerate() {
            let new: Vec<Slice> = batch
                .iter()
                .enumerate()
                .map(|(i, (o, l, b, kind))| {
                    let mut s = slice((n as u64 + 1) * 1000 + i as u64, *b, *o, *l);
                    if *kind == 0 {
                        s.blob = None; // a hole, as truncation lays
                        s.blob_offset = 0;
                    }
                    s
                })
                .collect();
            stored = overlay(&stored, &new, chunk_len);
            all.extend(new);
            proptest::prop_assert!(is_flat(&stored, chunk_len));
            proptest::prop_assert_eq!(resolve_chunk(&stored, chunk_len), resolve_chunk(&all, chunk_len));
        }
    }
}

#[test]
fn overlay_cuts_a_slice_around_a_write_and_drops_holes() {
    let base = vec![slice(1, 0, 0, 100)];
    let hole = Slice { blob: None, blob_offset: 0, offset_in_chunk: 90, len: 10 };
    let got = overlay(&base, &[slice(2, 0, 40, 20), hole], 100);
    assert_eq!(got, vec![slice(1, 0, 0, 40), slice(2, 0, 40, 20), slice(1, 60, 60, 30)]);
    assert!(is_flat(&got, 100));
    assert!(!is_flat(&[slice(1, 0, 0, 50), slice(2, 0, 40, 20)], 100), "overlapping");
}
