//! Previews of attached images: a JPEG thumbnail small enough to travel inside the document
//! (at most [`MAX_PREVIEW_BYTES`]), so a rep preparing a visit sees the photos before their
//! originals arrive.

use fieldsync_core::attachment::entry::MAX_PREVIEW_BYTES;
use image::ImageReader;
use image::codecs::jpeg::JpegEncoder;

/// The longest side of a thumbnail, in pixels, tried first.
const SIDES: [u32; 4] = [320, 240, 160, 96];
/// JPEG qualities tried at each size, best first.
const QUALITIES: [u8; 3] = [75, 60, 45];

/// A JPEG thumbnail of an image (JPEG, PNG or WebP), at most [`MAX_PREVIEW_BYTES`]; `None` for
/// anything that is not such an image or does not decode.
pub(crate) fn thumbnail(bytes: &[u8]) -> Option<Vec<u8>> {
    let reader = ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .ok()?;
    let mut decoder = reader.into_decoder().ok()?;
    let orientation = image::ImageDecoder::orientation(&mut decoder).ok();
    let mut img = image::DynamicImage::from_decoder(decoder).ok()?;
    if let Some(o) = orientation {
        img.apply_orientation(o);
    }
    for side in SIDES {
        let small = img.thumbnail(side, side).to_rgb8();
        for q in QUALITIES {
            let mut out = Vec::new();
            if JpegEncoder::new_with_quality(&mut out, q)
                .encode_image(&small)
                .is_err()
            {
                return None;
            }
            if out.len() <= MAX_PREVIEW_BYTES {
                return Some(out);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_large_photo_gets_a_small_preview_and_other_files_none() {
        // A noisy 2000×1500 image (noise compresses worst).
        let mut img = image::RgbImage::new(2000, 1500);
        let mut x: u32 = 12345;
        for p in img.pixels_mut() {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            *p = image::Rgb([(x >> 16) as u8, (x >> 8) as u8, x as u8]);
        }
        let mut jpeg = Vec::new();
        JpegEncoder::new_with_quality(&mut jpeg, 90)
            .encode_image(&img)
            .expect("encode");
        let t = thumbnail(&jpeg).expect("thumbnail");
        assert!(t.len() <= MAX_PREVIEW_BYTES, "{} bytes", t.len());
        let back = image::load_from_memory(&t).expect("decodes");
        assert!(back.width() <= 320 && back.height() <= 320);
        assert_eq!(thumbnail(b"%PDF-1.7 not an image"), None);
    }
}
