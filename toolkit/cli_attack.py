"""``qadtr attack``, ``transfer``, ``analyze`` and ``robustness``: thin wrappers over :mod:`qadtr.attacks`.

Torch is imported inside the commands, so ``qadtr --help`` stays torch-free.
"""
from __future__ import annotations

from pathlib import Path

import click

from .cli_util import CONTEXT, data_dir_option, dataset_option, emit, format_table, json_options, parse_bits
from .cli_util import seed_option as _seed_option
from .errors import QadtrError

seed_option = _seed_option("Random seed (patch init, batches, placements).")
quiet_option = click.option("--quiet", is_flag=True, help="No progress bars.")
device_option = click.option("--device", default="cpu", help="torch device for the model, e.g. cuda.")


def _load_model(ckpt, bit_list, device="cpu"):
    """The checkpoint's model on ``device``, after checking every requested bit-width is in its set.

    ``ckpt`` may also be a precision family, ``32=float.pt,8=qat8.pt,...``: separately trained
    networks, one per bit-width (:class:`qadtr.family.PrecisionFamily`).
    """
    from .device import torch_device
    from .family import load_model_or_family

    device = torch_device(device)
    payload, model, sha = load_model_or_family(ckpt)
    missing = [b for b in bit_list if b not in model.bit_choices]
    if missing:
        raise QadtrError(f"bit-width {missing[0]} is not in this checkpoint's set {sorted(model.bit_choices)}")
    return payload, model.to(device), sha


def _test_set(dataset, data_dir, n, seed):
    """``(images float32 NCHW in [0,1], labels, ArrayDataset)``: the seeded subset every command scores on."""
    from .data.arrays import load_dataset
    from .transfer import to_float_nchw

    data = load_dataset(dataset, "test", data_dir, seed=seed).subset(n, seed)
    return to_float_nchw(data.x), data.y, data


def _progress(total, desc, quiet):
    """A tqdm bar and its per-image callback (a no-op bar with --quiet)."""
    from tqdm import tqdm

    bar = tqdm(total=total, desc=desc, unit="img", leave=False, disable=quiet)
    return bar, bar.update


def _check_size(size, image_hw):
    if size < 1:
        raise QadtrError(f"patch size must be at least 1 pixel, got {size}")
    if size > min(image_hw):
        raise QadtrError(f"a {size}x{size} patch is larger than the {image_hw[0]}x{image_hw[1]} images")


def _metric_rows(result):
    return [[c["patch"], c["target"], f"{result['clean_acc'][c['target']]:.1%}",
             f"{c['patch_metrics']['asr']:.1%}", f"{c['control_metrics']['asr']:.1%}",
             f"{c['patch_metrics']['robust_acc']:.1%}",
             f"{c['patch_metrics']['target_hit_rate']:.1%}" if "target_hit_rate" in c["patch_metrics"] else "-"]
            for c in result["cells"]]


METRIC_HEADERS = ["patch", "bits", "clean acc", "ASR", "control ASR", "robust acc", "target hit"]


@click.command("attack", context_settings=CONTEXT)
@click.argument("ckpt", type=click.Path(dir_okay=False), metavar="CKPT|BITS=CKPT,...")
@click.option("--bits", default="32", help="Bit-width to craft at (ignored with --quant-aware).")
@click.option("--size", default=6, type=int, help="Patch side in pixels.")
@click.option("--shape", default="square", type=click.Choice(["square", "circle"]))
@click.option("--steps", default=500, type=int, help="Optimisation steps (one batch each).")
@click.option("--lr", default=0.05, type=float, help="Adam learning rate or signed-gradient step.")
@click.option("--optimizer", default="adam", type=click.Choice(["adam", "sign"]))
@click.option("--batch-size", default=128, type=int)
@click.option("--target", default=None, type=int, help="Targeted: the class to force. Default: untargeted.")
@click.option("--rotation", default=0.0, type=float, help="Rotation jitter, max degrees.")
@click.option("--scale", default="1,1", help="Scale jitter 'low,high' of the patch inside its box.")
@click.option("--quant-aware", is_flag=True, help="A-QAPA: craft across --source-bits, adaptively.")
@click.option("--source-bits", default="32,8,4,2", help="A-QAPA's bit-widths.")
@click.option("--sampling", default="softmax", type=click.Choice(["softmax", "proportional", "uniform"]),
              help="A-QAPA's bit-width sampling rule (docs/method.md).")
