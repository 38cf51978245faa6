"""``qadtr export``: integer ONNX models (QCDQ, QONNX) and the fp32 baseline, checked, with a manifest."""
from __future__ import annotations

import click

from .cli_util import CONTEXT, data_dir_option, dataset_option, emit, format_table, json_options, parse_bits
from .cli_util import seed_option as _seed_option
from .errors import QadtrError

seed_option = _seed_option()


@click.command("export", context_settings=CONTEXT)
@click.argument("ckpt", type=click.Path(dir_okay=False))
@click.option("--bits", default="8,4,2", help="Weight bit-widths to export (2..8), one model per bit-width.")
@click.option("--act-bits", default=None, type=int, help="Activation bit-width for all models. Default: as --bits.")
@click.option("--format", "formats", default="qcdq,qonnx,fp32",
              help="Comma-separated: qcdq (ONNX Runtime), qonnx (FINN), fp32 (float baseline).")
@click.option("--out", required=True, type=click.Path(), help="Output folder (models and manifest.json).")
@click.option("--n", "n", default=None, type=int, help="Check parity on a seeded subset of N test images "
                                                        "(default: the whole test set).")
@click.option("--conv-kernel", default="auto", type=click.Choice(["auto", "qlinearconv", "convinteger"]),
              help="qcdq convs: auto = QLinearConv at 8-bit activations (ConvInteger if its parity fails), "
                   "ConvInteger below 8 bits, where QLinearConv's int32 bias rounding breaks parity.")
@dataset_option
@data_dir_option
@seed_option
@json_options
def export_cmd(ckpt, bits, act_bits, formats, out, n, conv_kernel, dataset, data_dir, seed, as_json):
    """Export CKPT as ONNX per bit-width and format; refuses models whose parity with PyTorch is too low."""
    from .export.pipeline import export_checkpoint, parse_formats

    bit_list = parse_bits(bits, allow_float=False)
    if act_bits is not None:
        act_bits = parse_bits(str(act_bits), allow_float=False)[0]
    format_list = parse_formats(formats)
    if n is not None and n < 1:
        raise QadtrError(f"--n must be at least 1, got {n}")
    import torch

    torch.manual_seed(seed)
    manifest = export_checkpoint(ckpt, bit_list, act_bits, format_list, out, n=n, seed=seed, dataset=dataset,
                                 data_dir=data_dir, conv_kernel=conv_kernel)
    rows = []
    for m in manifest["models"]:
        p, cov = m["parity"], m.get("integer_kernel_coverage")
        rows.append([m["file"], p["images"], f"{p['top1_agreement']:.2%}", f"{p['accuracy_torch']:.2%}",
                     f"{p['accuracy_onnx']:.2%}", f"{p['max_abs_delta_logit']:.3g}",
                     f"{cov['share']:.0%}" if cov else "n/a (qonnx)", m.get("conv_kernel", "-"),
                     m["file_bytes"], m["packed_weight_bytes"]])
    table = format_table(["model", "images", "top1 agree", "acc torch", "acc onnx", "max|dlogit|", "int conv/gemm",
                          "conv kernel", "file B", "packed W B"], rows)
    for m in (m for m in manifest["models"] if m["parity_gate"] == "rounding-sensitive"):
        ref = m["float32_reference"]["torch_float32_vs_float64_top1_agreement"]
        table += (f"\nnote: {m['file']} is rounding-sensitive: PyTorch's own float32 run agrees with exact "
                  f"arithmetic on only {ref:.2%} of top-1 decisions, and ONNX Runtime on "
                  f"{m['parity']['top1_agreement']:.2%}; accuracy matches within the gate")
    emit(manifest, table, None, as_json)
