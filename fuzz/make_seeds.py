"""Write the fuzz targets' seed corpora (and the image target's tiny model) with PyTorch.

    python fuzz/make_seeds.py [OUT_DIR]        # default fuzz/_corpus (gitignored)

Nothing here is committed: every seed comes from this script, run where the test extra (torch,
open_clip, safetensors) is installed. Same seeds on every run (fixed random seeds).

    safetensors/  files written by the `safetensors` package and by ovs.weights.save_safetensors:
                  every dtype, scalars, empty tensors, metadata, unicode names, gaps
    torch/        torch.save checkpoints (members container, see targets.py): plain state dicts,
                  nested checkpoints (state_dict / model keys, optimizer-like extras), fp16/bf16/
                  f64/int/bool storages, shared storages, stride-0 (expand) and transposed views,
                  Parameters, big-endian byteorder record
    torchscript/  torch.jit.save archives of small modules (parameters, buffers, submodules,
                  module lists, constants)
    tokenizer/    strings: ASCII, accents, CJK, emoji, mojibake, HTML entities, controls, the
                  tokenizer test corpus, each behind the target's FuzzedDataProvider prefix
    image/        random byte strings (the target decodes them into arrays and settings)
    tiny_vit.safetensors  a random open_clip ViT (16 px, patch 8, width 64, 1 layer) for image/
"""
from __future__ import annotations

import io
import json
import os
import sys
import warnings
import zipfile

import numpy as np

warnings.filterwarnings("ignore", category=FutureWarning)  # torch.jit.* deprecation notes

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def _write(folder: str, name: str, data: bytes) -> None:
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, name), "wb") as f:
        f.write(data)


# Members the reader never opens: left out so the fuzzer spends its mutations on the rest.
_UNREAD = (".debug_pkl", "/serialization_id", "traced_inputs.pkl", "traced_inputs/0")


def _members_of(zip_bytes: bytes) -> bytes:
    from fuzz.targets import pack_members

    with zipfile.ZipFile(io.BytesIO(zip_bytes)) as zf:
        return pack_members([(i.filename, zf.read(i)) for i in zf.infolist()
                             if not i.filename.endswith(_UNREAD)])


# --------------------------------------------------------------------------- safetensors
def _st_write(folder: str, name: str, data: bytes) -> None:
    """Both encodings of targets.safetensors_file: raw, and header + data (length recomputed)."""
    _write(folder, name, b"\0" + data)
    n = int.from_bytes(data[:8], "little")
    _write(folder, name + ".split", b"\1" + data[8:8 + n] + b"\n" + data[8 + n:])