@click.option("--signal", default="survival", type=click.Choice(["survival", "loss"]),
              help="A-QAPA's weakness signal: 1 - ASR per bit-width, or the attacker loss.")
@click.option("--temperature", default=0.1, type=float, help="A-QAPA softmax temperature.")
@click.option("--train-n", default=None, type=int, help="Craft on a seeded subset of N training images.")
@click.option("--eval-n", default=1000, type=int, help="Score on a seeded subset of N test images.")
@dataset_option
@data_dir_option
@seed_option
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Folder for the patch files.")
@click.option("--name", default="patch", help="File stem: OUT/NAME.npy, .png, .json.")
@device_option
@quiet_option
@json_options
def attack_cmd(ckpt, bits, size, shape, steps, lr, optimizer, batch_size, target, rotation, scale, quant_aware,
               source_bits, sampling, signal, temperature, train_n, eval_n, dataset, data_dir, seed, out, name, device,
               quiet, as_json):
    """Craft a universal patch on CKPT; writes OUT/NAME.npy (exact), .png (to look at) and .json (metadata)."""
    import torch

    from .attacks.analysis import score_patches
    from .attacks.patch import PatchAttack, QuantAwarePatchAttack
    from .data.arrays import load_dataset
    from .io import versions
    from .patchfile import save_patch

    try:
        scale_range = tuple(float(s) for s in scale.split(","))
    except ValueError:
        raise QadtrError(f"--scale must be 'low,high', got {scale!r}") from None
    if len(scale_range) != 2:
        raise QadtrError(f"--scale must be 'low,high', got {scale!r}")
    if steps < 1:
        raise QadtrError(f"--steps must be at least 1, got {steps}")
    bit_list = parse_bits(source_bits) if quant_aware else parse_bits(bits)[:1]
    common = dict(size=size, shape=shape, steps=steps, lr=lr, optimizer=optimizer, batch_size=batch_size,
                  target=target, rotation=rotation, scale=scale_range, seed=seed, progress=not quiet)
    attack = (QuantAwarePatchAttack(bits=bit_list, sampling=sampling, signal=signal, temperature=temperature,
                                    **common) if quant_aware
              else PatchAttack(bits=bit_list[0], **common))
    torch.manual_seed(seed)
    payload, model, ckpt_sha = _load_model(ckpt, bit_list, device)
    if target is not None and not 0 <= target < payload["config"]["num_classes"]:
        raise QadtrError(f"--target {target} is not a class of this model (0..{payload['config']['num_classes'] - 1})")
    images, labels, test = _test_set(dataset, data_dir, eval_n, seed)
    _check_size(size, images.shape[2:])
    train = load_dataset(dataset, "train", data_dir, seed=seed).subset(train_n, seed)
    patch = attack.generate(model, train)

    bar, update = _progress(len(images) * len(bit_list) * 3, "scoring", quiet)
    with bar:
        scored = score_patches(model, {name: patch}, images, labels, bit_list, seed=seed, progress=update,
                               targets={name: target} if target is not None else None)
    meta = {
        "name": name, "size": size, "shape": shape, "area_percent": attack.area_percent(images.shape[2:]),
        "image_hw": list(images.shape[2:]),
        "attack": type(attack).__name__, "source_checkpoint": str(ckpt), "source_checkpoint_sha256": ckpt_sha,
        "arch": payload["config"]["arch"], "source_bits": bit_list, "steps": steps, "seed": seed, "lr": lr,
        "optimizer": optimizer, "batch_size": batch_size, "target": target, "rotation": rotation,
        "scale": list(scale_range), "train_images": len(train), "train_data_sha256": train.sha256(),
        "craft_s": round(attack.elapsed_s, 3), "steps_per_s": round(steps / max(attack.elapsed_s, 1e-9), 3),
        "final_loss": attack.losses[-1][1] if attack.losses else None,
        "asr_on_source": {"n": scored["n"], "test_data_sha256": test.sha256(), "seed": seed,
                          "clean_acc": scored["clean_acc"],
                          "cells": [{k: c[k] for k in ("target", "patch_metrics", "control_metrics")}
                                    for c in scored["cells"]]},
        "versions": versions(),
    }
    if quant_aware:
        meta["quant_aware"] = {"signal": signal, "sampling": sampling, "temperature": attack.temperature,
                               "floor": attack.floor,
                               "momentum": attack.momentum, "refresh_every": attack.refresh_every,
                               "bit_counts": {str(b): c for b, c in attack.bit_counts.items()},
                               "weakness": dict(zip(map(str, attack.bits), attack.weakness.tolist())),
                               "probe_forwards": attack.probe_forwards}
    meta["files"] = save_patch(out, patch, meta, name)
    table = format_table(METRIC_HEADERS, _metric_rows(scored))
    emit(meta, f"{name}: {size}x{size} {shape} ({meta['area_percent']:.2f}% of the image), {steps} steps, "
         f"{meta['steps_per_s']:.2f} steps/s\n{table}\nwrote {meta['files']['npy']}", None, as_json)


