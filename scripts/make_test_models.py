#!/usr/bin/env python3
"""Makes the tiny random checkpoints and reference outputs the Rust model code is tested against.

Every parameter is overwritten with seeded noise: default initialisation (zero biases, unit
LayerNorms) would hide loading bugs. Outputs go to tests/fixtures/models/<name>/ in the Hugging
Face layout (config.json, model.safetensors, tokenizer.json, preprocessor_config.json) plus
reference.safetensors / reference.json. Deterministic: running it again gives the same files.

    /opt/imgfleet/venv/bin/python scripts/make_test_models.py [--out tests/fixtures/models]
"""

import argparse
import json
import os
import re

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from transformers import BlipConfig, GenerationConfig, BlipForConditionalGeneration, CLIPConfig, CLIPModel, PreTrainedTokenizerFast
from transformers.models.blip.image_processing_pil_blip import BlipImageProcessorPil
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

BOS, EOS = "<|startoftext|>", "<|endoftext|>"

CORPUS = """
a photo of a cat. a photo of a dog. two dogs playing on the beach at sunset.
a man riding a bicycle down the street; a woman reading a book in the park.
the quick brown fox jumps over the lazy dog! don't stop, it's fine, we'll go.
mountains covered in snow, a lake with boats, children flying kites in the wind.
close-up of a flower with a bee, a plate of food on a wooden table, 3 apples and 12 oranges.
""" * 20

# Strings whose tokenisation tends to go wrong: case, whitespace runs, accents, emoji, CJK,
# punctuation runs, contractions, digits, a special token written in text, the empty string,
# and text longer than the context.
HARD_TEXTS = [
    "",
    "a photo of a cat",
    "A PHOTO   of\ta  DOG!!!",
    "naïve café — déjà vu",
    "emoji 🙂🐶🚀 and 中文字符",
    "!!!???...,,,;;;",
    "don't won't it's we'll they've I'm you'd",
    "numbers 12345 and 67.89",
    "literal <|endoftext|> token",
    " ".join(["long"] * 12 + ["text", "that", "runs", "past", "the", "context"] * 10),
]


def clip_tokenizer(vocab_size: int) -> Tokenizer:
    """A small BPE tokenizer built like OpenAI CLIP's tokenizer.json: every byte, every byte at a
    word's end (`</w>`), then merges learnt from CORPUS. The merges are learnt here rather than
    with the tokenizers trainer, which breaks ties in hash order and is not deterministic."""
    normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
    )
    pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(
                Regex(
                    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
                ),
                behavior="removed",
                invert=True,
            ),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = [BOS, EOS] + alphabet + [c + "</w>" for c in alphabet]
    counts: dict[tuple, int] = {}
    for line in CORPUS.splitlines():
        for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(line)):
            symbols = tuple(word[:-1]) + (word[-1] + "</w>",)
            counts[symbols] = counts.get(symbols, 0) + 1
    merges = []
    while len(vocab) < vocab_size:
        pairs: dict[tuple, int] = {}
        for symbols, n in counts.items():
            for pair in zip(symbols, symbols[1:]):
                pairs[pair] = pairs.get(pair, 0) + n
        if not pairs:
            break
        best = min(pairs, key=lambda pair: (-pairs[pair], pair))  # most frequent; ties by text
        merged = best[0] + best[1]
        merges.append(best)
        vocab.append(merged)
        new_counts: dict[tuple, int] = {}
        for symbols, n in counts.items():
            out, i = [], 0
            while i < len(symbols):
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                    out.append(merged)
                    i += 2
                else:
                    out.append(symbols[i])
                    i += 1
            new_counts[tuple(out)] = new_counts.get(tuple(out), 0) + n
        counts = new_counts
    tok = Tokenizer(
        models.BPE(vocab={t: i for i, t in enumerate(vocab)}, merges=merges, unk_token=EOS, end_of_word_suffix="</w>")
    )
    tok.normalizer = normalizer
    tok.pre_tokenizer = pre_tokenizer
    tok.decoder = decoders.BPEDecoder(suffix="</w>")
    tok.post_processor = processors.RobertaProcessing(
        (EOS, tok.token_to_id(EOS)), (BOS, tok.token_to_id(BOS)), trim_offsets=False, add_prefix_space=False
    )
    return tok


