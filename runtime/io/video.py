"""Frames in and out, one at a time: video files through PyAV, frame folders through Pillow.

    source = open_frames("clip.mp4")            # or a folder of .jpg/.png frames
    for index, name, frame in source.frames():  # frame: (H, W, 3) uint8 RGB
        ...
    with VideoWriter("overlay.mp4", fps=source.fps) as out:
        out.write(frame)

Nothing holds a whole video: decoding streams, and `frames(start=k)` skips the first k frames
without converting them (a folder does not even open their files), so a resumed run is cheap.
Every failure a user can cause (unreadable or damaged file, empty input, frames of changing size)
is a CoordGANError in one sentence. PyAV is imported on first use.
"""

from __future__ import annotations

import contextlib
import os
import re
from fractions import Fraction
from pathlib import Path
from typing import Iterator

import numpy as np

from runtime.errors import CoordGANError, first_line
from runtime.fileio import check_target, write_error
from runtime.io.images import image_extensions, read_image

FRAME_SUFFIXES = (".jpg", ".jpeg", ".png")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg")
DEFAULT_FPS = 24.0  # frame folders carry no rate; the overlay video of one gets this
OVERLAY_CODECS = ("libx264", "h264", "mpeg4")  # first one this FFmpeg build can encode wins


def _import_av():
    try:
        import av
    except ImportError:
        raise CoordGANError("Reading and writing videos needs PyAV; install it with: "
                            "pip install 'coordgan-deploy[runtime]'.") from None
    return av


