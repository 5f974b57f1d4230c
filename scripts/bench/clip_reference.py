#!/usr/bin/env python3
"""Reference side of `imgfleet bench clip`: writes a full-size ViT-B/32-shaped CLIP checkpoint
with seeded random weights (nothing downloaded); with --serve, then times transformers'
get_image_features / get_text_features on it, one command at a time (see reference_server.py):

    {"op": "image"|"text", "batch": 8, "dtype": "fp32"|"bf16"|"fp16"}  ->  {"seconds": s}
    {"op": "parity", "batch": 4, "file": PATH}  ->  {} (inputs and fp32 outputs written to PATH)

    python clip_reference.py --out DIR [--serve] [--device cpu] [--size full|tiny]

--size tiny writes a 2-layer, 64-wide model of the same architecture (for checking the
benchmark itself quickly).
"""

import argparse
import os

import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import CLIPConfig, CLIPModel, PreTrainedTokenizerFast
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

from reference_server import DTYPES, Models, save_outputs, serve, timed

TEXTS = ["a photo of a dog playing on the beach at sunset", "two cats", "a red car parked in front of a house"]


def byte_tokenizer() -> Tokenizer:
    """Byte-level BPE without merges: every id below CLIP's vocabulary size."""
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for ch in sorted(alphabet):
        vocab[ch] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<|endoftext|>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.post_processor = processors.RobertaProcessing(("<|endoftext|>", 1), ("<|startoftext|>", 0), trim_offsets=False)
    return tok


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--serve", action="store_true")
    p.add_argument("--device", default="cpu")
    p.add_argument("--size", choices=["full", "tiny"], default="full")
    args = p.parse_args()
    os.makedirs(args.out, exist_ok=True)
    torch.manual_seed(0)
    if args.size == "tiny":
        config = CLIPConfig(text_config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4), vision_config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, patch_size=32), projection_dim=32)
    else:
        config = CLIPConfig()  # ViT-B/32 image tower, 12-layer 512-wide text tower, 512-d projections
    config.text_config.eos_token_id = 1
    model = CLIPModel(config).eval()
    model.save_pretrained(args.out, safe_serialization=True)
    tok = byte_tokenizer()
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>").save_pretrained(args.out)
    CLIPImageProcessorPil().save_pretrained(args.out)
    if not args.serve:
        return
    device = torch.device(args.device)
    models_ = Models(model, device)

    def texts(batch):
        enc = tok.encode_batch([TEXTS[i % len(TEXTS)] for i in range(batch)])
        width = max(len(e.ids) for e in enc)
        ids = torch.tensor([e.ids + [1] * (width - len(e.ids)) for e in enc], device=device)
        mask = torch.tensor([[1] * len(e.ids) + [0] * (width - len(e.ids)) for e in enc], device=device)
        return ids, mask

    def image(batch, dtype):
        pixels = torch.randn(batch, 3, 224, 224, generator=torch.Generator().manual_seed(batch)).to(device, DTYPES[dtype])
        return timed(device, lambda: models_.get(dtype).get_image_features(pixel_values=pixels))

    def text(batch, dtype):
        ids, mask = texts(batch)
        return timed(device, lambda: models_.get(dtype).get_text_features(input_ids=ids, attention_mask=mask))

    def parity(batch, file):
        pixels = torch.randn(batch, 3, 224, 224, generator=torch.Generator().manual_seed(1000 + batch)).to(device)
        ids, mask = texts(batch)
        model = models_.get("fp32")
        out = {
            "pixel_values": pixels,
            "input_ids": ids,
            "image_embeds": model.get_image_features(pixel_values=pixels).pooler_output,
            "text_embeds": model.get_text_features(input_ids=ids, attention_mask=mask).pooler_output,
        }
        return save_outputs(out, file)

    serve({"image": image, "text": text, "parity": parity})


if __name__ == "__main__":
    main()