def _patch_names(paths):
    """File stems, or parent/stem where two stems clash."""
    stems = [Path(p).stem for p in paths]
    return [f"{Path(p).parent.name}/{s}" if stems.count(s) > 1 else s for p, s in zip(paths, stems)]


@click.command("transfer", context_settings=CONTEXT)
@click.argument("ckpt", type=click.Path(dir_okay=False), metavar="CKPT|BITS=CKPT,...")
@click.argument("more_patches", nargs=-1, type=click.Path(dir_okay=False))
@click.option("--patches", multiple=True, type=click.Path(dir_okay=False),
              help="Patch .npy files (list them after --patches, or repeat the option).")
@click.option("--target-bits", default="32,8,4,2", help="Bit-widths to score every patch at.")
@click.option("--n", "n", default=2000, type=int, help="Seeded subset of N test images.")
@click.option("--batch-size", default=256, type=int)
@dataset_option
@data_dir_option
@seed_option
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Writes OUT/transfer.json, transfer.md and transfer.png.")
@device_option
@quiet_option
@json_options
def transfer_cmd(ckpt, more_patches, patches, target_bits, n, batch_size, dataset, data_dir, seed, out, device,
                 quiet, as_json):
    """ASR of every patch at every target bit-width of CKPT, each beside its random-noise control."""
    import numpy as np
    import torch

    from .attacks.analysis import heatmap_png, score_patches
    from .io import sha256_file, versions, write_text
    from .patchfile import load_patch
    from .transfer import matrix_markdown

    paths = list(patches) + list(more_patches)
    if not paths:
        raise QadtrError("no patches: pass --patches P1.npy [P2.npy ...]")
    bit_list = parse_bits(target_bits)
    loaded = [load_patch(p) for p in paths]
    names = _patch_names(paths)
    torch.manual_seed(seed)
    payload, model, ckpt_sha = _load_model(ckpt, bit_list, device)
    images, labels, test = _test_set(dataset, data_dir, n, seed)
    patch_arrays = dict(zip(names, (p for p, _ in loaded)))
    targets = {nm: meta["target"] for nm, (_, meta) in zip(names, loaded) if meta and meta.get("target") is not None}
    bar, update = _progress(len(images) * len(bit_list) * (1 + 2 * len(paths)), "transfer", quiet)
    with bar:
        result = score_patches(model, patch_arrays, images, labels, bit_list, seed=seed, targets=targets,
                               batch_size=batch_size, progress=update)
    out = Path(out)
    result.update({
        "checkpoint": str(ckpt), "checkpoint_sha256": ckpt_sha, "arch": payload["config"]["arch"],
        "test_data_sha256": test.sha256(), "target_bits": bit_list,
        "patches": {nm: {"file": str(p), "sha256": sha256_file(p), "shape_chw": list(arr.shape),
                         "source_bits": (meta or {}).get("source_bits"), "size": (meta or {}).get("size"),
                         "attack": (meta or {}).get("attack"), "target": (meta or {}).get("target")}
                    for nm, p, (arr, meta) in zip(names, paths, loaded)},
        "versions": versions(),
    })
    markdown = matrix_markdown(result)
    write_text(out / "transfer.md", markdown)
    by = {(c["patch"], c["target"]): c for c in result["cells"]}
    cols = [str(b) for b in bit_list]
    asr = np.array([[by[nm, b]["patch_metrics"]["asr"] for b in cols] for nm in names])
    notes = [[f"{by[nm, b]['patch_metrics']['asr']:.0%}\n({by[nm, b]['control_metrics']['asr']:.0%})" for b in cols]
             for nm in names]
    heatmap_png(out / "transfer.png", asr, names, cols, f"ASR over originally-correct images, n={result['n']}\n"
                "(random-noise control in brackets)", xlabel="target bits", ylabel="patch", annotations=notes)
    result["files"] = {"json": str(out / "transfer.json"), "markdown": str(out / "transfer.md"),
                       "png": str(out / "transfer.png")}
    emit(result, format_table(METRIC_HEADERS, _metric_rows(result)), str(out / "transfer.json"), as_json)