def natural_key(name: str):
    """Sort key that orders frame_2 before frame_10 (and 00002 before 00010, as plain sorting does)."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", name)]


class FrameSource:
    """Frames of one sequence. `count` is None where the container does not say; `names` is None
    where names follow from indices (videos: 00000, 00001, ...)."""

    path: Path
    count: int | None
    fps: float
    names: list[str] | None = None
    read_ahead: bool = True  # may be read on a background thread, ahead of use (runtime.io.prefetch)

    def resolve(self, spec) -> int:
        """The index of the frame a user means by `spec`: its name (with or without the extension),
        a number equal to a numeric name, or else its 0-based index."""
        stem = str(spec)
        if Path(stem).suffix.lower() in FRAME_SUFFIXES:
            stem = Path(stem).stem
        index = None
        if self.names is not None:
            if stem in self.names:
                return self.names.index(stem)
            if stem.isdigit():
                same = [i for i, n in enumerate(self.names) if n.isdigit() and int(n) == int(stem)]
                index = same[0] if len(same) == 1 else int(stem)
        elif stem.isdigit():
            index = int(stem)
        if index is None:
            raise CoordGANError(f"Frame {spec!r} is not a frame of {self.path}"
                                + (" (its frames are named by index: 00000, 00001, ...)." if self.names is None
                                   else f" (its frames are {self.names[0]} ... {self.names[-1]})."))
        if self.count is not None and index >= self.count:
            raise CoordGANError(f"Frame {spec!r} is beyond the last frame of {self.path} ({self.count} frames).")
        return index

    def frames(self, start: int = 0) -> Iterator[tuple[int, str, np.ndarray]]:
        """(index, name, RGB frame) for every frame from `start` on; names have no extension."""
        raise NotImplementedError

    def _checked(self, index: int, name: str, frame: np.ndarray, first_size: list) -> np.ndarray:
        size = frame.shape[:2]
        if not first_size:
            first_size.append(size)
        elif size != first_size[0]:
            h0, w0 = first_size[0]
            raise CoordGANError(f"Frame {name} of {self.path} is {size[1]}x{size[0]} but the sequence's first "
                                f"frame is {w0}x{h0}; every frame of a sequence must have the same size.")
        return frame


class FolderFrames(FrameSource):
    """A folder of .jpg/.png frames, in natural name order."""

    def __init__(self, path):
        self.path = Path(path)
        if not self.path.is_dir():
            raise CoordGANError(f"Frame folder {self.path} does not exist.")
        self.files = sorted((p for p in self.path.iterdir() if p.is_file() and p.suffix.lower() in FRAME_SUFFIXES),
                            key=lambda p: natural_key(p.name))
        if not self.files:
            raise CoordGANError(f"Folder {self.path} holds no .jpg or .png frames.")
        stems = [p.stem for p in self.files]
        if len(set(stems)) != len(stems):
            dup = next(s for s in stems if stems.count(s) > 1)
            raise CoordGANError(f"Folder {self.path} holds two frames named {dup} (e.g. .jpg and .png); "
                                "keep one file per frame.")
        self.names = stems
        self.count = len(self.files)
        self.fps = DEFAULT_FPS

    def frames(self, start: int = 0):
        first_size: list = []
        for index, path in enumerate(self.files):
            if index < start and first_size:
                continue  # skipped frames are not even opened (the first one fixes the size)
            frame = self._checked(index, path.stem, read_image(path, what="Frame"), first_size)
            if index >= start:
                yield index, path.stem, frame


class VideoFrames(FrameSource):
    """A video file's first video stream, decoded frame by frame; frames are named 00000, 00001, ..."""

    def __init__(self, path):
        self.path = Path(path)
        if not self.path.is_file():
            raise CoordGANError(f"Video {self.path} does not exist.")
        with self._open() as container:
            stream = self._stream(container)
            self.count = int(stream.frames) or None
            rate = stream.average_rate or stream.guessed_rate
            self.fps = float(rate) if rate else DEFAULT_FPS
        # zero-padded like DAVIS (5 digits), wider only when the count is known to need it
        self.digits = max(5, len(str((self.count or 1) - 1)))

    def _open(self):
        av = _import_av()
        try:
            return av.open(str(self.path), mode="r")
        except (av.FFmpegError, OSError, ValueError) as exc:
            raise CoordGANError(f"Video {self.path} cannot be read ({first_line(exc)}); "
                                "it is damaged or not a video file.") from None

    def _stream(self, container):
        if not container.streams.video:
            raise CoordGANError(f"{self.path} holds no video stream.")
        return container.streams.video[0]

    def _kind(self) -> str:
        """What the file's name says it is (FFmpeg opens images too)."""
        return "an image" if self.path.suffix.lower() in image_extensions() else "a video"

    def name(self, index: int) -> str:
        return f"{index:0{self.digits}d}"

    def frames(self, start: int = 0):
        av = _import_av()
        first_size: list = []
        index = -1
        with self._open() as container:
            stream = self._stream(container)
            stream.thread_type = "AUTO"  # frame-threaded decoding; order is unchanged
            packets = 0
            try:
                for packet in container.demux(stream):
                    # the last packet, empty and untimed, only flushes the decoder (an AVI's empty
                    # dropped-frame packets are timed, and counted)
                    packets += packet.size > 0 or packet.dts is not None
                    for frame in packet.decode():
                        index += 1
                        if index < start and first_size:
                            continue  # decoded (a stream can only be read in order) but not converted
                        image = frame.to_ndarray(format="rgb24")
                        self._checked(index, self.name(index), image, first_size)
                        if index >= start:
                            yield index, self.name(index), image
            except (av.FFmpegError, ValueError) as exc:
                if index < 0:  # not a single frame: say what the file is not, not "damaged after frame 0"
                    raise CoordGANError(f"{self.path} cannot be decoded ({first_line(exc)}); it is not "
                                        f"{self._kind()} file, or a damaged one.") from None
                raise CoordGANError(f"Video {self.path} is damaged after frame {index} "
                                    f"({first_line(exc)}).") from None
        if index < 0:
            raise CoordGANError(f"Video {self.path} holds no decodable frames; it is empty or damaged.")
        # A file cut off after its index (-movflags faststart) demuxes fewer packets than the index
        # lists, without an FFmpeg error. Packets, not frames: a decoder may rightly drop some
        # (pre-roll of an edit list).
        if self.count is not None and packets < self.count:
            raise CoordGANError(f"Video {self.path} ends after frame {index}: its index lists {self.count} frames "
                                f"but the file holds {packets}; it is truncated.")


