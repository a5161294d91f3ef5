//! The device case `packed` on the desktop: inference from the packed
//! weights (what the firmware runs) reports the same records, bit for bit,
//! as the ordinary layers with the weights unpacked, on the reference and
//! the rayon backend; and the records are not trivial.

use fixnn::backend::RefBackend;
use fixnn_cases::packed::{run_packed, run_unpacked, PackedBlob, NAMES};
use fixnn_std::rayon_backend::RayonBackend;
use fixnn_tests::device::cases::{packed_blob, Report};

#[test]
fn packed_inference_matches_the_unpacked_layers() {
    let blob = packed_blob();
    let mut packed = Report::default();
    run_packed(&blob, &mut packed).unwrap();
    for (name, r) in [
        ("reference", {
            let mut r = Report::default();
            run_unpacked(&RefBackend, &blob, &mut r).unwrap();
            r
        }),
        ("rayon", {
            let mut r = Report::default();
            run_unpacked(&RayonBackend::new(), &blob, &mut r).unwrap();
            r
        }),
    ] {
        assert_eq!(packed.lines, r.lines, "{name}");
        assert_eq!(packed.values, r.values, "{name}");
    }
    // Two runs of five records, no errors; every output has non-zero
    // values and more than a handful of distinct ones.
    assert_eq!(packed.lines.len(), 2 * NAMES.len(), "{:#?}", packed.lines);
    for (line, v) in packed.lines.iter().zip(&packed.values) {
        assert!(line.starts_with("R "), "{line}");
        let mut distinct = v.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert!(
            distinct.len() > 3,
            "{line}: {} distinct values",
            distinct.len()
        );
    }
    // The weights take a quarter (2 bits) or half (3, 4 bits) of i8 storage.
    let p = PackedBlob::parse(&blob).unwrap();
    assert_eq!(
        p.weight_bytes(),
        (36 / 2 + 4096 / 4 + 192 / 2, 36 + 4096 + 192)
    );
    // The packed layers hold no weights: a small fraction of the RAM of
    // the training layers (master, momentum, gradient and quantized copy
    // of every weight, and accumulators).
    use fixnn_cases::packed::{PACKED_NET_BYTES, UNPACKED_NET_BYTES};
    println!(
        "RAM of the layers: packed {PACKED_NET_BYTES} B, training layers {UNPACKED_NET_BYTES} B"
    );
    const { assert!(PACKED_NET_BYTES * 10 < UNPACKED_NET_BYTES) };
}

#[test]
fn a_changed_packed_byte_changes_the_records() {
    let blob = packed_blob();
    let mut a = Report::default();
    run_packed(&blob, &mut a).unwrap();
    // Flip the low bit of every code of fc1's first row (header 12 bytes,
    // conv 6 + 18 + 6 + 4 bias bytes, fc1 header 6 bytes, a row 16 bytes).
    let mut b = blob.clone();
    let fc1 = 12 + 6 + 18 + 6 + 4 + 6;
    for x in &mut b[fc1..fc1 + 16] {
        *x ^= 0b0101_0101;
    }
    let mut r = Report::default();
    run_packed(&b, &mut r).unwrap();
    assert_eq!(a.lines[..2], r.lines[..2]);
    assert_ne!(a.lines[2], r.lines[2]);
}
