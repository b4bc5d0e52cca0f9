"""Pictures of every notification template, as mail clients show them: `make notification-pictures`.

Each template is rendered with the catalog's sample data (and a sample logo), written to a file, and
photographed by Debian's headless Chromium at 375 pixels (a phone) and 800 pixels (a desktop mail
client) wide, in the light and dark colour schemes (``--force-dark-mode`` makes the page see
``prefers-color-scheme: dark``). The empty background below the email is cut away and the colours
reduced to a small palette, so the PNGs committed in docs/notifications/ stay small.

Usage: python scripts/notification_pictures.py [OUTPUT_DIR] [--locale en]
"""

from __future__ import annotations

import argparse
import base64
import io
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image, ImageChops, ImageDraw, ImageFont

from mailbridge.outbound.catalog import SPECS, sample_context
from mailbridge.outbound.render import Renderer

WIDTHS = (375, 800)
SCHEMES = ("light", "dark")
HEIGHT = 2400  # taller than any template; the empty part is cut away


def sample_logo() -> str:
    """A small made-up logo as a data: URI (a browser cannot resolve the cid: of a real email)."""
    image = Image.new("RGBA", (320, 80), (0, 0, 0, 0))
    draw = ImageDraw.Draw(image)
    draw.rounded_rectangle((0, 8, 64, 72), radius=14, fill=(59, 110, 165, 255))
    draw.ellipse((18, 26, 46, 54), fill=(255, 255, 255, 255))
    try:
        font: ImageFont.ImageFont | ImageFont.FreeTypeFont = ImageFont.load_default(size=30)
    except TypeError:  # Pillow < 10.1
        font = ImageFont.load_default()
    draw.text((80, 22), "Acme", fill=(59, 110, 165, 255), font=font)
    out = io.BytesIO()
    image.save(out, "PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(out.getvalue()).decode("ascii")


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    sys.exit("notification-pictures: Chromium is missing (Debian package chromium)")


def shoot(browser: str, page: Path, width: int, scheme: str, target: Path) -> None:
    args = [
        browser,
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        "--force-device-scale-factor=1",
        f"--window-size={width},{HEIGHT}",
        f"--screenshot={target}",
    ]
    if scheme == "dark":
        args.append("--force-dark-mode")
    subprocess.run([*args, page.as_uri()], check=True, capture_output=True, timeout=120)


def trim_and_shrink(path: Path) -> None:
    """Cut the page's empty background below the email; reduce to a 64-colour palette."""
    image = Image.open(path).convert("RGB")
    background = Image.new("RGB", image.size, image.getpixel((image.width - 1, image.height - 1)))
    box = ImageChops.difference(image, background).getbbox()
    if box is not None:
        image = image.crop((0, 0, image.width, min(image.height, box[3] + 24)))
    image.quantize(colors=64, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", nargs="?", default="docs/notifications", type=Path)
    parser.add_argument("--locale", default="en", choices=("en", "fr"))
    args = parser.parse_args()
    args.output.mkdir(parents=True, exist_ok=True)
    browser = chromium()
    renderer = Renderer()
    logo = sample_logo()
    with tempfile.TemporaryDirectory() as tmp:
        for name in SPECS:
            context = sample_context(name, args.locale, {"logo_src": logo})
            page = Path(tmp) / f"{name}.html"
            page.write_text(renderer.render(name, args.locale, context).html, encoding="utf-8")
            for width in WIDTHS:
                for scheme in SCHEMES:
                    target = args.output / f"{name}-{args.locale}-{width}-{scheme}.png"
                    shoot(browser, page, width, scheme, target)
                    trim_and_shrink(target)
                    print(f"{target} ({target.stat().st_size // 1024} KB)")


if __name__ == "__main__":
    main()
