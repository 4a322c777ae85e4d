//! A whole HdrHistogram in a result: V2 deflate-compressed, base64, as one .hlog line holds it,
//! so that the histograms of several load processes or hosts merge exactly.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hdrhistogram::Histogram;
use hdrhistogram::serialization::{Deserializer, Serializer, V2DeflateSerializer};

/// Why an embedded histogram could not be read back.
#[derive(Debug, thiserror::Error)]
pub enum HistogramError {
    #[error("not base64: {0}")]
    Base64(#[from] base64::DecodeError),
    #[error("not an HdrHistogram: {0:?}")]
    Deserialize(hdrhistogram::serialization::DeserializeError),
    #[error("could not be encoded: {0:?}")]
    Serialize(hdrhistogram::serialization::V2DeflateSerializeError),
}

pub fn encode(h: &Histogram<u64>) -> Result<String, HistogramError> {
    let mut bytes = Vec::new();
    V2DeflateSerializer::new().serialize(h, &mut bytes).map_err(HistogramError::Serialize)?;
    Ok(STANDARD.encode(bytes))
}

pub fn decode(text: &str) -> Result<Histogram<u64>, HistogramError> {
    let bytes = STANDARD.decode(text.trim())?;
    Deserializer::new().deserialize(&mut bytes.as_slice()).map_err(HistogramError::Deserialize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_exact_merge() {
        let mut a = Histogram::<u64>::new_with_bounds(1, 3_600_000_000_000, 3).unwrap();
        let mut b = a.clone();
        for v in [1_000u64, 25_000, 25_001, 9_000_000] {
            a.record(v).unwrap();
        }
        b.record_n(77_000, 5).unwrap();
        let (a2, b2) = (decode(&encode(&a).unwrap()).unwrap(), decode(&encode(&b).unwrap()).unwrap());
        assert_eq!(a2, a);
        let mut merged = a2;
        merged.add(&b2).unwrap();
        let mut whole = a.clone();
        whole.add(&b).unwrap();
        assert_eq!(merged, whole);
        assert_eq!(merged.len(), 9);
        assert!(decode("not base64!").is_err());
        assert!(decode("aGVsbG8=").is_err());
    }
}
