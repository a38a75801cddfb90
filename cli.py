"""Command line of the RPI-HMIF pipeline: make-sample, data-stats, extract-features, train, evaluate, tag-corpus, report, config.

Thin glue: each command parses options, loads `pipeline/conf/<stage>.yaml` plus `--set key=value`, and calls one stage.
"""
from __future__ import annotations

import functools
import json
import logging
import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, List, Optional

import typer

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if not sys.stderr.isatty():  # before transformers is imported: no progress bars in cron logs (Ray workers inherit it)
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

from pipeline.config import load_config  # noqa: E402
from pipeline.runtime.progress import log_error_to_files, setup_logging  # noqa: E402
from pipeline.config_render import render_yaml  # noqa: E402
from pipeline.stage_config import STAGES, stage_config  # noqa: E402
from rpihmif.errors import PipelineError  # noqa: E402

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  context_settings={"help_option_names": ["-h", "--help"]},
                  help="Multimodal NER on tweets with RPI-HMIF: cache CLIP features, train, tag large dumps.")
Arg, Opt = typer.Argument, typer.Option
log = logging.getLogger("rpihmif.cli")

CONFIG_HELP = "Stage yaml; defaults to pipeline/conf/<stage>.yaml. Any key it holds overrides the default."
SET_HELP = "Override a config key, repeatable: --set num_epochs=3 --set iffe.iterations=0. Unknown keys exit 2."


@contextmanager
def exit_codes() -> Iterator[None]:
    """Map pipeline errors to exit codes 1/2/3 with one readable line instead of a traceback."""
    try:
        yield
    except PipelineError as exc:
        _fail(f"error: {exc}")
        raise typer.Exit(exc.exit_code)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        raise typer.Exit(130)
    except (OSError, ValueError, RuntimeError) as exc:
        log.debug("failure", exc_info=True)
        _fail(f"error: {type(exc).__name__}: {exc}")
        raise typer.Exit(1)


def _fail(line: str) -> None:
    """The error line on stderr and in the stage's log files (train.log), so cron logs say why."""
    typer.echo(line, err=True)
    log_error_to_files(line)


def _print_json(data: dict) -> None:
    typer.echo(json.dumps(data, indent=2, ensure_ascii=False))


@functools.lru_cache(maxsize=None)
def _yaml(stage: str) -> dict:
    return load_config(stage)


def default(stage: str, key: str) -> str:
    """`--help` text of an option whose default is the stage yaml's value."""
    value = _yaml(stage)[key]
    return f"{value if value != '' else chr(34) * 2} (pipeline/conf/{stage}.yaml {key})"


def _version(value: bool) -> None:
    if value:
        from rpihmif import __version__
        typer.echo(f"rpihmif {__version__}")
        raise typer.Exit()


# fmt: off
@app.callback()
def main_options(
    version: bool = Opt(False, "--version", callback=_version, is_eager=True, help="Print the version and exit.", show_default=False),
    offline: bool = Opt(False, "--offline", help="No network: hub ids load only from the Hugging Face cache (as HF_HUB_OFFLINE=1).", show_default="off"),
) -> None:
    """Multimodal NER on tweets with RPI-HMIF: cache CLIP features, train, tag large dumps."""
    if offline:
        os.environ["HF_HUB_OFFLINE"] = "1"


@app.command("make-sample")
def make_sample_cmd(
    out: Path = Arg(..., help="Folder to write the sample into (benchmark layout under OUT/twitter2015, dump at OUT/tweets.jsonl.gz)."),
    seed: int = Opt(0, "--seed", help="Seed: the same seed writes byte-identical files."),
    hard: bool = Opt(False, "--hard", help="Only the cue source shows the type cue; the other two show neutral pictures."),
) -> None:
    """Generate a small multimodal sample in the DeepKE benchmark layout, where some types only the image decides."""
    from pipeline.io.sample import make_sample
    setup_logging()
    with exit_codes():
        _print_json(make_sample(out, seed=seed, hard=hard))


@app.command("data-stats")
def data_stats_cmd(
    dataset_dir: Path = Arg(..., help="A dataset folder, e.g. data/twitter2015 (text-only folders are fine)."),
    lenient: bool = Opt(False, "--lenient", help="Repair malformed BIO instead of failing.", show_default="off"),
) -> None:
    """Print JSON counts per split: tweets, tokens, entities per type, images and crops found/missing."""
    from pipeline.data_stats import data_stats
    setup_logging()
    with exit_codes():
        _print_json(data_stats(dataset_dir, lenient=lenient))


@app.command("extract-features")
def extract_features_cmd(
    config: Optional[Path] = Opt(None, "--config", help=CONFIG_HELP, show_default="pipeline/conf/<stage>.yaml"),
    set_: List[str] = Opt([], "--set", help=SET_HELP, show_default="none"),
    dump: List[Path] = Opt([], "--dump", help="A tweet dump (JSONL or JSONL.gz) whose images to encode too; repeatable."),
    workers: Optional[int] = Opt(None, "--workers", help="Ray actors running the frozen CLIP encoder.", show_default=default("extract", "workers")),
    ray_address: Optional[str] = Opt(None, "--ray-address", help="Existing Ray cluster host:port; \"\" starts Ray embedded.", show_default=default("extract", "ray_address")),
) -> None:
    """Run the frozen CLIP vision encoder over images and crops once; store features in the HDF5 cache."""
    from pipeline.extract.stage import run_extract
    setup_logging()
    with exit_codes():
        cfg = stage_config("extract", config, set_, {"workers": workers, "ray_address": ray_address})
        _print_json(run_extract(cfg, dumps=list(dump)).to_dict())