def noisy_(model: torch.nn.Module, seed: int) -> None:
    """Overwrites every parameter with seeded noise (LayerNorm weights around 1)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            noise = torch.randn(p.shape, generator=g, dtype=torch.float32)
            if "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.1 * noise)
            elif name.endswith("logit_scale"):
                p.copy_(torch.tensor(2.6592))
            else:
                p.copy_(0.08 * noise)


def test_images(rng: np.random.Generator, shapes):
    """Smooth gradients plus blocks and noise: varied enough that embeddings differ."""
    images = []
    for h, w in shapes:
        y, x = np.mgrid[0:h, 0:w]
        base = np.stack([x * 255 / max(w - 1, 1), y * 255 / max(h - 1, 1), (x + y) * 127 / max(h + w - 2, 1)], -1)
        noise = rng.integers(0, 60, size=(h, w, 3))
        img = (base * rng.uniform(0.3, 1.0) + noise) % 256
        y0, x0 = rng.integers(0, max(h // 2, 1)), rng.integers(0, max(w // 2, 1))
        img[y0 : y0 + h // 3, x0 : x0 + w // 3] = rng.integers(0, 256, size=3)
        images.append(img.astype(np.uint8))
    return images


def make_clip(out: str, name: str, seed: int, text: dict, vision: dict, projection_dim: int) -> None:
    path = os.path.join(out, name)
    os.makedirs(path, exist_ok=True)
    torch.manual_seed(seed)
    tok = clip_tokenizer(vocab_size=600)
    max_pos = text["max_position_embeddings"]
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=EOS, unk_token=EOS, model_max_length=max_pos
    )
    hf_tok.save_pretrained(path)

    eos_id = tok.token_to_id(EOS)
    text = dict(text, vocab_size=tok.get_vocab_size(), bos_token_id=tok.token_to_id(BOS), pad_token_id=eos_id)
    text.setdefault("eos_token_id", eos_id)
    config = CLIPConfig(text_config=text, vision_config=vision, projection_dim=projection_dim)
    model = CLIPModel(config).eval()
    noisy_(model, seed)
    model.save_pretrained(path, safe_serialization=True)

    size = vision["image_size"]
    processor = CLIPImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    processor.save_pretrained(path)

    rng = np.random.default_rng(seed)
    at_size = test_images(rng, [(size, size)] * 4)
    larger = test_images(rng, [(size * 2 + 5, size * 3 - 1), (size * 4, size + 3), (size * 2, size * 2), (size + 1, size * 5)])
    refs = {}
    with torch.no_grad():
        for label, images in [("at_size", at_size), ("larger", larger)]:
            pixels = processor(images=[Image.fromarray(i) for i in images], return_tensors="pt").pixel_values
            embeds = model.get_image_features(pixel_values=pixels).pooler_output
            refs[f"{label}.pixel_values"] = pixels.contiguous()
            refs[f"{label}.image_embeds"] = embeds.contiguous()
            for i, image in enumerate(images):
                refs[f"{label}.image.{i}"] = torch.from_numpy(image.copy())
        enc = hf_tok(HARD_TEXTS, padding="max_length", truncation=True, max_length=max_pos, return_tensors="pt")
        embeds = model.get_text_features(input_ids=enc.input_ids, attention_mask=enc.attention_mask).pooler_output
        refs["text.input_ids"] = enc.input_ids.to(torch.int64).contiguous()
        refs["text.attention_mask"] = enc.attention_mask.to(torch.int64).contiguous()
        refs["text.text_embeds"] = embeds.contiguous()
    save_file(refs, os.path.join(path, "reference.safetensors"))
    with open(os.path.join(path, "reference.json"), "w") as f:
        json.dump({"texts": HARD_TEXTS, "at_size": len(at_size), "larger": len(larger)}, f, ensure_ascii=False, indent=1)
    print(f"wrote {path}: vocab {tok.get_vocab_size()}, {sum(p.numel() for p in model.parameters())} parameters")


BLIP_PROMPT = "a picture of"
# CLIP's corpus (unchanged, so its fixtures stay byte-identical) plus the prompt's words.
BLIP_CORPUS = CORPUS + "a picture of a bird. a picture of people.\n" * 20
BLIP_SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]

# Generation runs recorded per BLIP checkpoint: transformers' defaults (what
# BlipForConditionalGeneration.generate does with no arguments), then explicit greedy and
# 3-beam settings that exercise every knob the Rust side implements.
BLIP_RUNS = {
    "default": dict(prompt=False, kwargs={}),
    "default_prompt": dict(prompt=True, kwargs={}),
    "greedy_penalised": dict(prompt=True, kwargs=dict(max_new_tokens=9, min_new_tokens=6, repetition_penalty=1.4)),
    "beam3": dict(prompt=False, kwargs=dict(num_beams=3, max_new_tokens=10)),
    "beam3_prompt": dict(
        prompt=True,
        kwargs=dict(num_beams=3, max_new_tokens=9, min_new_tokens=3, repetition_penalty=1.5, length_penalty=0.6,
                    early_stopping=True),
    ),
    "beam3_never": dict(prompt=False, kwargs=dict(num_beams=3, max_length=9, min_length=4, length_penalty=1.3,
                                                  early_stopping="never")),
}


def bert_tokenizer(words: int) -> Tokenizer:
    """A small uncased BERT WordPiece tokenizer, as bert-base-uncased's tokenizer.json is built,
    plus BLIP's added [DEC] (decoder bos) and [ENC] special tokens. The vocabulary is built here,
    not trained: the tokenizers trainers order ties by hash and are not deterministic."""
    counts = {}
    for word in re.findall(r"[a-z]+|[0-9]|[^\sa-z0-9]", BLIP_CORPUS.lower()):
        counts[word] = counts.get(word, 0) + 1
    chars = sorted({c for w in counts for c in w})
    frequent = [w for w, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])) if len(w) > 1][:words]
    # Suffix pieces of the frequent words, so unseen words and generated ids go through "##".
    suffixes = sorted({"##" + w[-k:] for w in frequent for k in (2, 3) if len(w) > k + 1})
    vocab = BLIP_SPECIAL + chars + ["##" + c for c in chars if c.isalnum()] + frequent + suffixes
    vocab = list(dict.fromkeys(vocab))
    tok = Tokenizer(models.WordPiece({t: i for i, t in enumerate(vocab)}, unk_token="[UNK]", max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.add_special_tokens(BLIP_SPECIAL + ["[DEC]", "[ENC]"])
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
    )
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    return tok


def noisy_blip_(model: torch.nn.Module, seed: int) -> None:
    """Seeded noise on every parameter, scaled so activations stay in a useful range."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            noise = torch.randn(p.shape, generator=g, dtype=torch.float32)
            if ("norm" in name or "LayerNorm" in name) and name.endswith("weight"):
                p.copy_(1.0 + 0.1 * noise)
            elif "embeddings" in name or name.endswith("predictions.bias"):
                p.copy_(0.5 * noise)
            else:
                p.copy_(0.15 * noise)


