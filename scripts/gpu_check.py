#!/usr/bin/env python3
"""The body of scripts/gpu-check (which finds the python): runs `imgfleet bench clip|blip|pipeline`
from a directory of release binaries and prints one table. Exits non-zero when a step fails or
parity with transformers is below its bound."""

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time

try:
    import torch
    import transformers  # noqa: F401 (the reference side needs it)
except ImportError as e:
    sys.exit(f"gpu-check: {sys.executable} cannot import torch and transformers ({e}); set IMGFLEET_PYTHON to a python that can")

PARITY_MIN_COSINE = 0.999
SETTINGS = {
    # CLIP batches, BLIP/CLIP bench model size, repeats, pipeline arguments
    "full": {
        "clip_batches": "64,128,256,512,1024",
        "size": "full",
        "repeats": "3",
        "pipeline": ["--models", "full", "--full-images", "128", "--min-side", "4000", "--max-side", "4001"],
        "photos": "128 generated 12-MP photos",
    },
    "tiny": {
        "clip_batches": "8,16",
        "size": "tiny",
        "repeats": "1",
        "pipeline": ["--models", "tiny", "--images", "24", "--min-side", "640", "--max-side", "800"],
        "photos": "24 generated photos (640-800 px), tiny fixture models",
    },
}


def device_name(device):
    if device.startswith("cuda"):
        index = int(device.split(":")[1]) if ":" in device else 0
        return torch.cuda.get_device_name(index)
    try:
        with open("/proc/cpuinfo") as f:
            model = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), "cpu")
    except OSError:
        model = "cpu"
    return f"{model}, {os.cpu_count()} cores"


def run(step, command, env):
    print(f"==> {step}: {' '.join(command)}", file=sys.stderr, flush=True)
    start = time.monotonic()
    done = subprocess.run(command, env=env, stdout=subprocess.PIPE, text=True)
    sys.stderr.write(done.stdout)
    if done.returncode != 0:
        sys.exit(f"gpu-check: {step} failed (exit {done.returncode}); its output is above")
    print(f"    {step}: {time.monotonic() - start:.0f} s", file=sys.stderr, flush=True)
    return done.stdout