@click.command("analyze", context_settings=CONTEXT)
@click.argument("ckpt", type=click.Path(dir_okay=False), metavar="CKPT|BITS=CKPT,...")
@click.option("--gradient-alignment", is_flag=True, help="Cosine similarity of input gradients between --bits.")
@click.option("--spatial", is_flag=True, help="ASR of --patch against its location, one heatmap per --bits.")
@click.option("--sizes", default=None, help="Patch visibility: craft one patch per size, e.g. 2,4,6,8,10.")
@click.option("--bits", default="32,8,4,2", help="Bit-widths the analyses evaluate at.")
@click.option("--patch", "patch_file", default=None, type=click.Path(dir_okay=False), help="Patch for --spatial.")
@click.option("--stride", default=2, type=int, help="--spatial: grid stride in pixels.")
@click.option("--craft-bits", default="32", help="--sizes: bit-width the patches are crafted at.")
@click.option("--steps", default=200, type=int, help="--sizes: crafting steps per patch.")
@click.option("--batch-size", default=128, type=int, help="--sizes: crafting batch size.")
@click.option("--train-n", default=None, type=int, help="--sizes: craft on a seeded subset of N training images.")
@click.option("--n", "n", default=500, type=int, help="Seeded subset of N test images.")
@dataset_option
@data_dir_option
@seed_option
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Writes OUT/analyze.json and PNGs.")
@device_option
@quiet_option
@json_options
def analyze_cmd(ckpt, gradient_alignment, spatial, sizes, bits, patch_file, stride, craft_bits, steps, batch_size,
                train_n, n, dataset, data_dir, seed, out, device, quiet, as_json):
    """The paper's analyses on CKPT: gradient alignment, spatial sensitivity, patch visibility (ASR vs size)."""
    import numpy as np
    import torch

    from .attacks import analysis
    from .data.arrays import load_dataset
    from .io import versions
    from .patchfile import load_patch

    if not (gradient_alignment or spatial or sizes):
        raise QadtrError("nothing to do: pass --gradient-alignment, --spatial and/or --sizes 2,4,6")
    if spatial and not patch_file:
        raise QadtrError("--spatial needs --patch P.npy")
    bit_list = parse_bits(bits)
    size_list = []
    if sizes:
        try:
            size_list = [int(s) for s in sizes.split(",") if s.strip()]
        except ValueError:
            raise QadtrError(f"--sizes must be a comma-separated list of pixel sizes, got {sizes!r}") from None
    craft = parse_bits(craft_bits)[0]
    patch = load_patch(patch_file)[0] if spatial else None
    torch.manual_seed(seed)
    payload, model, ckpt_sha = _load_model(ckpt, sorted(set(bit_list) | ({craft} if sizes else set())), device)
    images, labels, test = _test_set(dataset, data_dir, n, seed)
    for s in size_list:
        _check_size(s, images.shape[2:])
    out = Path(out)
    result = {"checkpoint": str(ckpt), "checkpoint_sha256": ckpt_sha, "arch": payload["config"]["arch"], "n": n,
              "test_data_sha256": test.sha256(), "seed": seed, "versions": versions(), "files": {}}
    tables = []
    if gradient_alignment:
        bar, update = _progress(len(images), "gradient alignment", quiet)
        with bar:
            ga = analysis.gradient_alignment(model, images, labels, bit_list, progress=update)
        result["gradient_alignment"] = ga
        png = out / "gradient_alignment.png"
        analysis.heatmap_png(png, ga["cosine"], bit_list, bit_list, f"input-gradient cosine, n={ga['n']}",
                             "bits", "bits", fmt="{:.2f}", vmin=min(0.0, float(np.min(ga["cosine"]))))
        result["files"]["gradient_alignment"] = str(png)
        tables.append("gradient alignment (mean cosine of input gradients)\n" + format_table(
            ["bits", *bit_list], [[b, *(f"{v:.3f}" for v in row)] for b, row in zip(bit_list, ga["cosine"])]))
    if spatial:
        maps = {}
        for b in bit_list:
            locations = len(range(0, images.shape[2] - patch.shape[1] + 1, stride)) * \
                len(range(0, images.shape[3] - patch.shape[2] + 1, stride))
            bar, update = _progress(len(images) * (1 + 2 * locations), f"spatial @{b}", quiet)
            with bar:
                maps[str(b)] = analysis.spatial_sensitivity(model, patch, images, labels, b, stride, seed,
                                                            progress=update)
            png = out / f"spatial_{b}.png"
            analysis.heatmap_png(png, maps[str(b)]["asr"], maps[str(b)]["tops"], maps[str(b)]["lefts"],
                                 f"ASR vs patch location (top-left), {b} bits, n={len(images)}", "left", "top",
                                 vmax=max(0.05, maps[str(b)]["max_asr"]))   # low ASRs stay visible
            result["files"][f"spatial_{b}"] = str(png)
        result["spatial"] = {"patch": str(patch_file), "maps": maps}
        tables.append("spatial sensitivity (ASR over locations)\n" + format_table(
            ["bits", "mean ASR", "min", "max", "control mean"],
            [[b, f"{m['mean_asr']:.1%}", f"{m['min_asr']:.1%}", f"{m['max_asr']:.1%}",
              f"{float(np.nanmean(m['control_asr'])):.1%}"] for b, m in maps.items()]))
    if size_list:
        train = load_dataset(dataset, "train", data_dir, seed=seed).subset(train_n, seed)
        bar, update = _progress(len(images) * len(bit_list) * 3 * len(size_list), "patch sizes", quiet)
        with bar:
            sweep = analysis.size_sweep(model, train, images, labels, size_list, craft, bit_list, seed,
                                        {"steps": steps, "batch_size": batch_size, "progress": not quiet},
                                        progress=update)
        result["sizes"] = sweep
        png = out / "sizes.png"
        cols = [str(b) for b in bit_list]
        series = {f"patch @{b}": [r["asr"][b] for r in sweep["rows"]] for b in cols}
        series.update({f"control @{b}": [r["control_asr"][b] for r in sweep["rows"]] for b in cols})
        analysis.line_png(png, size_list, series, f"ASR vs patch size (crafted at {craft} bits, {steps} steps)",
                          "patch side (px)", "ASR")
        result["files"]["sizes"] = str(png)
        tables.append(f"patch visibility (crafted at {craft} bits; ASR, control in brackets)\n" + format_table(
            ["size", "area %", *(f"@{b}" for b in cols)],
            [[r["size"], f"{r['area_percent']:.1f}",
              *(f"{r['asr'][b]:.1%} ({r['control_asr'][b]:.1%})" for b in cols)] for r in sweep["rows"]]))
    result["files"]["json"] = str(out / "analyze.json")
    emit(result, "\n\n".join(tables), str(out / "analyze.json"), as_json)