def make_blip(
    out: str, name: str, seed: int, text: dict, vision: dict, vocab: int, sep_bias: float, generation: dict | None
) -> None:
    path = os.path.join(out, name)
    os.makedirs(path, exist_ok=True)
    torch.manual_seed(seed)
    tok = bert_tokenizer(vocab)
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", sep_token="[SEP]", pad_token="[PAD]", cls_token="[CLS]",
        mask_token="[MASK]", bos_token="[DEC]", additional_special_tokens=["[ENC]"],
        model_max_length=text["max_position_embeddings"], clean_up_tokenization_spaces=True,
    )
    hf_tok.save_pretrained(path)

    # As Salesforce/blip-image-captioning-base: bos = [DEC], sep = [SEP] (the end of a caption),
    # pad = [PAD] = 0, and an eos_token_id that only fills the unconditional prompt.
    text = dict(text, vocab_size=tok.get_vocab_size(), bos_token_id=tok.token_to_id("[DEC]"),
                sep_token_id=tok.token_to_id("[SEP]"), pad_token_id=tok.token_to_id("[PAD]"), eos_token_id=2)
    config = BlipConfig(text_config=text, vision_config=vision)
    model = BlipForConditionalGeneration(config).eval()
    noisy_blip_(model, seed)
    with torch.no_grad():
        # Random weights almost never end a caption; a [SEP] bias makes rows end at different
        # steps, so per-row stopping, minimum lengths and beam early stopping are exercised.
        model.text_decoder.cls.predictions.bias[text["sep_token_id"]] = sep_bias
    if generation is not None:
        # Written as a checkpoint may carry it; transformers 5.24's BLIP generate does not read it.
        model.generation_config = GenerationConfig(**generation)
    model.save_pretrained(path, safe_serialization=True)

    size = vision["image_size"]
    processor = BlipImageProcessorPil(size={"height": size, "width": size})
    processor.save_pretrained(path)

    rng = np.random.default_rng(seed)
    at_size = test_images(rng, [(size, size)] * 3)
    larger = test_images(rng, [(size * 2 + 5, size * 3 - 1), (size * 4, size + 3)])
    refs = {}
    meta = {"prompt": BLIP_PROMPT, "images": len(at_size), "larger": len(larger), "runs": {}}
    with torch.no_grad():
        for label, images in [("at_size", at_size), ("larger", larger)]:
            pixels = processor(images=[Image.fromarray(i) for i in images], return_tensors="pt").pixel_values
            refs[f"{label}.pixel_values"] = pixels.contiguous()
            for i, image in enumerate(images):
                refs[f"{label}.image.{i}"] = torch.from_numpy(image.copy())
        pixels = refs["at_size.pixel_values"]
        refs["image_embeds"] = model.vision_model(pixel_values=pixels).last_hidden_state.contiguous()
        prompt = hf_tok([BLIP_PROMPT] * len(at_size), return_tensors="pt")
        refs["prompt_ids"] = prompt.input_ids[0].to(torch.int64).contiguous()
        for run, spec in BLIP_RUNS.items():
            extra = dict(input_ids=prompt.input_ids.clone(), attention_mask=prompt.attention_mask) if spec["prompt"] else {}
            result = model.generate(pixel_values=pixels, **extra, **spec["kwargs"], return_dict_in_generate=True,
                                    output_logits=True)
            refs[f"{run}.sequences"] = result.sequences.to(torch.int64).contiguous()
            refs[f"{run}.logits"] = torch.stack(result.logits).contiguous()
            meta["runs"][run] = {
                "prompt": spec["prompt"],
                "generation": spec["kwargs"],
                "captions": hf_tok.batch_decode(result.sequences, skip_special_tokens=True),
            }
    save_file(refs, os.path.join(path, "reference.safetensors"))
    with open(os.path.join(path, "reference.json"), "w") as f:
        json.dump(meta, f, ensure_ascii=False, indent=1)
    print(f"wrote {path}: vocab {tok.get_vocab_size()}, {sum(p.numel() for p in model.parameters())} parameters")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "models"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    # A: quick_gelu, EOS pooled at its first occurrence (post-2023 configs).
    make_clip(
        args.out,
        "clip-tiny-a",
        seed=1,
        text=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  max_position_embeddings=16, hidden_act="quick_gelu"),
        vision=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                    image_size=32, patch_size=8, hidden_act="quick_gelu"),
        projection_dim=24,
    )
    # B: gelu, other sizes, and eos_token_id == 2: the legacy argmax pooling openai/clip-* uses.
    make_clip(
        args.out,
        "clip-tiny-b",
        seed=2,
        text=dict(hidden_size=40, intermediate_size=72, num_hidden_layers=1, num_attention_heads=5,
                  max_position_embeddings=24, hidden_act="gelu", eos_token_id=2, layer_norm_eps=1e-6),
        vision=dict(hidden_size=48, intermediate_size=80, num_hidden_layers=3, num_attention_heads=6,
                    image_size=30, patch_size=6, hidden_act="gelu", layer_norm_eps=1e-6),
        projection_dim=16,
    )
    # BLIP A: transformers' default generation (no generation_config.json), prompt shorter than
    # the position table, so the default 20 new tokens all fit.
    make_blip(
        args.out,
        "blip-tiny-a",
        seed=3,
        text=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  max_position_embeddings=32),
        vision=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                    image_size=32, patch_size=8),
        vocab=40,
        sep_bias=4.0,
        generation=None,
    )
    # BLIP B: other sizes and epsilons, vision wider than text (cross-attention projects 48 -> 40),
    # a position table short enough to cap the default length, and a generation_config.json.
    make_blip(
        args.out,
        "blip-tiny-b",
        seed=4,
        text=dict(hidden_size=40, intermediate_size=72, num_hidden_layers=1, num_attention_heads=5,
                  max_position_embeddings=16, layer_norm_eps=1e-6),
        vision=dict(hidden_size=48, intermediate_size=80, num_hidden_layers=3, num_attention_heads=6,
                    image_size=30, patch_size=6, layer_norm_eps=1e-6),
        vocab=60,
        sep_bias=4.0,
        generation=dict(num_beams=3, max_length=12),
    )


if __name__ == "__main__":
    main()