def safetensors_seeds(out: str) -> None:
    import torch
    from safetensors.torch import save as st_save

    from ovs.weights import save_safetensors

    g = torch.Generator().manual_seed(0)
    sets = {
        "f32": {"w": torch.randn(3, 4, generator=g), "b": torch.randn(4, generator=g)},
        "dtypes": {"f16": torch.randn(2, 3, generator=g).half(),
                   "bf16": torch.randn(5, generator=g).bfloat16(),
                   "f64": torch.randn(2, 2, generator=g).double(),
                   "i64": torch.arange(6).reshape(2, 3), "i32": torch.arange(3, dtype=torch.int32),
                   "i16": torch.arange(4, dtype=torch.int16), "i8": torch.arange(5, dtype=torch.int8),
                   "u8": torch.arange(7, dtype=torch.uint8), "bool": torch.tensor([True, False])},
        "scalar_empty": {"s": torch.tensor(1.5), "e": torch.zeros(0, 3), "z": torch.zeros(2, 0, 2)},
        "names": {"visual.conv1.weight": torch.randn(4, 3, 2, 2, generator=g),
                  "transformer.resblocks.0.attn.in_proj_weight": torch.randn(6, 2, generator=g),
                  "ünïcødé 名前": torch.ones(1)},
        "rank8": {"r": torch.randn(*(1, 2, 1, 2, 1, 2, 1, 2), generator=g)},
    }
    for name, tensors in sets.items():
        _st_write(out, f"st_{name}.safetensors", st_save(tensors))
        _st_write(out, f"st_{name}_meta.safetensors",
               st_save(tensors, metadata={"format": "pt", "note": "seed ✓"}))
    # ovs's own writer (ordering and padding as the reference), via a temporary file
    tmp = os.path.join(out, ".tmp.safetensors")
    save_safetensors({"a": np.arange(6, dtype=np.float32).reshape(2, 3),
                      "b": np.array([1, 2], np.int64)}, tmp, metadata={"k": "v"})
    with open(tmp, "rb") as f:
        _st_write(out, "ovs_writer.safetensors", f.read())
    os.unlink(tmp)
    # a pruned conv stored as CSR with its "ovs-sparse" metadata (ovs.prune.save_sparse)
    from ovs.prune import save_sparse

    w = torch.randn(4, 3, 3, 3, generator=g).numpy()
    w[np.abs(w) < 1.2] = 0
    save_sparse({"visual.layer1.0.conv2.weight": w, "b": np.ones(4, np.float32)}, tmp,
                names=["visual.layer1.0.conv2.weight"])
    with open(tmp, "rb") as f:
        _st_write(out, "ovs_sparse.safetensors", f.read())
    os.unlink(tmp)
    # hand-made: a gap between tensors and a header padded with spaces
    header = json.dumps({"x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                         "y": {"dtype": "U8", "shape": [3], "data_offsets": [16, 19]}}).encode()
    header += b" " * (-len(header) % 8)
    _st_write(out, "gap.safetensors", len(header).to_bytes(8, "little") + header + bytes(19))


# --------------------------------------------------------------------------- torch.save
def torch_seeds(out: str) -> None:
    import torch

    g = torch.Generator().manual_seed(1)
    base = torch.randn(4, 3, generator=g)
    seeds = {
        "plain": {"w": base, "b": torch.randn(3, generator=g)},
        "dtypes": {"f16": base.half(), "bf16": base.bfloat16(), "f64": base.double(),
                   "i64": torch.arange(4), "i32": torch.arange(4, dtype=torch.int32),
                   "u8": torch.arange(4, dtype=torch.uint8), "bool": base > 0,
                   "i8": torch.arange(3, dtype=torch.int8)},
        "views": {"t": base.t(), "shared_a": base[1:], "shared_b": base[:, 1],
                  "expand": torch.randn(3, 1, generator=g).expand(3, 5),
                  "scalar": torch.tensor(2.0), "empty": torch.zeros(0, 4)},
        "nested": {"state_dict": {"layer.weight": base, "layer.bias": torch.zeros(3)},
                   "epoch": 3, "lr": 0.1, "name": "run", "flags": [True, None],
                   "shape": torch.Size([2, 3]), "opt": {"state": {0: {"step": torch.tensor(1.0)}},
                                                        "param_groups": [{"lr": 0.1}]}},
        "model_key": {"model": {"module.a": base, "module.b": base[0]}},
        "parameter": {"p": torch.nn.Parameter(base), "q": torch.nn.Parameter(base[:2])},
        "module_sd": torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2)).state_dict(),
    }
    for name, obj in seeds.items():
        buf = io.BytesIO()
        torch.save(obj, buf)
        _write(out, f"pt_{name}.members", _members_of(buf.getvalue()))
    # the same checkpoint marked big-endian (the reader swaps bytes)
    buf = io.BytesIO()
    torch.save(seeds["plain"], buf)
    from fuzz.targets import pack_members
    with zipfile.ZipFile(io.BytesIO(buf.getvalue())) as zf:
        members = [(i.filename, b"big" if i.filename.endswith("/byteorder") else zf.read(i))
                   for i in zf.infolist()]
    _write(out, "pt_bigendian.members", pack_members(members))


