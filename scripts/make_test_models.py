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

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import CLIPConfig, CLIPModel, PreTrainedTokenizerFast
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
    """A small BPE tokenizer built like OpenAI CLIP's tokenizer.json."""
    tok = Tokenizer(models.BPE(unk_token=EOS, end_of_word_suffix="</w>"))
    tok.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
    )
    tok.pre_tokenizer = pre_tokenizers.Sequence(
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
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[BOS, EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        end_of_word_suffix="</w>",
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS.splitlines(), trainer=trainer)
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
    tok = clip_tokenizer(vocab_size=400)
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


if __name__ == "__main__":
    main()
