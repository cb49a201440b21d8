"""Detector commands, mounted as ``dicom-node model``: ``train``, ``eval`` and ``info``.

``eval --json`` prints exactly one JSON object (keys ``AP``, ``AP50``, ``AP75``, ``AP@0.2``, ``AP@0.4``,
``AP@0.5``, ``AP@0.7`` as fractions, plus FROC sensitivities and ``image_auroc``) on stdout; progress
goes to stderr. Without ``--weights`` the commands use ``model.weights`` from the configuration, else
the shipped model (trained on real SIIM radiographs; research use).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from dicom_node.cli.common import ConfigOpt, JsonOpt, console, err, fail, get_config, print_json, progress_bar
from dicom_node.config import Config

app = typer.Typer(help="Train, evaluate and describe the opacity detector (Detectron2 Cascade R-CNN).")

WeightsOption = Annotated[
    Path | None,
    typer.Option(
        "--weights",
        help="checkpoint (.pth, or a Detectron2 model-zoo .pkl); default: model.weights or the shipped model",
    ),
]
ModelConfigOption = Annotated[
    str | None,
    typer.Option(
        "--model-config",
        help="Detectron2 config (path or name in models/configs) for checkpoints that carry none",
    ),
]
PhantomsOption = Annotated[int | None, typer.Option("--phantoms", min=1, help="use N synthetic phantoms")]
SeedOption = Annotated[int, typer.Option("--seed", help="phantom seed")]
RsnaOption = Annotated[
    Path | None, typer.Option("--rsna-csv", help="RSNA labels CSV (patientId,x,y,width,height,Target)")
]
ImagesOption = Annotated[
    Path | None,
    typer.Option("--images", help="folder of DICOM files named <patientId>.dcm (or COCO image root)"),
]
SiimOption = Annotated[
    Path | None,
    typer.Option(
        "--siim",
        help="SIIM-FISABIO-RSNA COVID-19 folder (train_image_level.csv + images/ and image_sizes.csv, or train/**.dcm)",
    ),
]
CocoOption = Annotated[
    Path | None, typer.Option("--coco", help="COCO detection JSON; images beside it or under --images")
]



def _load_detector(cfg: Config, weights: Path | None, model_config: str | None) -> Any:
    from models.detector import Detector

    try:
        return Detector.load(
            weights=weights or cfg.model.weights,
            device=cfg.model.device,
            threads=cfg.model.threads,
            score_threshold=cfg.model.score_threshold,
            config=model_config,
        )
    except (FileNotFoundError, RuntimeError) as exc:
        raise fail(str(exc), 1) from None


@app.command()
def train(
    output: Annotated[
        Path, typer.Option("--output", "-o", help="folder for checkpoints and summary.json")
    ] = Path("var/train"),
    model_config: Annotated[
        str | None, typer.Option("--model-config", help="Detectron2 config (path or name in models/configs)")
    ] = None,
    phantoms: PhantomsOption = None,
    seed: SeedOption = 0,
    rsna_csv: RsnaOption = None,
    images: ImagesOption = None,
    coco: CocoOption = None,
    siim: SiimOption = None,
    val_fraction: Annotated[
        float,
        typer.Option(
            "--val-fraction", min=0.0, max=0.9, help="share of SIIM studies held out for validation (by --seed)"
        ),
    ] = 0.2,
    iterations: Annotated[
        int | None, typer.Option("--iterations", min=1, help="override SOLVER.MAX_ITER")
    ] = None,
    eval_period: Annotated[
        int | None, typer.Option("--eval-period", min=1, help="evaluate every N iterations")
    ] = None,
    val_phantoms: Annotated[
        int, typer.Option("--val-phantoms", min=0, help="phantoms for periodic evaluation")
    ] = 40,
    resume: Annotated[
        bool, typer.Option("--resume", help="continue from the last checkpoint in --output")
    ] = False,
    init_weights: Annotated[
        Path | None,
        typer.Option("--init-weights", help="start from a Detectron2 checkpoint (.pth or model-zoo .pkl)"),
    ] = None,
    export: Annotated[
        Path | None,
        typer.Option("--export", help="also write compact float16 weights here (what the node ships)"),
    ] = None,
    opt: Annotated[
        list[str] | None, typer.Option("--opt", help="Detectron2 config override KEY=VALUE (repeatable)")
    ] = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Train a detector with Detectron2's trainer; resumable, evaluated on held-out SIIM studies or phantoms.

    Without model.score_threshold in the config, the threshold is chosen on the validation set (best
    box F1 at IoU 0.5) and carried in the checkpoint, which the node then uses.
    """
    from models.train import TrainOptions
    from models.train import train as run_train

    cfg = get_config(config)
    opts: list[str] = []
    for item in opt or []:
        if "=" not in item:
            raise fail(f"--opt {item!r}: expected KEY=VALUE, e.g. SOLVER.BASE_LR=0.01", 2)
        key, value = item.split("=", 1)
        opts += [key, value]
    options = TrainOptions(
        output_dir=output,
        config=model_config,
        phantoms=phantoms,
        seed=seed,
        rsna_csv=rsna_csv,
        images=images,
        coco_json=coco,
        siim=siim,
        val_fraction=val_fraction,
        val_phantoms=val_phantoms,
        max_iter=iterations,
        eval_period=eval_period,
        resume=resume,
        init_weights=init_weights,
        export=export,
        threads=cfg.model.threads,
        device=cfg.model.device,
        score_threshold=cfg.model.score_threshold,
        opts=opts,
    )
    try:
        options.source()
    except ValueError as exc:
        raise fail(str(exc), 2) from None
    try:
        summary = run_train(options, log=lambda line: err.print(line, markup=False, highlight=False))
    except (FileNotFoundError, ValueError) as exc:  # unreadable data, a bad split, a foreign --resume
        raise fail(str(exc), 1) from None
    if as_json:
        print_json(summary)
    else:
        err.print(
            f"done: {summary['iterations']} iterations in {summary['train_seconds']:.0f}s"
            f" -> {summary['checkpoint']}"
        )


