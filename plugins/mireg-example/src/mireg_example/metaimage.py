"""A scan reader: MetaImage files (``.mha``, the format of ITK and 3D Slicer) as inputs of
``mireg predict``.

It reads what ITK writes for a 3D image in one file: a text header (``Key = Value`` lines) ending with
``ElementDataFile = LOCAL``, then the voxels, uncompressed, X fastest. The header's geometry is in
LPS+ millimetres (ITK's convention): ``Offset`` is the first voxel's centre and ``TransformMatrix``
holds each axis' direction, one after the other; mireg's affines are RAS+, so X and Y are flipped.
Anything else (compressed or external data, other dimensions, big-endian data) is an error naming the
file and the key.

A reader imports nothing of mireg but ``mireg.io.formats``, which holds the base classes and
``DataError``; it needs neither torch nor a trained model, so ``mireg predict model.onnx`` reads
``.mha`` files in the torch-free runtime install too.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mireg.io.formats import DataError, Frame, Scan, ScanReader

#: MetaImage element types and their numpy types (little-endian).
ELEMENT_TYPES = {
    "MET_UCHAR": "<u1",
    "MET_CHAR": "<i1",
    "MET_USHORT": "<u2",
    "MET_SHORT": "<i2",
    "MET_UINT": "<u4",
    "MET_INT": "<i4",
    "MET_FLOAT": "<f4",
    "MET_DOUBLE": "<f8",
}

#: LPS+ to RAS+.
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _numbers(
    path: Path, header: dict[str, str], key: str, count: int, default: str | None = None
) -> list[float]:
    text = header.get(key, default)
    if text is None:
        raise DataError(f"{path}: the MetaImage header has no {key}")
    try:
        values = [float(v) for v in text.split()]
    except ValueError:
        raise DataError(f"{path}: {key} = {text!r} is not {count} numbers") from None
    if len(values) != count:
        raise DataError(f"{path}: {key} = {text!r} is not {count} numbers")
    return values


def read_header(path: Path) -> tuple[dict[str, str], int]:
    """The header's keys and values, and the offset of the voxels in the file.

    Raises:
        DataError: An unreadable file, a header without ``ElementDataFile``, or one that is not LOCAL.
    """
    header: dict[str, str] = {}
    try:
        with open(path, "rb") as fh:
            while True:
                line = fh.readline(4096)
                if not line:
                    raise DataError(f"{path}: the MetaImage header has no ElementDataFile")
                key, _, value = line.decode("latin-1").partition("=")
                header[key.strip()] = value.strip()
                if key.strip() == "ElementDataFile":
                    if value.strip() != "LOCAL":
                        raise DataError(
                            f"{path}: ElementDataFile = {value.strip()!r}: only LOCAL (voxels in the "
                            "file, .mha) is read"
                        )
                    return header, fh.tell()
    except OSError as exc:
        raise DataError(f"{path}: not readable ({exc.strerror})") from None


def read_checked_header(path: Path) -> tuple[dict[str, str], int]:
    """:func:`read_header`, and the keys this reader needs checked: a 3D, uncompressed,
    little-endian volume of a known element type, with a size, spacing and geometry that parse.

    Raises:
        DataError: Naming the file and the key.
    """
    header, offset = read_header(path)
    checks = {"NDims": "3", "BinaryDataByteOrderMSB": "False", "CompressedData": "False"}
    for key, wanted in checks.items():
        if header.get(key, wanted) != wanted:
            raise DataError(f"{path}: {key} = {header[key]!r}; this reader reads {key} = {wanted}")
    if header.get("ElementType") not in ELEMENT_TYPES:
        raise DataError(
            f"{path}: ElementType = {header.get('ElementType')!r} is not one of {', '.join(ELEMENT_TYPES)}"
        )
    _numbers(path, header, "DimSize", 3)
    _numbers(path, header, "ElementSpacing", 3, "1 1 1")
    _numbers(path, header, "TransformMatrix", 9, "1 0 0 0 1 0 0 0 1")
    _numbers(path, header, "Offset", 3, "0 0 0")
    return header, offset


@dataclass(frozen=True)
class MetaImageScan(Scan):
    """One ``.mha`` file: a 3D volume, its header read and checked (:func:`read_checked_header`).

    Attributes:
        path: The file.
        header: The header's keys and values.
        data_offset: Where the voxels start in the file.
    """

    kind = "MetaImage"
    path: Path
    header: dict[str, str]
    data_offset: int

    @property
    def shape(self) -> tuple[int, int, int]:
        x, y, z = _numbers(self.path, self.header, "DimSize", 3)
        return int(x), int(y), int(z)

    @property
    def spacing(self) -> tuple[float, float, float]:
        x, y, z = _numbers(self.path, self.header, "ElementSpacing", 3, "1 1 1")
        return x, y, z

    @property
    def name(self) -> str:
        return self.path.name.removesuffix(".mha")

    @property
    def n_frames(self) -> int:
        return 1

    @property
    def affine(self) -> np.ndarray:
        header = self.header
        directions = _numbers(self.path, header, "TransformMatrix", 9, "1 0 0 0 1 0 0 0 1")
        offset = _numbers(self.path, header, "Offset", 3, "0 0 0")
        lps = np.eye(4)
        lps[:3, :3] = np.array(directions).reshape(3, 3).T * np.array(self.spacing)  # columns: axes
        lps[:3, 3] = offset
        ras: np.ndarray = LPS_TO_RAS @ lps
        return ras

    @property
    def input_files(self) -> list[Path]:
        return [self.path]

    def read(self, frames: Sequence[int]) -> Iterator[Frame]:
        header = self.header
        dtype = np.dtype(ELEMENT_TYPES[header["ElementType"]])
        count = int(np.prod(self.shape))
        with open(self.path, "rb") as fh:
            fh.seek(self.data_offset)
            voxels = np.frombuffer(fh.read(count * dtype.itemsize), dtype)
        if voxels.size != count:
            raise DataError(
                f"{self.path}: holds {voxels.size} voxels; DimSize = {header['DimSize']} needs {count}"
            )
        image = voxels.reshape(self.shape, order="F").astype(np.float32)
        for t in frames:
            yield Frame(t, image, self.affine, self.spacing)


class MetaImageReader(ScanReader):
    """``.mha`` files, named or found directly in a folder."""

    name = "metaimage"
    file_kind = "a MetaImage file (.mha)"
    contents = ".mha files"

    def find(self, path: Path) -> list[Path]:
        if path.is_dir():
            return sorted(
                p for p in path.iterdir() if p.suffix == ".mha" and p.is_file() and not p.name.startswith(".")
            )
        return [path] if path.suffix == ".mha" else []

    def output_name(self, path: Path) -> str:
        return path.name.removesuffix(".mha")

    def open(self, path: Path, series: str | None = None) -> MetaImageScan:
        return MetaImageScan(path, *read_checked_header(path))


def write_metaimage(path: Path, image: np.ndarray, spacing: Sequence[float], offset: Sequence[float]) -> None:
    """Write ``image`` ``(X, Y, Z)`` as a ``.mha`` file, axes along LPS+ (for tests and examples)."""
    types = {np.dtype(v): k for k, v in ELEMENT_TYPES.items()}
    header = [
        "ObjectType = Image",
        "NDims = 3",
        "BinaryData = True",
        "BinaryDataByteOrderMSB = False",
        "CompressedData = False",
        "TransformMatrix = 1 0 0 0 1 0 0 0 1",
        f"Offset = {' '.join(str(v) for v in offset)}",
        f"ElementSpacing = {' '.join(str(v) for v in spacing)}",
        f"DimSize = {' '.join(str(n) for n in image.shape)}",
        f"ElementType = {types[image.dtype.newbyteorder('<')]}",
        "ElementDataFile = LOCAL",
    ]
    data = image.astype(image.dtype.newbyteorder("<")).tobytes(order="F")
    path.write_bytes(("\n".join(header) + "\n").encode() + data)
