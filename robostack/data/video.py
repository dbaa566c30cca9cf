"""MP4 video in a codec that browsers, LeRobot's decoders and OpenCV all play: H.264 (yuv420p), encoded with
PyAV (its wheels bundle FFmpeg with libx264; OpenCV's wheels encode MPEG-4 Part 2 only, which browsers do not
play). Every second frame is a keyframe and there are no B-frames, as LeRobot encodes for random access: a
training loader seeks to any frame of an episode. Lossy: decoded frames are close to, not equal to, the
written ones."""
from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np

VIDEO_CODEC = "h264"  # as LeRobot names codecs in info.json's video.codec
PIXEL_FORMAT = "yuv420p"
ENCODER_OPTIONS = {"crf": "20", "preset": "veryfast", "g": "2", "bf": "0"}


class VideoError(ValueError):
    """A video that cannot be written as asked; the message names the file and the reason."""


class Mp4Writer:
    """Frames (RGB uint8 [height, width, 3]) in, an H.264 MP4 out: ``write`` each, then ``close``."""

    def __init__(self, path: str | Path, width: int, height: int, fps: float):
        import av

        if width % 2 or height % 2:
            raise VideoError(f"{path}: H.264 in {PIXEL_FORMAT} needs an even width and height, got {width}x{height}")
        self.path, self.shape = Path(path), (height, width, 3)
        self.container = av.open(str(self.path), "w")
        try:
            self.stream = self.container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
            self.stream.width, self.stream.height, self.stream.pix_fmt = width, height, PIXEL_FORMAT
            self.stream.options = dict(ENCODER_OPTIONS)
        except Exception:
            self.container.close()
            raise
        self._frame = av.VideoFrame

    def write(self, rgb: np.ndarray) -> None:
        if rgb.shape != self.shape or rgb.dtype != np.uint8:
            raise VideoError(f"{self.path}: a frame must be uint8 {self.shape}, got {rgb.dtype} {rgb.shape}")
        frame = self._frame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
        self.container.mux(self.stream.encode(frame))

    def close(self) -> None:
        try:
            self.container.mux(self.stream.encode(None))  # flush the encoder's delayed frames
        finally:
            self.container.close()


def encode_video(path: str | Path, frames: np.ndarray, fps: float) -> None:
    """Write RGB frames [N, height, width, 3] uint8 as an H.264 MP4."""
    writer = Mp4Writer(path, frames.shape[2], frames.shape[1], fps)
    try:
        for frame in frames:
            writer.write(frame)
    finally:
        writer.close()
