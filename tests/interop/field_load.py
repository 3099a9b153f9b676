"""Loads saeperf's dictionary exports with the field's own packages and measures them on raw activations.

Used by the integration test `formats::the_fields_packages_load_the_exports` (tests/it/formats.rs): for each
`FORMAT=DIR` argument it loads DIR with that package's own loader, encodes and decodes rows `START:END` of the
activation set (raw model activations, no scaling), and prints one JSON object per dictionary with the FVU
(sum ||x - x_hat||^2 / sum ||x - mean(x)||^2) and L0 (mean number of non-zero codes per row) it measured, the way
docs/metrics.md defines them. The test compares them with `runner eval` on the same files.

    python field_load.py --data SET --rows 4000:4600 saelens=DIR dictionary-learning=DIR sparsify=DIR
"""

import argparse
import json
import os
import sys

os.environ.setdefault("SPARSIFY_DISABLE_TRITON", "1")

import torch
from safetensors.torch import load_file


def load_rows(data_dir, rows):
    start, end = (int(v) for v in rows.split(":"))
    x = load_file(os.path.join(data_dir, "activations.safetensors"))["activations"]
    return x[start:end].to(torch.float64)


def saelens(path):
    from sae_lens import SAE

    sae = SAE.load_from_disk(path, device="cpu").to(torch.float64)

    def forward(x):
        codes = sae.encode(x)
        return codes, sae.decode(codes)

    return forward


def dictionary_learning(path):
    from dictionary_learning.utils import load_dictionary

    ae, _config = load_dictionary(path, device="cpu")
    ae = ae.to(torch.float64)

    def forward(x):
        codes = ae.encode(x)
        return codes, ae.decode(codes)

    return forward


def sparsify(path):
    from sparsify import SparseCoder

    sae = SparseCoder.load_from_disk(path, device="cpu").to(torch.float64)

    def forward(x):
        out = sae(x)
        codes = torch.zeros(x.shape[0], sae.num_latents, dtype=x.dtype)
        codes.scatter_(1, out.latent_indices, out.latent_acts)
        return codes, out.sae_out

    return forward


LOADERS = {"saelens": saelens, "dictionary-learning": dictionary_learning, "sparsify": sparsify}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--rows", required=True)
    ap.add_argument("dicts", nargs="+", metavar="FORMAT=DIR")
    a = ap.parse_args()
    x = load_rows(a.data, a.rows)
    sst = ((x - x.mean(dim=0)) ** 2).sum().item()
    for spec in a.dicts:
        fmt, _, path = spec.partition("=")
        if fmt not in LOADERS:
            sys.exit(f"unknown format {fmt!r} (known: {', '.join(LOADERS)})")
        forward = LOADERS[fmt](path)
        with torch.no_grad():
            codes, x_hat = forward(x)
        sse = ((x - x_hat) ** 2).sum().item()
        l0 = (codes != 0).sum(dim=1).to(torch.float64).mean().item()
        print(json.dumps({"format": fmt, "dir": path, "fvu": sse / sst, "l0": l0,
                          "min_code": codes.min().item()}))


if __name__ == "__main__":
    main()
