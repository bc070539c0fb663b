//! File formats: GGML dequantizers against reference values, and the GGUF reader on
//! good and damaged files.

mod common;

use ftedit::formats::quant::{GgmlType, dequantize};

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// Every type against `gguf.quants.dequantize` (llama.cpp's gguf-py) on random blocks:
/// tests/fixtures/dequant.json, written by tools/make_quant_fixtures.py. ggml's order of
/// operations is kept, so the values agree bit for bit.
#[test]
fn dequantizers_match_gguf_py() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/dequant.json"
    ))
    .unwrap();
    let fixture: serde_json::Value = serde_json::from_str(&text).unwrap();
    let types = [
        ("F32", GgmlType::F32),
        ("F16", GgmlType::F16),
        ("BF16", GgmlType::BF16),
        ("Q4_0", GgmlType::Q4_0),
        ("Q4_1", GgmlType::Q4_1),
        ("Q5_0", GgmlType::Q5_0),
        ("Q5_1", GgmlType::Q5_1),
        ("Q8_0", GgmlType::Q8_0),
        ("Q4_K", GgmlType::Q4K),
        ("Q5_K", GgmlType::Q5K),
        ("Q6_K", GgmlType::Q6K),
    ];
    for (name, ty) in types {
        let case = &fixture["types"][name];
        let bytes = hex(case["hex"].as_str().unwrap());
        let want: Vec<f32> = case["values"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        assert_eq!(
            ty.bytes_for(want.len()),
            Some(bytes.len()),
            "{name}: layout"
        );
        let mut got = vec![0f32; want.len()];
        assert!(dequantize(ty, &bytes, &mut got), "{name}");
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(g.to_bits(), w.to_bits(), "{name}[{i}]: {g} vs {w}");
        }
    }
    assert!(!dequantize(GgmlType::Other(16), &[0; 66], &mut [0.0; 256]));
}
