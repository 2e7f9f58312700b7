"""Small real encoded videos whose pictures say which frame they are and which action is happening.

Each frame's centre square carries its index as a 4 x 3 grid of black / white cells (12 bits, read
back by :func:`read_index` after any short-side resize and centre crop), so a test can tell exactly
which source frames a clip holds. The bottom quarter of the square is an "event" band: grey when
nothing happens, the class's colour during an action, so even untrained SlowFast weights give
features that tell actions apart. Written with PyAV (H.264 in MP4), the decoder's own library.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np

CODE_COLUMNS, CODE_ROWS = 4, 3
MAX_FRAMES = 2 ** (CODE_COLUMNS * CODE_ROWS)
WIDTH, HEIGHT = 80, 64  # landscape, so the short-side resize and the centre crop both matter
IDLE = (128, 128, 128)


def class_colour(label: int) -> tuple[int, int, int]:
    """A saturated colour per class (8 distinct: the corners of the RGB cube but black, white, and grey)."""
    corners = [(r, g, b) for r in (32, 224) for g in (32, 224) for b in (32, 224)]
    ramp = [(224, 96, 32), (32, 160, 224)]
    palette = [c for c in corners if len(set(c)) > 1] + ramp
    return palette[label % len(palette)]


def code_cells(side: int) -> list[tuple[int, int, int, int]]:
    """(y0, y1, x0, x1) of each bit's cell in a square of ``side`` pixels, bit 0 first."""
    code_height = side * 3 // 4
    cells = []
    for bit in range(CODE_COLUMNS * CODE_ROWS):
        row, col = divmod(bit, CODE_COLUMNS)
        y0, y1 = row * code_height // CODE_ROWS, (row + 1) * code_height // CODE_ROWS
        cells.append((y0, y1, col * side // CODE_COLUMNS, (col + 1) * side // CODE_COLUMNS))
    return cells


def picture(index: int, label: int | None, width: int = WIDTH, height: int = HEIGHT) -> np.ndarray:
    """uint8 RGB ``[height, width, 3]``: the index code over the event band, in the centre square."""
    image = np.full((height, width, 3), 64, dtype=np.uint8)
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    square = image[top : top + side, left : left + side]
    for bit, (y0, y1, x0, x1) in enumerate(code_cells(side)):
        square[y0:y1, x0:x1] = 255 if (index >> bit) & 1 else 0
    square[side * 3 // 4 :] = IDLE if label is None else class_colour(label)
    return image


def read_index(frame: np.ndarray) -> int:
    """The index coded in a square ``[S, S, 3]`` frame (the centre crop of :func:`picture`)."""
    gray = frame.mean(axis=2)
    index = 0
    for bit, (y0, y1, x0, x1) in enumerate(code_cells(frame.shape[0])):
        cy, cx, hy, hx = (y0 + y1) // 2, (x0 + x1) // 2, max(1, (y1 - y0) // 4), max(1, (x1 - x0) // 4)
        if gray[cy - hy : cy + hy, cx - hx : cx + hx].mean() > 128:
            index |= 1 << bit
    return index


def write_video(path: Path, num_frames: int, fps: float, actions: np.ndarray, labels: np.ndarray) -> None:
    """Encode ``num_frames`` pictures at ``fps``; frames inside ``actions[k]`` = [start, end) show ``labels[k]``."""
    if num_frames > MAX_FRAMES:
        raise ValueError(f"at most {MAX_FRAMES} frames can be coded, got {num_frames}")
    frame_label: list[int | None] = [None] * num_frames
    for (start, end), label in zip(actions.tolist(), labels.tolist(), strict=True):
        frame_label[start:end] = [int(label)] * (min(end, num_frames) - start)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        stream.options = {"preset": "ultrafast", "crf": "10"}
        for index in range(num_frames):
            frame = av.VideoFrame.from_ndarray(picture(index, frame_label[index]), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