def find(pattern, text, what):
    match = re.search(pattern, text, re.MULTILINE)
    if not match:
        sys.exit(f"gpu-check: no {what} in the output above")
    return match.groups()


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--python", required=True)
    p.add_argument("--device", default="cuda")
    p.add_argument("--setting", choices=["full", "tiny"], help="default: full on CUDA, tiny on the CPU")
    p.add_argument("--bin", default=os.environ.get("IMGFLEET_BIN_DIR"))
    args = p.parse_args()
    setting = SETTINGS[args.setting or ("tiny" if args.device == "cpu" else "full")]
    bin_dir = args.bin or os.path.join(os.environ.get("CARGO_TARGET_DIR", "/opt/imgfleet/target"), "release")
    imgfleet = os.path.join(bin_dir, "imgfleet")
    if not os.access(imgfleet, os.X_OK):
        sys.exit(f"gpu-check: no imgfleet binary in {bin_dir} (give --bin or IMGFLEET_BIN_DIR)")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit(f"gpu-check: {args.python}'s torch sees no CUDA device")
    env = dict(os.environ, IMGFLEET_PYTHON=args.python)
    # The binaries link libtorch: use this python's (the machine's CUDA build).
    torch_lib = os.path.join(os.path.dirname(torch.__file__), "lib")
    env["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [torch_lib, env.get("LD_LIBRARY_PATH")]))
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="imgfleet-gpu-check-") as work:
        common = ["--device", args.device, "--dtype", "auto", "--size", setting["size"], "--repeats", setting["repeats"]]
        common += ["--variants", "ours"]
        clip = run(
            "CLIP",
            [imgfleet, "bench", "clip", "--batches", setting["clip_batches"], "--dir", f"{work}/models/clip"] + common,
            env,
        )
        pipeline = run(
            "end to end",
            [imgfleet, "bench", "pipeline", "--device", args.device, "--dtype", "auto", "--dir", work] + setting["pipeline"],
            env,
        )
        clip_batch, blip_batch = find(r"^batches: CLIP (\d+), BLIP (\d+)", pipeline, "probed batches")
        blip = run(
            "BLIP",
            [imgfleet, "bench", "blip", "--batches", blip_batch, "--tokens", "20", "--dir", f"{work}/models/blip"] + common,
            env,
        )
    dtype, = find(r"^ours (\w+): image embeddings", clip, "CLIP parity")
    image_cos, text_cos = map(float, find(r"^ours \w+: image embeddings min cosine ([\d.]+), text ([\d.]+)", clip, "CLIP parity"))
    blip_dtype, vision_cos, logits_cos, same = find(
        r"^ours (\w+): vision output min cosine ([\d.]+), first-step logits min cosine ([\d.]+), (\d+/\d+) token", blip, "BLIP parity"
    )
    clip_rates = re.findall(r"^image\s+(\d+)\s+([\d.]+)", clip, re.MULTILINE)
    text_rates = re.findall(r"^text\s+(\d+)\s+([\d.]+)", clip, re.MULTILINE)
    blip_rate, = find(r"^\s*" + blip_batch + r"\s+([\d.]+)\s*$", blip, "BLIP rate")
    cpu_rate, = find(r"^cpu stage\s+([\d.]+)", pipeline, "CPU stage rate")
    encoder_rate, = find(r"^encoder \(CLIP \+ BLIP\)\s+([\d.]+)", pipeline, "encoder rate")
    e2e_rate, = find(r"^end to end\s+([\d.]+)", pipeline, "end-to-end rate")
    parity_ok = min(image_cos, text_cos, float(vision_cos), float(logits_cos)) >= PARITY_MIN_COSINE
    full = setting["size"] == "full"
    rows = [
        (f"CLIP parity, ours {dtype} vs transformers fp32", f"image cos {image_cos:.5f}, text {text_cos:.5f}", f">= {PARITY_MIN_COSINE}"),
        (f"BLIP parity, ours {blip_dtype} vs transformers fp32", f"vision cos {float(vision_cos):.5f}, logits {float(logits_cos):.5f}, {same} same 20 ids", f">= {PARITY_MIN_COSINE}"),
        ("probed batches", f"CLIP {clip_batch}, BLIP {blip_batch}", ""),
        ("CLIP images/s (prepared pixels)", ", ".join(f"{b}: {float(r):,.0f}" for b, r in clip_rates), ">= 30,000 (H100/H200)" if full else ""),
        ("CLIP texts/s", ", ".join(f"{b}: {float(r):,.0f}" for b, r in text_rates), ""),
        (f"BLIP captions/s (20 tokens, batch {blip_batch})", f"{float(blip_rate):,.1f}", ">= 1,000 (H100/H200)" if full else ""),
        (f"end to end ({setting['photos']})", f"{float(e2e_rate):,.1f} images/s", "bounded by CPU decoding"),
        ("  CPU stage alone / encoder alone", f"{float(cpu_rate):,.1f} / {float(encoder_rate):,.1f} images/s", ""),
    ]
    print(f"imgfleet gpu-check: {device_name(args.device)} ({args.device}, {dtype}), setting {args.setting or ('tiny' if args.device == 'cpu' else 'full')}, "
          f"torch {torch.__version__}, {time.monotonic() - started:.0f} s")
    width = max(len(r[0]) for r in rows)
    result_width = max(len(r[1]) for r in rows)
    print(f"{'check':<{width}}  {'result':<{result_width}}  target")
    for name, result, target in rows:
        print(f"{name:<{width}}  {result:<{result_width}}  {target}".rstrip())
    if not parity_ok:
        sys.exit(f"gpu-check: parity below {PARITY_MIN_COSINE}")


if __name__ == "__main__":
    main()