class ArrayFrames(FrameSource):
    """Frames already in memory: an array (T, H, W, 3) uint8 or a sequence of (H, W, 3) arrays."""

    def __init__(self, frames, names=None, fps: float = DEFAULT_FPS, path: str = "<frames>"):
        self.items = frames
        self.count = len(frames)
        if not self.count:
            raise CoordGANError("The sequence has no frames.")
        self.names = [str(n) for n in names] if names is not None else [f"{i:05d}" for i in range(self.count)]
        if len(self.names) != self.count:
            raise CoordGANError(f"Got {self.count} frames but {len(self.names)} names.")
        self.fps = fps
        self.path = Path(path)

    def frames(self, start: int = 0):
        first_size: list = []
        for index in range(self.count):
            frame = np.asarray(self.items[index])
            if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
                raise CoordGANError(f"Frame {index} must be a uint8 RGB array (H, W, 3), got {frame.dtype} "
                                    f"{list(frame.shape)}.")
            self._checked(index, self.names[index], frame, first_size)
            if index >= start:
                yield index, self.names[index], frame


class IterableFrames(FrameSource):
    """Frames from any iterable, read once: (H, W, 3) uint8 arrays, or (name, array) pairs.

    Names are unknown until the frames come, so references point at frames by index here. Never
    read ahead: the caller's iterator runs where the caller runs it (it may reuse one buffer, block,
    or not be thread-safe)."""

    read_ahead = False

    def __init__(self, iterable, fps: float = DEFAULT_FPS, path: str = "<iterator>"):
        self.iterable = iterable
        self.count = None
        self.fps = fps
        self.path = Path(path)

    def frames(self, start: int = 0):
        first_size: list = []
        for index, item in enumerate(self.iterable):
            name, frame = item if isinstance(item, tuple) else (f"{index:05d}", item)
            frame = np.asarray(frame)
            if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
                raise CoordGANError(f"Frame {index} must be a uint8 RGB array (H, W, 3), got {frame.dtype} "
                                    f"{list(frame.shape)}.")
            self._checked(index, str(name), frame, first_size)
            if index >= start:
                yield index, str(name), frame


def as_frame_source(frames) -> FrameSource:
    """A FrameSource as is; an array or list of frames in memory; any other iterable, streamed."""
    if isinstance(frames, FrameSource):
        return frames
    if isinstance(frames, (str, Path)):
        return open_frames(frames)
    if isinstance(frames, np.ndarray) or (hasattr(frames, "__len__") and hasattr(frames, "__getitem__")):
        return ArrayFrames(frames)
    return IterableFrames(frames)


def open_frames(path) -> FrameSource:
    """A frame folder or a video file."""
    path = Path(path)
    if path.is_dir():
        return FolderFrames(path)
    if not path.exists():
        raise CoordGANError(f"Input {path} does not exist.")
    return VideoFrames(path)


