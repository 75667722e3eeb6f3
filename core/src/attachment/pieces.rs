//! Verified pieces: an attachment's bytes cut into [`PIECE_BYTES`] pieces, each of which the
//! receiver checks against the attachment's BLAKE3 hash on its own, before storing it.
//!
//! BLAKE3 is itself a Merkle tree, so a piece can be verified against the root hash given the
//! hashes of the tree nodes on its path ([`bao_tree`]'s verified streaming). The sender keeps
//! an *outboard* (the tree's inner hashes, 64 bytes per 16 KiB, about 0.4 % of the bytes) and
//! sends each piece as its bao encoding: the parent hashes from the root down to the piece,
//! then its bytes. A piece that does not verify is refused whole and asked for again; nothing
//! unverified is ever stored. Because every piece verifies alone, a transfer resumes at any
//! piece, in either direction, after a cut or a restart: the receiver only needs to know which
//! pieces it stored.

use std::io::{self, Read};
use std::ops::Range;

use bao_tree::io::outboard::PreOrderMemOutboard;
use bao_tree::io::sync::{DecodeResponseIter, ReadAt, encode_ranges_validated};
use bao_tree::io::{BaoContentItem, Leaf};
use bao_tree::{BaoTree, BlockSize, ChunkNum, ChunkRanges};

use super::BlobHash;

/// The bytes of one piece (the last piece of an attachment may be shorter).
pub const PIECE_BYTES: u64 = 64 << 10;

/// BLAKE3 chunks (1 KiB) per outboard leaf: 2^4 = 16 KiB chunk groups.
const BLOCK: BlockSize = BlockSize::from_chunk_log(4);

/// BLAKE3's chunk size.
const CHUNK: u64 = 1024;

/// Why a piece was refused or could not be made.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PieceError {
    /// The attachment has no piece with this index.
    #[error("piece {index} is out of range (the attachment has {count})")]
    OutOfRange {
        /// The piece asked for.
        index: u32,
        /// How many pieces the attachment has.
        count: u32,
    },
    /// The piece does not verify against the attachment's hash (corrupt or forged).
    #[error("piece {0} does not match the attachment's hash")]
    Mismatch(u32),
    /// The encoded piece is shorter or longer than the piece.
    #[error("piece {0} is malformed: {1}")]
    Malformed(u32, String),
    /// The sender's own bytes or outboard are wrong (damaged local storage).
    #[error("cannot encode piece {0}: {1}")]
    Encode(u32, String),
}

/// How many pieces an attachment of `size` bytes has.
pub fn piece_count(size: u64) -> u32 {
    u32::try_from(size.div_ceil(PIECE_BYTES)).unwrap_or(u32::MAX)
}

/// The byte range piece `index` covers.
pub fn piece_range(size: u64, index: u32) -> Result<Range<u64>, PieceError> {
    let count = piece_count(size);
    if index >= count {
        return Err(PieceError::OutOfRange { index, count });
    }
    let start = u64::from(index) * PIECE_BYTES;
    Ok(start..(start + PIECE_BYTES).min(size))
}

/// The BLAKE3 chunks of piece `index` (pieces are whole chunk groups, so this is exact).
fn chunk_ranges(size: u64, index: u32) -> Result<ChunkRanges, PieceError> {
    let r = piece_range(size, index)?;
    Ok(ChunkRanges::from(
        ChunkNum(r.start / CHUNK)..ChunkNum(r.end.div_ceil(CHUNK)),
    ))
}

/// An attachment's hash and outboard, computed from its bytes (read once, streaming).
pub fn outboard(data: impl Read, size: u64) -> io::Result<(BlobHash, Vec<u8>)> {
    let tree = BaoTree::new(size, BLOCK);
    let mut ob = PreOrderMemOutboard {
        root: blake3::Hash::from([0; 32]),
        tree,
        data: vec![0u8; outboard_len(size)?],
    };
    let root = bao_tree::io::sync::outboard(data.take(size), tree, &mut ob)?;
    Ok((BlobHash(*root.as_bytes()), ob.data))
}

/// The length of the outboard of an attachment of `size` bytes.
fn outboard_len(size: u64) -> io::Result<usize> {
    let tree = BaoTree::new(size, BLOCK);
    usize::try_from(tree.outboard_size())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "attachment too large"))
}

/// Stored pieces `0..count` read in order as one stream of bytes, each fetched by `piece`
/// when the previous one is used up (so an attachment is never held whole in memory).
pub struct PieceStream<F> {
    piece: F,
    next: u32,
    count: u32,
    buf: Vec<u8>,
    at: usize,
}