def _parse_unseen(text: str) -> list[tuple[int, int]]:
    """'8:4,10:2' -> [(8, 4), (10, 2)] (size, source bits); '' or 'none' -> no unseen patches."""
    if text.strip().lower() in ("", "none"):
        return []
    pairs = []
    for item in text.replace(" ", "").split(","):
        size, sep, source = item.partition(":")
        try:
            if not sep:
                raise ValueError
            pairs.append((int(size), parse_bits(source)[0]))
        except ValueError:
            raise QadtrError(f"--unseen must be SIZE:SOURCE_BITS pairs such as 8:4,10:2, got {text!r}") from None
    return pairs


@click.command("robustness", context_settings=CONTEXT)
@click.argument("ckpt", type=click.Path(dir_okay=False), metavar="CKPT|BITS=CKPT,...")
@click.option("--bits", default="32,8,4,2", help="Target bit-widths: clean accuracy and ASR at each.")
@click.option("--n", "n", default=2000, type=int, help="Seeded subset of N test images to score on.")
@click.option("--steps", default=500, type=int, help="Crafting steps per patch (one batch each).")
@click.option("--seen-size", default=6, type=int, help="Side of the seen patch, in pixels.")
@click.option("--seen-source", default="32", help="Bit-width the seen patch is crafted at (32 = float).")
@click.option("--unseen", default="8:4,10:2",
              help="Unseen patches as SIZE:SOURCE_BITS pairs; 'none' for none. A pair whose source bit-width is "
                   "not in the checkpoint's set is skipped with a note.")
@click.option("--adaptive-size", default=6, type=int, help="Side of the adaptive (A-QAPA) patch, in pixels.")
@click.option("--adaptive-bits", default="all",
              help="Bit-widths A-QAPA crafts the adaptive patch over; 'all' = every bit-width of the checkpoint.")
@click.option("--lr", default=0.05, type=float, help="Adam learning rate for crafting.")
@click.option("--batch-size", default=128, type=int, help="Crafting batch size.")
@click.option("--train-n", default=None, type=int, help="Craft on a seeded subset of N training images "
                                                        "(default: the whole training set).")
