#!/usr/bin/env python3
"""Reference side of `imgfleet bench clip`: writes a full-size ViT-B/32-shaped CLIP checkpoint
with random weights (nothing downloaded) and times transformers' get_image_features /
get_text_features on it. Prints one JSON line: {"image": {batch: per_second}, "text": {...}}.

    python clip_reference.py --out DIR [--batches 1,8,32] [--repeats 3] [--device cpu]
"""

import argparse
import json
import os
import time

import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import CLIPConfig, CLIPModel, PreTrainedTokenizerFast
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

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


def rate(fn, batch, repeats):
    fn()  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return batch * repeats / (time.perf_counter() - start)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--batches", default="1,8,32")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    os.makedirs(args.out, exist_ok=True)
    config = CLIPConfig()  # ViT-B/32 image tower, 12-layer 512-wide text tower, 512-d projections
    config.text_config.eos_token_id = 1
    model = CLIPModel(config).eval()
    model.save_pretrained(args.out, safe_serialization=True)
    tok = byte_tokenizer()
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>").save_pretrained(args.out)
    CLIPImageProcessorPil().save_pretrained(args.out)

    device = torch.device(args.device)
    model = model.to(device)
    if device.type == "cuda":
        model = model.half()
    dtype = next(model.parameters()).dtype
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    out = {"image": {}, "text": {}, "threads": torch.get_num_threads(), "torch": torch.__version__}
    with torch.inference_mode():
        for b in [int(x) for x in args.batches.split(",") if x]:
            pixels = torch.randn(b, 3, 224, 224, generator=torch.Generator().manual_seed(b)).to(device, dtype)

            def images():
                model.get_image_features(pixel_values=pixels)
                sync()

            out["image"][b] = rate(images, b, args.repeats)
            enc = tok.encode_batch([TEXTS[i % len(TEXTS)] for i in range(b)])
            width = max(len(e.ids) for e in enc)
            ids = torch.tensor([e.ids + [1] * (width - len(e.ids)) for e in enc], device=device)
            mask = torch.tensor([[1] * len(e.ids) + [0] * (width - len(e.ids)) for e in enc], device=device)

            def texts():
                model.get_text_features(input_ids=ids, attention_mask=mask)
                sync()

            out["text"][b] = rate(texts, b, args.repeats)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