impl<F: FnMut(u32) -> io::Result<Vec<u8>>> PieceStream<F> {
    /// Pieces `0..count`, each read by `piece(index)`.
    pub fn new(count: u32, piece: F) -> Self {
        Self {
            piece,
            next: 0,
            count,
            buf: Vec::new(),
            at: 0,
        }
    }
}

impl<F: FnMut(u32) -> io::Result<Vec<u8>>> Read for PieceStream<F> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.at == self.buf.len() {
            if self.next == self.count {
                return Ok(0);
            }
            self.buf = (self.piece)(self.next)?;
            self.next += 1;
            self.at = 0;
        }
        let n = out.len().min(self.buf.len() - self.at);
        out[..n].copy_from_slice(&self.buf[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

/// The bytes of one piece, read at their offsets in the attachment.
struct At<'a> {
    offset: u64,
    bytes: &'a [u8],
}

impl ReadAt for At<'_> {
    fn read_at(&self, pos: u64, buf: &mut [u8]) -> io::Result<usize> {
        let start = pos
            .checked_sub(self.offset)
            .and_then(|s| usize::try_from(s).ok())
            .filter(|s| *s <= self.bytes.len())
            .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "outside the piece"))?;
        let n = buf.len().min(self.bytes.len() - start);
        buf[..n].copy_from_slice(&self.bytes[start..start + n]);
        Ok(n)
    }
}

/// Encodes piece `index` of an attachment for the wire: the parent hashes on its path, then
/// its bytes (`data`, exactly the piece). The bytes are checked against the outboard first,
/// so damaged local storage is found here rather than by the receiver.
pub fn encode_piece(
    hash: BlobHash,
    size: u64,
    outboard: &[u8],
    index: u32,
    data: &[u8],
) -> Result<Vec<u8>, PieceError> {
    let range = piece_range(size, index)?;
    if data.len() as u64 != range.end - range.start {
        return Err(PieceError::Encode(
            index,
            format!(
                "{} bytes given for a piece of {}",
                data.len(),
                range.end - range.start
            ),
        ));
    }
    let ob = PreOrderMemOutboard {
        root: blake3::Hash::from(hash.0),
        tree: BaoTree::new(size, BLOCK),
        data: outboard,
    };
    let ranges = chunk_ranges(size, index)?;
    let mut out = Vec::with_capacity(data.len() + 1024);
    encode_ranges_validated(
        At {
            offset: range.start,
            bytes: data,
        },
        &ob,
        &ranges,
        &mut out,
    )
    .map_err(|e| PieceError::Encode(index, e.to_string()))?;
    Ok(out)
}