@dataset_option
@data_dir_option
@seed_option
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Writes OUT/robustness.json, robustness.md and one patch .npy/.png/.json per configuration.")
@click.option("--resume", is_flag=True, help="Reuse patches in OUT crafted with the same settings and checkpoint.")
@device_option
@quiet_option
@json_options
def robustness_cmd(ckpt, bits, n, steps, seen_size, seen_source, unseen, adaptive_size, adaptive_bits, lr, batch_size,
                   train_n, dataset, data_dir, seed, out, resume, device, quiet, as_json):
    """The paper's evaluation protocol on CKPT: clean accuracy per bit-width, then the ASR (with random-noise
    control) at every bit-width of a seen patch (crafted on the float model), unseen patches (8x8 from 4 bits,
    10x10 from 2 bits) and an adaptive A-QAPA patch crafted on CKPT itself over all its bit-widths."""
    import torch

    from .attacks.protocol import check_plan, paper_plan, robustness, robustness_markdown, robustness_rows
    from .data.arrays import load_dataset
    from .io import versions, write_json, write_text

    if steps < 1:
        raise QadtrError(f"--steps must be at least 1, got {steps}")
    if n < 1:
        raise QadtrError(f"--n must be at least 1, got {n}")
    if batch_size < 1:
        raise QadtrError(f"--batch-size must be at least 1, got {batch_size}")
    bit_list = parse_bits(bits)
    plan = {"seen_size": seen_size, "seen_source": parse_bits(seen_source)[0], "unseen": _parse_unseen(unseen),
            "adaptive_size": adaptive_size,
            "adaptive_bits": None if adaptive_bits.strip().lower() == "all" else parse_bits(adaptive_bits)}
    torch.manual_seed(seed)
    payload, model, ckpt_sha = _load_model(ckpt, bit_list, device)
    # A missing source of a seen/unseen patch is skipped with a note, but --adaptive-bits names the set to
    # attack over: silently dropping one would weaken the adaptive attack, so it is an error.
    missing = [b for b in plan["adaptive_bits"] or [] if b not in model.bit_choices]
    if missing:
        raise QadtrError(f"--adaptive-bits: bit-width {missing[0]} is not in this checkpoint's set "
                         f"{sorted(model.bit_choices)}")
    images, _, test = _test_set(dataset, data_dir, n, seed)
    specs, skipped = paper_plan(model.bit_choices, **plan)
    check_plan(specs, images.shape[2:])                        # bad sizes fail before any crafting
    train = load_dataset(dataset, "train", data_dir, seed=seed).subset(train_n, seed)
    bars = []

    def update(count):      # the scoring bar opens when scoring starts, not under the crafting bars
        if not bars:
            bars.append(_progress(len(images) * len(bit_list) * (1 + 2 * len(specs)), "scoring", quiet)[0])
        bars[0].update(count)

    try:
        result = robustness(model, train, test, bit_list, specs=specs, steps=steps, batch_size=batch_size, lr=lr,
                            seed=seed, out_dir=out, reuse=resume, progress=not quiet, score_progress=update,
                            metadata={"source_checkpoint": str(ckpt), "source_checkpoint_sha256": ckpt_sha,
                                      "arch": payload["config"]["arch"], "versions": versions()})
    finally:
        for bar in bars:
            bar.close()
    result["skipped"] = skipped
    result["config"].update({"n": n, "dataset": dataset, "train_n": train_n, "device": str(device), **{
        k: v for k, v in plan.items() if k != "unseen"}, "unseen": [list(p) for p in plan["unseen"]]})
    out = Path(out)
    result = {"checkpoint": str(ckpt), "checkpoint_sha256": ckpt_sha, "arch": payload["config"]["arch"], **result,
              "versions": versions(),
              "files": {"json": str(out / "robustness.json"), "markdown": str(out / "robustness.md"),
                        "patches": {name: p["crafting"].get("files", {}).get("npy", str(out / f"{name}.npy"))
                                    for name, p in result["patches"].items()}}}
    write_text(out / "robustness.md", robustness_markdown(result, f"Robustness of `{ckpt}`"))
    write_json(out / "robustness.json", result)
    table = format_table(*robustness_rows(result))
    notes = "".join(f"\nnote: {s}" for s in skipped)
    emit(result, f"{table}{notes}\nwrote {out / 'robustness.json'}", None, as_json)
