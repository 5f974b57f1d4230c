#!/usr/bin/env python3
"""Reference side of `imgfleet bench blip`: writes a full-size BLIP-base-shaped captioning
checkpoint (Salesforce/blip-image-captioning-base shapes) with seeded random weights (nothing
downloaded); with --serve, then times transformers' BlipForConditionalGeneration.generate on it,
greedy, exactly `tokens` new tokens (min and max new tokens equal), one command at a time (see
reference_server.py):

    {"op": "captions", "batch": 8, "tokens": 20, "dtype": "fp32"|"bf16"|"fp16"}  ->  {"seconds": s}
    {"op": "parity", "batch": 4, "tokens": 20, "file": PATH}  ->  {} (inputs and fp32 outputs in PATH)

    python blip_reference.py --out DIR [--serve] [--device cpu] [--size full|tiny]

--size tiny writes a 2-layer, 64-wide model of the same architecture (for checking the
benchmark itself quickly).
"""

import argparse
import os

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from transformers import BlipConfig, BlipForConditionalGeneration, PreTrainedTokenizerFast
from transformers.models.blip.image_processing_pil_blip import BlipImageProcessorPil

from reference_server import DTYPES, Models, save_outputs, serve, timed


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
        config = BlipConfig(vision_config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4), text_config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, encoder_hidden_size=64))
    else:
        config = BlipConfig()  # ViT-B/16 at 384 (12 layers, 768 wide), 12-layer BERT decoder, 30524 ids
    model = BlipForConditionalGeneration(config).eval()
    model.save_pretrained(args.out, safe_serialization=True)
    PreTrainedTokenizerFast(tokenizer_object=wordpiece_tokenizer(), pad_token="[PAD]", sep_token="[SEP]").save_pretrained(args.out)
    BlipImageProcessorPil().save_pretrained(args.out)
    if not args.serve:
        return
    device = torch.device(args.device)
    models_ = Models(model, device)

    def pixels(batch, seed):
        return torch.randn(batch, 3, 384, 384, generator=torch.Generator().manual_seed(seed)).to(device)

    def captions(batch, tokens, dtype):
        inputs = pixels(batch, batch).to(DTYPES[dtype])

        def run():
            ids = models_.get(dtype).generate(pixel_values=inputs, min_new_tokens=tokens, max_new_tokens=tokens)
            assert ids.shape[1] == 1 + tokens, ids.shape

        return timed(device, run)

    def parity(batch, tokens, file):
        inputs = pixels(batch, 1000 + batch)
        model = models_.get("fp32")
        image_embeds = model.vision_model(pixel_values=inputs).last_hidden_state
        bos = torch.full((batch, 1), config.text_config.bos_token_id, device=device)
        first = model.text_decoder(input_ids=bos, encoder_hidden_states=image_embeds).logits[:, -1]
        sequences = model.generate(pixel_values=inputs, min_new_tokens=tokens, max_new_tokens=tokens)
        out = {"pixel_values": inputs, "image_embeds": image_embeds, "first_logits": first, "sequences": sequences}
        return save_outputs(out, file)

    serve({"captions": captions, "parity": parity})


if __name__ == "__main__":
    main()