/// Verifies an encoded piece against the attachment's hash and returns its bytes. A piece
/// that does not verify, or that carries more or fewer bytes than the piece, is refused.
///
/// BLAKE3 authenticates the length only through the last piece: under a wrong `size` the
/// middle pieces may still verify (their bytes are the true ones), but the last never does,
/// so a transfer is complete only once its last piece verified.
pub fn decode_piece(
    hash: BlobHash,
    size: u64,
    index: u32,
    encoded: &[u8],
) -> Result<Vec<u8>, PieceError> {
    let range = piece_range(size, index)?;
    let ranges = chunk_ranges(size, index)?;
    let mut reader = io::Cursor::new(encoded);
    let mut out = Vec::with_capacity(usize::try_from(range.end - range.start).unwrap_or(0));
    let items = DecodeResponseIter::new(
        blake3::Hash::from(hash.0),
        BaoTree::new(size, BLOCK),
        &mut reader,
        &ranges,
    );
    for item in items {
        match item {
            Ok(BaoContentItem::Parent(_)) => {}
            Ok(BaoContentItem::Leaf(Leaf { offset, data })) => {
                if offset != range.start + out.len() as u64 {
                    return Err(PieceError::Malformed(index, "leaves out of order".into()));
                }
                out.extend_from_slice(&data);
            }
            Err(bao_tree::io::DecodeError::Io(e)) => {
                return Err(PieceError::Malformed(index, e.to_string()));
            }
            Err(
                bao_tree::io::DecodeError::ParentNotFound(_)
                | bao_tree::io::DecodeError::LeafNotFound(_),
            ) => return Err(PieceError::Malformed(index, "truncated".into())),
            Err(_) => return Err(PieceError::Mismatch(index)),
        }
    }
    if out.len() as u64 != range.end - range.start {
        return Err(PieceError::Malformed(
            index,
            format!(
                "{} bytes for a piece of {}",
                out.len(),
                range.end - range.start
            ),
        ));
    }
    if reader.position() != encoded.len() as u64 {
        return Err(PieceError::Malformed(index, "trailing bytes".into()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn bytes(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 9) as u8)
            .collect()
    }

    fn piece(data: &[u8], size: u64, i: u32) -> &[u8] {
        let r = piece_range(size, i).expect("piece");
        &data[r.start as usize..r.end as usize]
    }

    #[test]
    fn the_hash_is_the_plain_blake3_hash_of_the_bytes() {
        for len in [0usize, 1, 1024, 16 << 10, 64 << 10, (64 << 10) + 1, 300_001] {
            let data = bytes(len, 7);
            let (hash, _) = outboard(&data[..], len as u64).expect("outboard");
            assert_eq!(hash.0, *blake3::hash(&data).as_bytes(), "len {len}");
        }
    }

    #[test]
    fn a_piece_of_another_attachment_or_position_is_refused() {
        let data = bytes(200_000, 1);
        let size = data.len() as u64;
        let (hash, ob) = outboard(&data[..], size).expect("outboard");
        let p1 = encode_piece(hash, size, &ob, 1, piece(&data, size, 1)).expect("encode");
        assert!(
            decode_piece(hash, size, 2, &p1).is_err(),
            "piece 1 taken as piece 2"
        );
        let other = bytes(200_000, 2);
        let (h2, ob2) = outboard(&other[..], size).expect("outboard");
        let q1 = encode_piece(h2, size, &ob2, 1, piece(&other, size, 1)).expect("encode");
        assert_eq!(
            decode_piece(hash, size, 1, &q1),
            Err(PieceError::Mismatch(1))
        );
        // The length is authenticated by the last piece (BLAKE3 binds it only there): a
        // wrong size lets middle pieces verify but never the last, so a transfer under a
        // wrong size never completes.
        let last = piece_count(size) - 1;
        let pl = encode_piece(hash, size, &ob, last, piece(&data, size, last)).expect("encode");
        assert!(decode_piece(hash, size, last, &pl).is_ok());
        for wrong in [size - 1, size + 1] {
            assert!(
                decode_piece(hash, wrong, last, &pl).is_err(),
                "size {wrong}"
            );
        }
        assert!(matches!(
            decode_piece(hash, size, 9, &p1),
            Err(PieceError::OutOfRange { index: 9, count: 4 })
        ));
    }

    #[test]
    fn damaged_local_bytes_are_found_before_sending() {
        let mut data = bytes(100_000, 3);
        let size = data.len() as u64;
        let (hash, ob) = outboard(&data[..], size).expect("outboard");
        data[70_000] ^= 1;
        assert!(matches!(
            encode_piece(hash, size, &ob, 1, piece(&data, size, 1)),
            Err(PieceError::Encode(1, _))
        ));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        /// Every piece verifies alone and gives back exactly its bytes, so a receiver that
        /// stored any subset of pieces (a transfer cut anywhere, in any direction) completes
        /// the attachment from the pieces it lacks, and the result is the original.
        #[test]
        fn pieces_verify_alone_and_resume_from_any_point(
            len in 1usize..400_000,
            seed in any::<u8>(),
            cut in any::<prop::sample::Index>(),
        ) {
            let data = bytes(len, seed);
            let size = len as u64;
            let (hash, ob) = outboard(&data[..], size).expect("outboard");
            let count = piece_count(size);
            let cut = cut.index(count as usize + 1) as u32;
            let mut received = vec![None; count as usize];
            // The first session delivers pieces up to the cut; the second the rest.
            for i in (0..cut).chain(cut..count) {
                let enc = encode_piece(hash, size, &ob, i, piece(&data, size, i)).expect("encode");
                received[i as usize] = Some(decode_piece(hash, size, i, &enc).expect("verifies"));
            }
            let joined: Vec<u8> = received.into_iter().flatten().flatten().collect();
            prop_assert_eq!(joined, data);
        }

        /// Any flipped bit or cut in an encoded piece is refused: nothing unverified is
        /// returned.
        #[test]
        fn a_damaged_piece_is_refused(
            len in 1usize..300_000,
            which in any::<prop::sample::Index>(),
            at in any::<prop::sample::Index>(),
            bit in 0u8..8,
            truncate in any::<bool>(),
        ) {
            let data = bytes(len, 9);
            let size = len as u64;
            let (hash, ob) = outboard(&data[..], size).expect("outboard");
            let i = which.index(piece_count(size) as usize) as u32;
            let mut enc = encode_piece(hash, size, &ob, i, piece(&data, size, i)).expect("encode");
            if truncate {
                enc.truncate(at.index(enc.len()));
            } else {
                let k = at.index(enc.len());
                enc[k] ^= 1 << bit;
            }
            prop_assert!(decode_piece(hash, size, i, &enc).is_err());
        }
    }
}
