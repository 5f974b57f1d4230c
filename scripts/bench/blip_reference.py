#!/usr/bin/env python3
"""Reference side of `imgfleet bench blip`: writes a full-size BLIP-base-shaped captioning
checkpoint (Salesforce/blip-image-captioning-base shapes) with random weights (nothing
downloaded) and times transformers' BlipForConditionalGeneration.generate on it, greedy, with
exactly --tokens new tokens (min and max new tokens equal). Prints one JSON line:
{"captions": {batch: images_per_second}, "threads": n, "torch": version}.

    python blip_reference.py --out DIR [--batches 1,8] [--repeats 2] [--tokens 20] [--device cpu]
"""

import argparse
import json
import os
import time

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from transformers import BlipConfig, BlipForConditionalGeneration, PreTrainedTokenizerFast
from transformers.models.blip.image_processing_pil_blip import BlipImageProcessorPil


def wordpiece_tokenizer() -> Tokenizer:
    """A minimal BERT-style tokenizer; ids past its vocabulary are skipped when decoding."""
    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + list("abcdefghijklmnopqrstuvwxyz"))}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.add_special_tokens(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    tok.decoder = decoders.WordPiece()
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
    p.add_argument("--batches", default="1,8")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--tokens", type=int, default=20)
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    os.makedirs(args.out, exist_ok=True)
    config = BlipConfig()  # ViT-B/16 at 384 (12 layers, 768 wide), 12-layer BERT decoder, 30524 ids
    model = BlipForConditionalGeneration(config).eval()
    model.save_pretrained(args.out, safe_serialization=True)
    PreTrainedTokenizerFast(tokenizer_object=wordpiece_tokenizer(), pad_token="[PAD]", sep_token="[SEP]").save_pretrained(args.out)
    BlipImageProcessorPil().save_pretrained(args.out)

    device = torch.device(args.device)
    model = model.to(device)
    if device.type == "cuda":
        model = model.half()
    dtype = next(model.parameters()).dtype
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    out = {"captions": {}, "threads": torch.get_num_threads(), "torch": torch.__version__}
    with torch.inference_mode():
        for b in [int(x) for x in args.batches.split(",") if x]:
            pixels = torch.randn(b, 3, 384, 384, generator=torch.Generator().manual_seed(b)).to(device, dtype)

            def captions():
                ids = model.generate(pixel_values=pixels, min_new_tokens=args.tokens, max_new_tokens=args.tokens)
                assert ids.shape[1] == 1 + args.tokens, ids.shape
                sync()

            out["captions"][b] = rate(captions, b, args.repeats)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
