"""The tray icon, drawn with Pillow at run time: a disc in the state's colour, a badge with a count."""

from __future__ import annotations

from functools import cache

from PIL import Image, ImageDraw

from .model import IconState

SIZE = 64
COLOURS: dict[IconState, tuple[int, int, int]] = {
    IconState.RUNNING: (46, 160, 67),  # green
    IconState.APPROVALS: (245, 166, 35),  # amber
    IconState.ERROR: (215, 58, 73),  # red
    IconState.STOPPED: (140, 140, 140),  # grey
}


@cache
def draw(state: IconState, count: int = 0) -> Image.Image:
    """The icon for a state; with approvals waiting, their count (9+ above nine) in the middle."""
    # Drawn four times larger and scaled down: Pillow's shapes have no anti-aliasing of their own.
    big = SIZE * 4
    image = Image.new("RGBA", (big, big), (0, 0, 0, 0))
    pen = ImageDraw.Draw(image)
    colour = COLOURS[state]
    pen.ellipse((8, 8, big - 8, big - 8), fill=(*colour, 255), outline=(255, 255, 255, 255), width=12)
    if state is IconState.APPROVALS and count:
        _digits(pen, "9+" if count > 9 else str(count), big)
    elif state is IconState.STOPPED:
        pen.rectangle((big * 0.34, big * 0.34, big * 0.66, big * 0.66), fill=(255, 255, 255, 255))
    elif state is IconState.ERROR:
        pen.rectangle((big * 0.45, big * 0.22, big * 0.55, big * 0.6), fill=(255, 255, 255, 255))
        pen.ellipse((big * 0.44, big * 0.68, big * 0.56, big * 0.8), fill=(255, 255, 255, 255))
    else:
        pen.ellipse((big * 0.36, big * 0.36, big * 0.64, big * 0.64), fill=(255, 255, 255, 255))
    return image.resize((SIZE, SIZE), Image.Resampling.LANCZOS)


def _digits(pen: ImageDraw.ImageDraw, text: str, big: int) -> None:
    from PIL import ImageFont

    font = ImageFont.load_default(size=big * 0.55)
    pen.text((big / 2, big / 2), text, fill=(40, 30, 0, 255), font=font, anchor="mm")