# --------------------------------------------------------------------------- TorchScript
def torchscript_seeds(out: str) -> None:
    import torch

    torch.manual_seed(2)

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(3, 3)
            self.register_buffer("scale", torch.ones(3))

        def forward(self, x):
            return self.fc(x) * self.scale

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = torch.nn.ModuleList([Block(), Block()])
            self.norm = torch.nn.LayerNorm(3)
            self.proj = torch.nn.Parameter(torch.randn(3, 2))
            self.k = 3

        def forward(self, x):
            for b in self.blocks:
                x = b(x)
            return self.norm(x) @ self.proj * self.k

    mods = {"linear": torch.nn.Linear(2, 2), "net": Net(),
            "conv_bn": torch.nn.Sequential(torch.nn.Conv2d(3, 2, 3), torch.nn.BatchNorm2d(2))}
    for name, mod in mods.items():
        for how, fn in (("script", torch.jit.script), ("trace", None)):
            if how == "trace":
                x = torch.randn(1, 3, 5, 5) if name == "conv_bn" else torch.randn(2, mod.in_features
                                                                                   if name == "linear" else 3)
                sm = torch.jit.trace(mod.eval(), x)
            else:
                sm = fn(mod)
            buf = io.BytesIO()
            torch.jit.save(sm, buf)
            _write(out, f"ts_{name}_{how}.members", _members_of(buf.getvalue()))


# --------------------------------------------------------------------------- tokenizer
def tokenizer_seeds(out: str) -> None:
    texts = ["a photo of a cat.", "Traffic cone, wet asphalt!", "naïve café — déjà vu",
             "東京タワーの写真", "😀👍🏽 family: 👨‍👩‍👧", "Ã©tÃ© mojibake â€œquotedâ€\x9d",
             "&amp;lt;b&amp;gt; &eacute; &#x41; &nbsp;", "tab\tnew\nline\r\x00nul\x1b[31mred",
             "ﬁ ﬂ ＦＵＬＬ ｗｉｄｔｈ", "I've can't we'll they're 'S 'LL", "a" * 300,
             "123 4567 89.0", "\u200b\u2028\u0301\ufeff", " ".join(["word"] * 90)]
    corpus = os.path.join(ROOT, "tests", "data", "tokenizer_corpus.json")
    if os.path.exists(corpus):
        with open(corpus, encoding="utf-8") as f:
            data = json.load(f)
        items = data if isinstance(data, list) else data.get("texts", [])
        texts += [t for t in items if isinstance(t, str)][:40]
    for i, t in enumerate(texts):
        # FuzzedDataProvider prefix: context (1 byte-ish), ids count, mode; then the text
        # (ConsumeUnicode reads one byte choosing the width, then code units).
        prefix = bytes([77, 0, 0])
        body = b"\x02" + t.encode("utf-32-le")
        _write(out, f"text_{i:03d}", prefix + body)
        _write(out, f"text_{i:03d}_ascii", prefix + b"\x00" + t.encode("ascii", "replace"))


# --------------------------------------------------------------------------- images
def image_seeds(out: str) -> None:
    rng = np.random.default_rng(3)
    for i in range(24):
        _write(out, f"img_{i:02d}", rng.integers(0, 256, size=int(rng.integers(16, 4096)),
                                                 dtype=np.uint8).tobytes())


def tiny_model(path: str) -> None:
    import torch
    from open_clip.model import CLIP

    from ovs.weights import save_safetensors

    torch.manual_seed(4)
    vision = dict(layers=1, width=64, head_width=64, patch_size=8, image_size=16)
    text = dict(context_length=77, vocab_size=49408, width=64, heads=1, layers=1)
    model = CLIP(embed_dim=16, vision_cfg=vision, text_cfg=text, quick_gelu=False)
    sd = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    save_safetensors(sd, path)


def main(argv: list[str]) -> int:
    out = os.path.abspath(argv[0]) if argv else os.path.join(HERE, "_corpus")
    sys.path.insert(0, ROOT)
    for name, fn in (("safetensors", safetensors_seeds), ("torch", torch_seeds),
                     ("torchscript", torchscript_seeds), ("tokenizer", tokenizer_seeds),
                     ("image", image_seeds)):
        folder = os.path.join(out, name)
        os.makedirs(folder, exist_ok=True)
        fn(folder)
        print(f"{folder}: {len(os.listdir(folder))} seeds")
    tiny_model(os.path.join(out, "tiny_vit.safetensors"))
    print(f"{out}/tiny_vit.safetensors")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
