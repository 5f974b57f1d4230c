#!/usr/bin/env python3
"""The CPU stage's work done the seed's way, in one Python process, for comparison with
`imgfleet bench prep`: for every image under DIR, read + hashlib SHA-256, Pillow decode,
EXIF orientation (ImageOps.exif_transpose) and metadata, then the CLIP input (shortest side to
224, bicubic, centre crop 224) and the BLIP input (384x384, bicubic).

  prep_reference.py DIR            naive: full decode, then resize
  prep_reference.py DIR --draft    with Pillow's draft(): JPEG DCT scaling to at least 384

Prints one line: `<variant>: N images in S s: images_per_sec=R`.
"""
import argparse
import hashlib
import io
import os
import time

from PIL import Image, ImageOps

CLIP, BLIP = 224, 384


def prepare(path, draft):
    with open(path, "rb") as f:
        data = f.read()
    hashlib.sha256(data).hexdigest()
    image = Image.open(io.BytesIO(data))
    image.getexif()
    if draft:
        image.draft("RGB", (BLIP, BLIP))
    image = ImageOps.exif_transpose(image).convert("RGB")
    w, h = image.size
    short, long = (w, h) if w <= h else (h, w)
    new_long = int(CLIP * long / short)
    size = (CLIP, new_long) if w <= h else (new_long, CLIP)
    clip = image.resize(size, Image.Resampling.BICUBIC)
    left, top = (clip.width - CLIP) // 2, (clip.height - CLIP) // 2
    clip = clip.crop((left, top, left + CLIP, top + CLIP)).tobytes()
    blip = image.resize((BLIP, BLIP), Image.Resampling.BICUBIC).tobytes()
    return len(clip) + len(blip)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("dir")
    parser.add_argument("--draft", action="store_true", help="use Pillow's draft() (JPEG DCT scaling)")
    args = parser.parse_args()
    files = sorted(os.path.join(d, n) for d, _, names in os.walk(args.dir) for n in names)
    started = time.perf_counter()
    for path in files:
        prepare(path, args.draft)
    seconds = time.perf_counter() - started
    variant = "pillow-draft" if args.draft else "pillow-naive"
    print(f"{variant}: {len(files)} images in {seconds:.3f} s: images_per_sec={len(files) / seconds:.2f}")


if __name__ == "__main__":
    main()