class VideoWriter:
    """Writes RGB frames to a video (H.264 where this FFmpeg has an encoder for it, else MPEG-4 Part 2).

    The file is built under a temporary name beside the target and renamed on `close()`; an error
    or interrupt (leaving the `with` block by an exception) removes it, so a video at the target
    path is always complete. Odd frame sizes are padded by one edge pixel (yuv420p needs even ones).

    Deterministic: the same frames give the same bytes on every run (and after a resume, which
    rebuilds the video from frame 0) with the same PyAV build. The encoder runs on one thread (a
    threaded x264 or MPEG-4 encoder decides differently with the core count, and x264 with many threads
    even between runs), x264 without its macroblock tree (which differed between runs even on one
    thread), timestamps are the frame indices, and the container is written bit-exact (no muxer
    version string, a fixed Matroska segment id and no creation date).
    """

    WRITABLE = (".mp4", ".m4v", ".mkv", ".mov", ".avi")

    @classmethod
    def check_name(cls, path) -> None:
        if Path(path).suffix.lower() not in cls.WRITABLE:
            raise CoordGANError(f"Cannot write the video {path}: use a {', '.join(cls.WRITABLE)} name.")

    def __init__(self, path, fps: float = DEFAULT_FPS):
        av = _import_av()
        self.path = Path(path)
        self.check_name(self.path)
        check_target(self.path, make_folder=True)
        self.tmp = self.path.with_name(f".{self.path.stem}.{os.getpid()}.tmp{self.path.suffix}")
        self.codec = pick_codec()
        self.fps = Fraction(fps).limit_denominator(1001) if fps and fps > 0 else Fraction(int(DEFAULT_FPS))
        try:
            self.tmp.touch()  # FFmpeg opens the file only with the first frame: fail before any work
            self.container = av.open(str(self.tmp), mode="w", options={"fflags": "+bitexact"})
        except (av.FFmpegError, OSError, ValueError) as exc:
            with contextlib.suppress(OSError):
                self.tmp.unlink(missing_ok=True)
            raise CoordGANError(f"Cannot write the video {self.path} ({first_line(exc)}); use a "
                                f"{', '.join(self.WRITABLE)} name in a writable folder.") from None
        self.stream = None
        self.frames_written = 0

    def _start(self, height: int, width: int):
        stream = self.container.add_stream(self.codec, rate=self.fps)
        stream.width, stream.height = width, height
        stream.pix_fmt = "yuv420p"
        stream.codec_context.thread_count = 1  # see the class docstring: threads change the bytes
        options = {"flags": "+bitexact"}  # no encoder version string in the stream (MPEG-4 writes one)
        if self.codec in ("libx264", "h264"):
            # mbtree off: x264's macroblock-tree rate control gave other bytes run to run on one thread
            # for some small frames (reads of uninitialised memory in its assembly, it seems)
            options.update(crf="20", preset="veryfast", mbtree="0")
        else:
            stream.bit_rate = max(2_000_000, int(4 * width * height * float(self.fps)))
        stream.options = options
        self.stream = stream

    def write(self, frame: np.ndarray) -> None:
        av = _import_av()
        h, w = frame.shape[:2]
        if h % 2 or w % 2:
            frame = np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
        if self.stream is None:
            self._start(*frame.shape[:2])
        image = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame, dtype=np.uint8), format="rgb24")
        image.pts, image.time_base = self.frames_written, 1 / self.fps  # frame i at i / fps, never a clock
        try:
            for packet in self.stream.encode(image):
                self.container.mux(packet)
        except (av.FFmpegError, OSError) as exc:  # a full disk: name the video, not its temp file
            raise write_error(self.path, exc) from None
        self.frames_written += 1

    def close(self) -> Path:
        """Flush the encoder, close the file and move it into place."""
        av = _import_av()
        try:
            if self.stream is not None:
                for packet in self.stream.encode(None):
                    self.container.mux(packet)
            self.container.close()
            os.replace(self.tmp, self.path)
        except (av.FFmpegError, OSError) as exc:
            self.abort()
            raise write_error(self.path, exc) from None
        return self.path

    def abort(self) -> None:
        try:
            self.container.close()
        except Exception:  # a half-initialised container may refuse to close; the file goes anyway
            pass
        self.tmp.unlink(missing_ok=True)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *rest):
        if exc_type is None:
            self.close()
        else:
            self.abort()


def pick_codec() -> str:
    av = _import_av()
    for name in OVERLAY_CODECS:
        try:
            av.codec.Codec(name, "w")
            return name
        except Exception:  # UnknownCodecError and friends: this build has no such encoder
            continue
    raise CoordGANError("This FFmpeg (inside PyAV) has neither an H.264 nor an MPEG-4 encoder, so no overlay "
                        "video can be written.")
