"""Size checks for compressed DICOM, run before any decoder allocates (used by ``data.imageio``).

A compressed frame carries its own size (JPEG SOF, JPEG 2000 SIZ) or, for RLE, a segment count and
PackBits runs whose output length is known without decoding. If that disagrees with the header's
Rows x Columns x SamplesPerPixel x BitsAllocated, the decoder would allocate what the *frame* says (a small
file whose SOF says 65000x65000) or pydicom would fail late; both are refused here with the reason.

Deflated Explicit VR Little Endian compresses the whole dataset, and pydicom inflates it in one call
with no limit (a 20 MB upload can inflate to ~20 GB): ``deflated_size_problem`` inflates it once,
chunk by chunk without keeping the output, and refuses what would exceed a byte limit.

Only bytes are parsed here; pydicom is imported lazily, as in ``imageio``.
"""

from __future__ import annotations

import struct
import zlib
from typing import BinaryIO

# JPEG start-of-frame markers: SOF0-3, 5-7, 9-11, 13-15 (not DHT C4, JPG C8, DAC CC), and JPEG-LS SOF55.
_SOF_MARKERS = frozenset({*range(0xC0, 0xD0)} - {0xC4, 0xC8, 0xCC}) | {0xF7}
_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})  # TEM, RSTn: no length field
_JP2_SIGNATURE = b"\x00\x00\x00\x0cjP  \r\n\x87\n"
_RLE_SLACK = 128  # extra decoded bytes tolerated per RLE segment (pydicom accepts trailing padding)
_INFLATE_CHUNK = 1 << 20