def _model_split(det: Any) -> tuple[float, int]:
    """The SIIM validation split a model was trained with, from its checkpoint metadata."""
    from models.datasets import parse_split

    split = parse_split(det.metadata.extra.get("split", ""))
    if split is None:
        raise fail("--split val: this model's checkpoint records no SIIM split (trained on other data)", 2)
    return split


@app.command("eval")
def evaluate(
    weights: WeightsOption = None,
    model_config: ModelConfigOption = None,
    phantoms: PhantomsOption = None,
    seed: SeedOption = 9001,
    size: Annotated[int, typer.Option("--size", help="phantom size in pixels")] = 1024,
    siim: SiimOption = None,
    split: Annotated[
        str,
        typer.Option(
            "--split",
            help="with --siim: all images, or only the validation studies of the model's own split (val)",
        ),
    ] = "all",
    rsna_csv: RsnaOption = None,
    images: ImagesOption = None,
    coco: CocoOption = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """COCO AP, AP50, AP75, AP at IoU 0.2/0.4/0.5/0.7, FROC sensitivities and image-level AUROC on labelled data."""
    from models import datasets
    from models.evaluate import evaluate_detector
    from models.siim import siim_samples

    given = [x for x in (phantoms, siim, rsna_csv, coco) if x is not None]
    if len(given) != 1:
        raise fail("give exactly one of --phantoms N, --siim DIR, --rsna-csv CSV --images DIR, --coco JSON", 2)
    if rsna_csv is not None and images is None:
        raise fail("--rsna-csv needs --images DIR", 2)
    if split not in ("all", "val"):
        raise fail(f"--split {split}: expected all or val", 2)
    if split == "val" and siim is None:
        raise fail("--split val needs --siim DIR", 2)
    cfg = get_config(config)
    det = _load_detector(cfg, weights, model_config)
    try:
        if phantoms is not None:
            samples = datasets.phantom_samples(phantoms, seed, det.input_size, size=size)
            source = f"phantoms n={phantoms} seed={seed} size={size}"
        elif siim is not None:
            samples = siim_samples(siim, det.input_size)
            source = f"siim {siim}"
            if split == "val":
                fraction, split_seed = _model_split(det)
                samples = datasets.split_by_group(samples, fraction, split_seed)[1]
                source += f" validation studies (val_fraction={fraction}, seed={split_seed})"
        elif rsna_csv is not None:
            assert images is not None
            samples = datasets.rsna_samples(rsna_csv, images, det.input_size)
            source = f"rsna {rsna_csv}"
        else:
            assert coco is not None
            samples = datasets.coco_samples(coco, det.input_size, image_root=images)
            source = f"coco {coco}"
    except (FileNotFoundError, ValueError) as exc:
        raise fail(str(exc), 1) from None
    with progress_bar("evaluating", len(samples)) as advance:
        result = evaluate_detector(det, samples, progress=advance)
    info = det.info
    if as_json:
        print_json(
            {
                **result,
                "score_threshold": info.score_threshold,
                "model": info.name,
                "version": info.version,
                "device_uid": info.device_uid,
                "data": source,
            }
        )
        return
    table = Table(title=f"{info.name} {info.version} on {source}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in result.items():
        table.add_row(key, f"{value:.3f}" if isinstance(value, float) else str(value))
    console.print(table)


@app.command()
def info(
    weights: WeightsOption = None,
    model_config: ModelConfigOption = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Which model the node would run: name, version, Device UID, classes, input size, threshold, device."""
    cfg = get_config(config)
    det = _load_detector(cfg, weights, model_config)
    i = det.info
    data = {
        "name": i.name,
        "version": i.version,
        "device_uid": i.device_uid,
        "classes": list(i.classes),
        "input_size": i.input_size,
        "score_threshold": i.score_threshold,
        "device": det.device,
        "architecture": det.cfg.MODEL.ROI_HEADS.NAME,
        "parameters": sum(p.numel() for p in det.model.parameters()),
        **i.extra,
    }
    if as_json:
        print_json(data)
        return
    table = Table(title="model")
    table.add_column("field")
    table.add_column("value")
    for key, value in data.items():
        table.add_row(key, ", ".join(value) if isinstance(value, list) else str(value))
    console.print(table)
