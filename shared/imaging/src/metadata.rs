//! EXIF facts of a file: orientation, capture time, camera, GPS position (`kamadak-exif`).
//! EXIF is optional: a file without it, or with a damaged block, just has none of these.

use std::io::Cursor;

use exif::{In, Tag, Value};
use imgfleet_core::domain::GeoPoint;

/// Longest camera make/model kept; EXIF strings are free text and the message size is bounded.
pub const MAX_EXIF_TEXT: usize = 64;

/// What EXIF says about an image.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ExifFacts {
    /// EXIF orientation 1–8 (1 = as stored).
    pub orientation: Option<u8>,
    /// Capture time, RFC 3339. Without an offset tag the camera's local time is taken as UTC.
    pub taken_at: Option<String>,
    pub camera_make: Option<String>,
    pub camera_model: Option<String>,
    pub gps: Option<GeoPoint>,
}

/// Reads the EXIF block of a JPEG, TIFF, PNG, WebP or HEIF file held in `bytes`.
pub fn read_exif(bytes: &[u8]) -> ExifFacts {
    let Ok(exif) = exif::Reader::new().read_from_container(&mut Cursor::new(bytes)) else {
        return ExifFacts::default();
    };
    let field = |tag| exif.get_field(tag, In::PRIMARY).map(|f| &f.value);
    let orientation = field(Tag::Orientation)
        .and_then(|v| v.get_uint(0))
        .and_then(|o| u8::try_from(o).ok())
        .filter(|o| (1..=8).contains(o));
    let taken_at = field(Tag::DateTimeOriginal)
        .or_else(|| field(Tag::DateTime))
        .and_then(ascii)
        .and_then(|text| rfc3339_of_exif_datetime(&text, field(Tag::OffsetTimeOriginal).and_then(ascii).as_deref()));
    let gps = match (
        field(Tag::GPSLatitude).and_then(degrees),
        field(Tag::GPSLatitudeRef).and_then(ascii),
        field(Tag::GPSLongitude).and_then(degrees),
        field(Tag::GPSLongitudeRef).and_then(ascii),
    ) {
        (Some(lat), lat_ref, Some(lon), lon_ref) => {
            let lat = if lat_ref.as_deref() == Some("S") { -lat } else { lat };
            let lon = if lon_ref.as_deref() == Some("W") { -lon } else { lon };
            ((-90.0..=90.0).contains(&lat) && (-180.0..=180.0).contains(&lon)).then_some(GeoPoint { lat, lon })
        }
        _ => None,
    };
    ExifFacts {
        orientation,
        taken_at,
        camera_make: field(Tag::Make).and_then(ascii).map(clip_text),
        camera_model: field(Tag::Model).and_then(ascii).map(clip_text),
        gps,
    }
}

/// First ASCII string of a value, trimmed of NULs and spaces; `None` when empty.
fn ascii(value: &Value) -> Option<String> {
    let Value::Ascii(parts) = value else { return None };
    let text = String::from_utf8_lossy(parts.first()?);
    let text = text.trim_matches(|c: char| c == '\0' || c.is_whitespace());
    (!text.is_empty()).then(|| text.to_owned())
}

/// Degrees from EXIF's (degrees, minutes, seconds) rationals.
fn degrees(value: &Value) -> Option<f64> {
    let Value::Rational(parts) = value else { return None };
    let [d, m, s] = parts.as_slice() else { return None };
    let parts = [d, m, s].map(|r| if r.denom == 0 { f64::NAN } else { r.to_f64() });
    let degrees = parts[0] + parts[1] / 60.0 + parts[2] / 3600.0;
    degrees.is_finite().then_some(degrees)
}

fn clip_text(mut text: String) -> String {
    if text.len() > MAX_EXIF_TEXT {
        let mut end = MAX_EXIF_TEXT;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

/// `2021:07:04 12:30:05` (+ optional `+02:00`) as RFC 3339; `None` when it is not a valid time
/// (cameras write `0000:00:00 00:00:00` when unset).
pub fn rfc3339_of_exif_datetime(text: &str, offset: Option<&str>) -> Option<String> {
    let mut dt = exif::DateTime::from_ascii(text.as_bytes()).ok()?;
    if let Some(offset) = offset {
        // An unreadable offset is dropped: the time itself is still worth keeping.
        let _ = dt.parse_offset(offset.as_bytes());
    }
    let date = chrono::NaiveDate::from_ymd_opt(i32::from(dt.year), u32::from(dt.month), u32::from(dt.day))?;
    let time = chrono::NaiveTime::from_hms_opt(u32::from(dt.hour), u32::from(dt.minute), u32::from(dt.second))?;
    let naive = date.and_time(time);
    let offset = chrono::FixedOffset::east_opt(i32::from(dt.offset.unwrap_or(0)) * 60)?;
    let local = naive.and_local_timezone(offset).single()?;
    Some(local.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exif_datetimes() {
        assert_eq!(rfc3339_of_exif_datetime("2021:07:04 12:30:05", None).as_deref(), Some("2021-07-04T12:30:05Z"));
        assert_eq!(
            rfc3339_of_exif_datetime("2021:07:04 12:30:05", Some("+02:00")).as_deref(),
            Some("2021-07-04T12:30:05+02:00")
        );
        assert_eq!(rfc3339_of_exif_datetime("0000:00:00 00:00:00", None), None);
        assert_eq!(rfc3339_of_exif_datetime("yesterday", None), None);
    }

    #[test]
    fn gps_degrees_from_rationals() {
        use exif::Rational;
        let value = Value::Rational(vec![
            Rational { num: 48, denom: 1 },
            Rational { num: 51, denom: 1 },
            Rational { num: 2950, denom: 100 },
        ]);
        let d = degrees(&value).unwrap();
        assert!((d - (48.0 + 51.0 / 60.0 + 29.5 / 3600.0)).abs() < 1e-9);
        let zero_denominator = Value::Rational(vec![Rational { num: 1, denom: 0 }; 3]);
        assert_eq!(degrees(&zero_denominator), None);
    }

    #[test]
    fn long_text_is_clipped_on_a_char_boundary() {
        let text = "é".repeat(40);
        let clipped = clip_text(text);
        assert!(clipped.len() <= MAX_EXIF_TEXT);
        assert!(clipped.chars().all(|c| c == 'é'));
    }

    #[test]
    fn no_exif_is_no_facts() {
        assert_eq!(read_exif(b"not an image"), ExifFacts::default());
    }
}
