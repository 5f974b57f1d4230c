#!/usr/bin/env python3
"""A tiny random CLIP at the real input size (224) and what transformers embeds from the CPU
stage's fixture photos, so the Rust test can check that the CPU stage's prepared pixels embed
like transformers' own preprocessing of the same files.

Writes tests/fixtures/models/clip-tiny-224/ (checkpoint, tokenizer copied from clip-tiny-a)
and its reference.safetensors. Deterministic.

    /opt/imgfleet/venv/bin/python scripts/clip_224_reference.py
"""
import pathlib
import shutil
import sys

import torch
from PIL import Image
from safetensors.torch import save_file
from transformers import CLIPConfig, CLIPModel
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
from make_test_models import noisy_  # noqa: E402

PHOTOS = ["photo_1024x768.jpg", "photo_320x240.png"]


def main():
    torch.set_num_threads(1)
    source = ROOT / "tests/fixtures/models/clip-tiny-a"
    out = ROOT / "tests/fixtures/models/clip-tiny-224"
    out.mkdir(parents=True, exist_ok=True)
    for name in ["tokenizer.json", "tokenizer_config.json"]:
        shutil.copy(source / name, out / name)
    text = CLIPConfig.from_pretrained(source).text_config.to_dict()
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  image_size=224, patch_size=32, hidden_act="quick_gelu")
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=24)).eval()
    noisy_(model, seed=224)
    model.save_pretrained(out, safe_serialization=True)
    processor = CLIPImageProcessorPil()  # shortest edge 224, centre crop 224, OpenAI mean/std
    processor.save_pretrained(out)
    refs = {}
    with torch.no_grad():
        for name in PHOTOS:
            image = Image.open(ROOT / "tests/fixtures/cpu_stage" / name).convert("RGB")
            pixels = processor(images=image, return_tensors="pt").pixel_values
            refs[name] = model.get_image_features(pixel_values=pixels).pooler_output[0].contiguous()
    save_file(refs, str(out / "reference.safetensors"))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
