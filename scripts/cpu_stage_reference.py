#!/usr/bin/env python3
"""Writes the CPU stage's pixel-closeness fixtures to tests/fixtures/cpu_stage/.

Two generated input images (a 1024x768 JPEG, big enough that the CPU stage decodes it at half
scale, and a 320x240 PNG) and what the `transformers` image processors
(CLIPImageProcessor: shortest side 224 + centre crop 224; BlipImageProcessor: 384x384; both
bicubic) make of each, turned back from normalised floats into RGB8 PNGs. The Rust test
`cpu_stage::prepared_pixels_are_close_to_transformers` compares the stage's pixels with them.

Run with the project venv: /opt/imgfleet/venv/bin/python scripts/cpu_stage_reference.py
"""
import pathlib

import numpy as np
from PIL import Image
from transformers import BlipImageProcessor, CLIPImageProcessor

OUT = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "cpu_stage"


def photo(width, height, seed, noise):
    """Smooth gradients, stripes and a little noise: photo-like enough for JPEG and resizing;
    the noise is kept low so that the fixtures stay small."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    r = 128 + 90 * np.sin(x / width * 6.0 + seed) * np.cos(y / height * 4.0)
    g = 60 + 150 * (y / height) + 25 * np.sin((x + y) / 9.0)
    b = 200 - 140 * (x / width) + 30 * np.cos(x / 23.0) * np.sin(y / 17.0)
    image = np.stack([r, g, b], axis=-1) + rng.normal(0, noise, (height, width, 3))
    return Image.fromarray(np.clip(image, 0, 255).astype(np.uint8), "RGB")


def to_rgb8(pixel_values, mean, std):
    chw = np.asarray(pixel_values, dtype=np.float64)
    hwc = chw.transpose(1, 2, 0) * np.asarray(std) + np.asarray(mean)
    return Image.fromarray(np.clip(np.rint(hwc * 255.0), 0, 255).astype(np.uint8), "RGB")


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    clip = CLIPImageProcessor()
    blip = BlipImageProcessor()
    # The PNG gets only a CLIP reference, to keep the fixtures small.
    inputs = {
        "photo_1024x768.jpg": (photo(1024, 768, 1, noise=0.0), dict(format="JPEG", quality=90), (clip, blip)),
        "photo_320x240.png": (photo(320, 240, 2, noise=0.0), dict(format="PNG", optimize=True), (clip,)),
    }
    for name, (image, save_args, processors) in inputs.items():
        path = OUT / name
        image.save(path, **save_args)
        # What the processors see is the file as decoded by Pillow, not the array above.
        decoded = Image.open(path).convert("RGB")
        stem = path.stem
        for processor in processors:
            label = "clip" if processor is clip else "blip"
            values = processor(images=decoded, return_tensors="np")["pixel_values"][0]
            reference = to_rgb8(values, processor.image_mean, processor.image_std)
            reference.save(OUT / f"{stem}.{label}.png", optimize=True)
            print(f"{name}: {label} reference {reference.size}")


if __name__ == "__main__":
    main()