@app.command("train")
def train_cmd(
    config: Optional[Path] = Opt(None, "--config", help=CONFIG_HELP, show_default="pipeline/conf/<stage>.yaml"),
    set_: List[str] = Opt([], "--set", help=SET_HELP, show_default="none"),
    lenient: Optional[bool] = Opt(None, "--lenient/--strict", help="Repair malformed BIO with a warning, or fail.", show_default=default("train", "lenient")),
) -> None:
    """Train text encoder + HIM + IFFE + CRF; keep the best epoch on valid; resume with --set load_path=RUN/last."""
    from pipeline.train.trainer import train
    with exit_codes():
        cfg = stage_config("train", config, set_, {"lenient": lenient})
        _print_json(train(cfg))


@app.command("evaluate")
def evaluate_cmd(
    checkpoint: Path = Arg(..., help="A checkpoint folder (a run's best/)."),
    split_file: Path = Arg(..., help="A CoNLL split file; its images are found through the dataset folder it sits in."),
    config: Optional[Path] = Opt(None, "--config", help=CONFIG_HELP, show_default="pipeline/conf/<stage>.yaml"),
    set_: List[str] = Opt([], "--set", help=SET_HELP, show_default="none"),
    out: Optional[Path] = Opt(None, "--out", help="Write the metrics JSON here.", show_default="not written"),
    predictions: Optional[Path] = Opt(None, "--predictions", help="Write predictions here in the same CoNLL form.", show_default="not written"),
    lenient: Optional[bool] = Opt(None, "--lenient/--strict", help="Repair malformed BIO with a warning, or fail.", show_default=default("evaluate", "lenient")),
) -> None:
    """Entity-level micro P/R/F1 (seqeval) and per type over every gold entity of SPLIT_FILE."""
    from pipeline.train.evaluate import evaluate_file
    setup_logging()
    with exit_codes():
        cfg = stage_config("evaluate", config, set_, {"lenient": lenient})
        _print_json(evaluate_file(checkpoint, split_file, cfg, out=out, predictions=predictions))


@app.command("tag-corpus")
def tag_corpus_cmd(
    inputs: List[Path] = Arg(..., help="JSONL / JSONL.gz tweet dumps, or folders of them."),
    model: Optional[Path] = Opt(None, "--model", help="Checkpoint folder.", show_default=default("tag", "load_path")),
    out: Optional[Path] = Opt(None, "--out", help="Output folder: data/ (Parquet parts only: read it with any Parquet reader), _manifest.json, _rejects.jsonl.", show_default=default("tag", "out")),
    config: Optional[Path] = Opt(None, "--config", help=CONFIG_HELP, show_default="pipeline/conf/<stage>.yaml"),
    set_: List[str] = Opt([], "--set", help=SET_HELP, show_default="none"),
    workers: Optional[int] = Opt(None, "--workers", help="Ray workers; 1 runs in-process.", show_default=default("tag", "workers")),
    ray_address: Optional[str] = Opt(None, "--ray-address", help="Existing Ray cluster host:port; \"\" starts Ray embedded.", show_default=default("tag", "ray_address")),
    require_images: Optional[bool] = Opt(None, "--require-images", help="Reject tweets whose image is not cached.", show_default=default("tag", "require_images")),
    allow_missing_images: Optional[bool] = Opt(None, "--allow-missing-images", help="Tag text-only when the model's feature cache is missing (else exit 2).", show_default=default("tag", "allow_missing_images")),
    force: Optional[bool] = Opt(None, "--force", help="Re-tag every chunk, even those already done.", show_default=default("tag", "force")),
) -> None:
    """Tag large tweet dumps into a Parquet dataset, chunk by chunk; reruns redo only what is not done (cron-safe)."""
    from pipeline.tag.stage import run_tag
    setup_logging()
    with exit_codes():
        named = {"load_path": str(model) if model else None, "out": str(out) if out else None,
                 "workers": workers, "ray_address": ray_address, "require_images": require_images,
                 "allow_missing_images": allow_missing_images, "force": force}
        _print_json(run_tag(list(inputs), stage_config("tag", config, set_, named)))


@app.command("report")
def report_cmd(
    out_dir: Path = Arg(..., help="A tag-corpus output folder (Parquet parts in OUT_DIR/data/)."),
    seed: int = Opt(0, "--seed", help="Seed of the random sample of tweets: the same seed shows the same tweets."),
    sample: int = Opt(30, "--sample", min=0, help="Tweets in the random sample (and least confident: half of it)."),
    image_root: Optional[Path] = Opt(None, "--image-root", help="Folder the rows' image paths are relative to (default: from the manifest, else each dump's folder).", show_default="from the manifest"),
) -> None:
    """Write OUT_DIR/_report.html: aggregates, a random sample, the least confident tweets, crops, routing per source."""
    from pipeline.tag.report import write_report
    setup_logging()
    with exit_codes():
        typer.echo(str(write_report(out_dir, seed=seed, sample_size=sample, least=max(1, sample // 2) if sample else 0,
                                    image_sample=min(sample, 12), image_root=str(image_root) if image_root else None)))


@app.command("config")
def config_cmd(
    stage: str = Arg(..., help=f"Stage whose config to print: {', '.join(STAGES)}."),
    config: Optional[Path] = Opt(None, "--config", help=CONFIG_HELP, show_default="pipeline/conf/<stage>.yaml"),
    set_: List[str] = Opt([], "--set", help=SET_HELP, show_default="none"),
) -> None:
    """Print the effective config of STAGE (yaml with each key's comment) after --config and --set; exit 2 if invalid."""
    with exit_codes():
        typer.echo(render_yaml(stage_config(stage, config, set_)), nl=False)
# fmt: on


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())
