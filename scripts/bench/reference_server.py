"""The loop the benchmarks' reference sides share (`imgfleet bench clip|blip|parity`): after
writing its checkpoint, a reference script prints one JSON line (`ready`), then answers one
JSON command per stdin line with one JSON line, so that the Rust side can interleave its own
timings with transformers' and machine noise hits both alike."""

import copy
import json
import sys
import time

import torch
from safetensors.torch import save_file

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class Models:
    """The fp32 model on the device and, made on first use, a copy per other dtype."""

    def __init__(self, model, device):
        self.device = device
        self.copies = {"fp32": model.to(device).eval()}

    def get(self, dtype):
        if dtype not in self.copies:
            self.copies[dtype] = copy.deepcopy(self.copies["fp32"]).to(DTYPES[dtype])
        return self.copies[dtype]


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(device, fn):
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return {"seconds": time.perf_counter() - start}


def serve(handlers):
    """Answers commands `{"op": name, ...}` with `handlers[name](**rest)` until `quit` or EOF."""
    print(json.dumps({"ready": True, "threads": torch.get_num_threads(), "torch": torch.__version__}), flush=True)
    with torch.inference_mode():
        for line in sys.stdin:
            command = json.loads(line)
            op = command.pop("op")
            if op == "quit":
                break
            print(json.dumps(handlers[op](**command)), flush=True)


def save_outputs(tensors, file):
    """Writes `tensors` to a safetensors file, floating-point ones as fp32, all on the CPU."""
    save_file({k: (v.float() if v.is_floating_point() else v).contiguous().cpu() for k, v in tensors.items()}, file)
    return {}
