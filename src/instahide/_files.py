"""Reading the files users hand the package (saved keys and pools, data sets, image folders and
tars): a damaged file, or one of another kind, raises a ValueError that names the file and
what is wrong, never the error of the library underneath (zipfile, tarfile, numpy, Pillow,
pickle), which names neither. A missing or unreadable file stays an OSError: it is not damaged.
"""

from __future__ import annotations

import contextlib
import io
import tarfile

import numpy as np

_SIGNATURES = ((b"\x89PNG", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"), (b"GIF8", "a GIF image"),
               (b"\x93NUMPY", "an .npy array"), (b"PK\x03\x04", "a zip archive"), (b"\x1f\x8b", "a gzip file"),
               (b"BZh", "a bzip2 file"), (b"\xfd7zXZ\x00", "an xz file"), (b"%PDF", "a PDF file"))
_TAR_KINDS = ("a tar archive", "a gzip file", "a bzip2 file", "an xz file")


def _head(path) -> bytes:
    """The first bytes of the file, to tell what kind it is (FileNotFoundError if there is none)."""
    with open(path, "rb") as f:
        return f.read(512)


def _kind(head: bytes) -> str | None:
    """What a file starting with `head` looks like, for messages; None if unknown."""
    if not head:
        return "an empty file"
    kind = next((kind for signature, kind in _SIGNATURES if head.startswith(signature)), None)
    if kind is None and head[257:262] == b"ustar":
        kind = "a tar archive"
    if kind is None and all(32 <= byte < 127 or byte in b"\t\n\r" for byte in head):
        kind = "a text file"
    return kind


def _not_a(path, what: str, head: bytes, container: str | None = None) -> ValueError:
    """The file at `path`, which starts with `head`, is not `what` (nor the `container` of one)."""
    details = [d for d in (_kind(head), container and f"not {container}") if d]
    return ValueError(f"{path}: not {what}" + (f" ({', '.join(details)})" if details else ""))


def _damaged(problem: str, error: Exception) -> ValueError:
    """ValueError(f"{problem} (error)") for what a parser raised on bad bytes. The operating
    system's errors (an OSError with an errno: missing file, permissions, I/O) and MemoryError
    are raised as they are: they say nothing about the file's content."""
    if isinstance(error, MemoryError) or (isinstance(error, OSError) and error.errno is not None):
        raise error
    return ValueError(f"{problem} ({error})")


@contextlib.contextmanager
def parsing(problem: str):
    """Whatever a parser raises on damaged bytes becomes ValueError(f"{problem} (error)")."""
    try:
        yield
    except Exception as error:
        raise _damaged(problem, error) from error


@contextlib.contextmanager
def about(path):
    """Errors of building an object from a file's contents (wrong shapes or dtypes) name the file."""
    try:
        yield
    except (TypeError, ValueError) as error:
        raise ValueError(f"{path}: {error}") from error


def read_npz(path, what: str, names, format: str | None = None) -> dict[str, np.ndarray]:
    """The arrays `names` of the .npz archive at `path`, which should be `what` (e.g. "an
    instahide keys file"), read now so that damage shows here. With `format`, the archive's
    member 'format' must hold that text (files the package saved)."""
    with open(path, "rb") as file:  # ours to close: np.load leaks the files it fails to read as archives
        head = file.read(512)
        if not head.startswith(b"PK"):
            raise _not_a(path, what, head, "an .npz archive")
        file.seek(0)
        with parsing(f"{path}: truncated or damaged, not a readable .npz archive"):
            archive = np.load(file, allow_pickle=False)
        with archive:
            def member(name: str) -> np.ndarray:
                if name not in archive.files:
                    raise ValueError(f"{path}: has no member '{name}' ({what} holds {', '.join(names)})")
                with parsing(f"{path}: truncated or damaged, member '{name}' cannot be read"):
                    return archive[name]

            if format is not None and ("format" not in archive.files or str(member("format")) != format):
                raise ValueError(f"{path}: not {what} (no format member '{format}')")
            return {name: member(name) for name in names}


def read_npy(path, what: str) -> np.ndarray:
    """The array in the .npy file at `path`, which should be `what`."""
    head = _head(path)
    if not head.startswith(b"\x93NUMPY"):
        raise _not_a(path, what, head, "an .npy array")
    with parsing(f"{path}: truncated or damaged .npy array"):
        return np.load(path, allow_pickle=False)


def integer(arrays: dict, name: str) -> int:
    """Member `name` of a loaded archive, which must hold one integer."""
    value = arrays[name]
    if value.shape != () or not np.issubdtype(value.dtype, np.integer):
        raise ValueError(f"member '{name}' must be one integer, got {value.dtype} of shape {value.shape}")
    return int(value)


def decode_image(source, where: str, size: int | None = None) -> np.ndarray:
    """The image file `source` (a path or a binary file object) as an (H, W, 3) uint8 RGB
    array, resized to size x size (bilinear) when `size` is given; `where` names it in errors."""
    from PIL import Image, UnidentifiedImageError

    with parsing(f"{where} cannot be decoded"):
        try:
            with Image.open(source) as image:
                image = image.convert("RGB")  # decodes all of it: truncation shows here
        except UnidentifiedImageError as error:  # its message names a BytesIO, not the file
            raise ValueError("not an image Pillow knows") from error
    if size is not None and image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(image)


@contextlib.contextmanager
def open_tar(path):
    """(tar, files): the tar archive at `path` (plain or compressed) and its regular files,
    listed up to the archive's end."""
    head = _head(path)
    try:
        tar = tarfile.open(path)
    except Exception as error:
        kind = _kind(head)
        if kind not in _TAR_KINDS:
            raise _not_a(path, "a tar archive", head) from error
        _damaged("", error)  # raises the operating system's errors
        raise ValueError(f"{path}: truncated or damaged tar archive ({kind} that tarfile cannot open)") from error
    with tar:
        assert tar.fileobj is not None  # open for reading
        with parsing(f"{path}: truncated or damaged tar archive"):
            members = tar.getmembers()
            tar.fileobj.seek(tar.offset)
            end = tar.fileobj.read(tarfile.BLOCKSIZE)
        # tarfile ends the listing, silently, at the first header it cannot read; an intact
        # archive has its end-of-archive marker (zero blocks) there
        if not end:
            raise ValueError(f"{path}: truncated tar archive (it ends after {len(members)} members, "
                             "without the end-of-archive marker)")
        if end.strip(b"\0"):
            raise ValueError(f"{path}: damaged tar archive (unreadable header at byte {tar.offset}, "
                             f"after {len(members)} members)")
        yield tar, [m for m in members if m.isfile()]


def tar_image(tar: tarfile.TarFile, member: tarfile.TarInfo, path) -> np.ndarray:
    """Member `member` (a regular file) of the tar archive `path`, decoded as by decode_image."""
    with parsing(f"{path}: truncated or damaged tar archive, member '{member.name}' cannot be read"):
        data = tar.extractfile(member)
        assert data is not None  # a regular file
        content = data.read()
    return decode_image(io.BytesIO(content), f"{path}: image '{member.name}'")