def jpeg_frame_size(frame: bytes) -> tuple[int, int, int, int]:
    """(rows, columns, components, precision) from a JPEG / JPEG-LS frame's SOF marker.

    Raises ValueError when the stream is not a JPEG or has no SOF before its scan data.
    """
    if frame[:2] != b"\xff\xd8":
        raise ValueError("frame is not a JPEG stream (no SOI marker)")
    pos, n = 2, len(frame)
    while pos + 1 < n:
        if frame[pos] != 0xFF:
            raise ValueError(f"JPEG marker expected at byte {pos}")
        marker = frame[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in _STANDALONE:
            pos += 2
            continue
        if marker in (0xD9, 0xDA):  # EOI or SOS before any SOF
            break
        if pos + 4 > n:
            break
        (length,) = struct.unpack(">H", frame[pos + 2 : pos + 4])
        if marker in _SOF_MARKERS:
            if pos + 10 > n:
                break
            precision, rows, cols, comps = struct.unpack(">BHHB", frame[pos + 4 : pos + 10])
            return rows, cols, comps, precision
        pos += 2 + length
    raise ValueError("no JPEG start-of-frame (SOF) marker before the scan data")


def j2k_frame_size(frame: bytes) -> tuple[int, int, int, int]:
    """(rows, columns, components, precision) from a JPEG 2000 codestream's SIZ marker (raw or JP2)."""
    if frame[:4] == b"\xff\x4f\xff\x51":
        pos = 2
    elif frame[:12] == _JP2_SIGNATURE:
        pos = frame.find(b"\xff\x4f\xff\x51")  # the contiguous codestream box starts with SOC + SIZ
        if pos < 0:
            raise ValueError("JP2 file without a JPEG 2000 codestream")
        pos += 2
    else:
        raise ValueError("frame is not a JPEG 2000 codestream (no SOC/SIZ markers)")
    # from Lsiz: Lsiz, Rsiz (2 each), Xsiz, Ysiz, XOsiz, YOsiz, 4 tile fields (4 each), Csiz (2), Ssiz0 (1)
    fields = frame[pos + 2 : pos + 2 + 39]
    if len(fields) < 39:
        raise ValueError("truncated JPEG 2000 SIZ marker")
    xsiz, ysiz, xosiz, yosiz = struct.unpack(">IIII", fields[4:20])
    (csiz,) = struct.unpack(">H", fields[36:38])
    precision = (fields[38] & 0x7F) + 1
    return ysiz - yosiz, xsiz - xosiz, csiz, precision


def rle_segment_length(segment: bytes, limit: int) -> int:
    """Bytes the DICOM RLE (PackBits) ``segment`` decodes to, counting stops once past ``limit``.

    Counts exactly what pydicom's decoder would produce (truncated runs included), allocating nothing.
    """
    n, pos, end = 0, 0, len(segment)
    while pos < end:
        header = segment[pos]
        pos += 1
        if header > 128:  # replicate the next byte 257 - header times
            if pos < end:
                n += 257 - header
            pos += 1
        elif header < 128:  # copy the next header + 1 bytes literally
            n += min(header + 1, end - pos)
            pos += header + 1
        if n > limit:
            break
    return n


def rle_frame_problem(frame: bytes, rows: int, cols: int, samples: int, bits: int) -> str | None:
    """Why an RLE frame disagrees with Rows x Columns x samples x bits, or None if it matches."""
    if bits % 8:
        return f"RLE with {bits} bits allocated is not supported (must be a multiple of 8)"
    if len(frame) < 64:
        return f"RLE frame shorter than its 64-byte header ({len(frame)} bytes)"
    header = struct.unpack("<16I", frame[:64])
    nr_segments, offsets = header[0], list(header[1:])
    expected = samples * (bits // 8)
    if nr_segments != expected:
        return (
            f"RLE header has {nr_segments} segment(s) but {samples} sample(s) x {bits} bits allocated "
            f"need {expected}"
        )
    offsets = offsets[:nr_segments] + [len(frame)]
    if offsets[0] != 64 or any(b <= a for a, b in zip(offsets, offsets[1:], strict=False)):
        return f"RLE segment offsets are out of order or outside the frame ({offsets[:-1]})"
    plane = rows * cols
    for i in range(nr_segments):
        got = rle_segment_length(frame[offsets[i] : offsets[i + 1]], plane + _RLE_SLACK)
        if got < plane:
            return f"RLE segment {i + 1} decodes to {got:,} bytes, fewer than Rows x Columns = {plane:,}"
        if got > plane + _RLE_SLACK:
            return f"RLE segment {i + 1} decodes to more than Rows x Columns = {plane:,} bytes"
    return None


def compressed_frame_problem(ds: object, tsyntax: object) -> str | None:
    """Why the first frame of an encapsulated ``ds`` disagrees with its header, or None if it agrees.

    Checks the embedded size of JPEG (SOF), JPEG-LS (SOF55) and JPEG 2000 / HTJ2K (SIZ) frames and the
    RLE segment count and decoded lengths against Rows, Columns, SamplesPerPixel and BitsAllocated.
    Other compressed syntaxes (none common for radiographs) are left to their decoder.
    """
    from pydicom import uid
    from pydicom.encaps import get_frame

    rows, cols = int(ds.Rows), int(ds.Columns)
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    bits = int(ds.get("BitsAllocated", 0) or 0)
    nframes = int(ds.get("NumberOfFrames", 1) or 1)
    ext = None
    if "ExtendedOffsetTable" in ds and "ExtendedOffsetTableLengths" in ds:
        ext = (ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths)
    frame = get_frame(ds.PixelData, 0, number_of_frames=nframes, extended_offsets=ext)

    if tsyntax == uid.RLELossless:
        return rle_frame_problem(frame, rows, cols, samples, bits)
    if tsyntax in uid.JPEGTransferSyntaxes or tsyntax in uid.JPEGLSTransferSyntaxes:
        kind, parse = "JPEG SOF", jpeg_frame_size
    elif tsyntax in uid.JPEG2000TransferSyntaxes or tsyntax in getattr(uid, "HTJ2KTransferSyntaxes", []):
        kind, parse = "JPEG 2000 SIZ", j2k_frame_size
    else:
        return None
    try:
        f_rows, f_cols, f_comps, f_prec = parse(frame)
    except (ValueError, struct.error) as e:
        return f"cannot read the compressed frame's size ({e})"
    if (f_rows, f_cols, f_comps) != (rows, cols, samples) or f_prec > max(bits, 8):
        return (
            f"embedded frame size disagrees with the header: {kind} says {f_cols}x{f_rows}, "
            f"{f_comps} component(s), {f_prec}-bit; Rows/Columns say {cols}x{rows}, {samples} sample(s), "
            f"{bits} bits allocated"
        )
    return None


def deflated_size_problem(fp: BinaryIO, limit: int) -> str | None:
    """For a Deflated Explicit VR Little Endian file: why inflating it would exceed ``limit`` bytes.

    Reads the file meta from ``fp`` (positioned at 0); returns None for any other transfer syntax, a
    file whose meta cannot be read (pydicom will report it) or a dataset that inflates within ``limit``.
    ``fp`` is left at 0.
    """
    from pydicom.filereader import _read_file_meta_info
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    try:
        head = fp.read(132)
        fp.seek(132 if head[128:132] == b"DICM" else 0)
        meta = _read_file_meta_info(fp)
        if meta.get("TransferSyntaxUID") != DeflatedExplicitVRLittleEndian:
            return None
        inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        total = 0
        while chunk := fp.read(_INFLATE_CHUNK):
            data = inflater.decompress(chunk, limit + 1 - total)
            total += len(data)
            while inflater.unconsumed_tail and total <= limit:
                total += len(inflater.decompress(inflater.unconsumed_tail, limit + 1 - total))
            if total > limit:
                return f"deflated dataset inflates to more than {limit:,} bytes (possible zip bomb)"
        return None
    except zlib.error as e:
        return f"corrupt deflated dataset ({e})"
    except Exception:
        return None
    finally:
        fp.seek(0)
