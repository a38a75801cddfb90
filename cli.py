"""Command line of the RPI-HMIF pipeline: make-sample, data-stats, extract-features, train, evaluate, tag-corpus, report, cache, config.

Thin glue: each command parses options, loads `conf/<stage>.yaml` plus `--set key=value`, and calls one stage.
"""
from __future__ import annotations

import errno
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

from exit_codes import PipelineError, UsageError  # noqa: E402
from pipeline import preflight  # noqa: E402
from pipeline.config import load_config  # noqa: E402
from pipeline.runtime.progress import log_error_to_files, setup_logging  # noqa: E402
from pipeline.config_render import render_yaml  # noqa: E402
from pipeline.stage_config import COMMANDS, STAGES, stage_config  # noqa: E402
from rpihmif.errors import ModelError  # noqa: E402

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  context_settings={"help_option_names": ["-h", "--help"]},
                  help="Multimodal NER on tweets with RPI-HMIF: cache CLIP features, train, tag large dumps.")
Arg, Opt = typer.Argument, typer.Option
log = logging.getLogger("rpihmif.cli")

CONFIG_HELP = "Stage yaml; defaults to conf/<stage>.yaml. Any key it holds overrides the default."
SET_HELP = "Override a config key, repeatable: --set num_epochs=3 --set iffe.iterations=0. Unknown keys exit 2."


@contextmanager
def reported_errors() -> Iterator[None]:
    """Map pipeline errors to exit codes 1/2/3 (the model library's ModelError is bad usage: 2) with one readable
    line instead of a traceback."""
    try:
        yield
    except (PipelineError, ModelError) as exc:
        _fail(f"error: {exc}")
        raise typer.Exit(exc.exit_code if isinstance(exc, PipelineError) else UsageError.exit_code)
    except KeyboardInterrupt:
        _fail("interrupted")  # on stderr and in train.log
        raise typer.Exit(130)
    except (FileNotFoundError, PermissionError, NotADirectoryError, IsADirectoryError) as exc:
        log.debug("failure", exc_info=True)  # a path the user gave or must fix: bad input (exit 2)
        _fail(f"error: {_os_error(exc)}; check the path and its permissions")
        raise typer.Exit(2)
    except OSError as exc:
        log.debug("failure", exc_info=True)
        full = exc.errno in (errno.ENOSPC, errno.EDQUOT) and "free space" not in str(exc)
        fix = "; free space on that disk and rerun" if full else ""
        _fail(f"error: {_os_error(exc)}{fix}")
        raise typer.Exit(1)
    except (ValueError, RuntimeError) as exc:
        log.debug("failure", exc_info=True)
        _fail(f"error: {type(exc).__name__}: {str(exc)[:500]}")
        raise typer.Exit(1)


def _os_error(exc: OSError) -> str:
    """`path: reason` of an OSError (the reason alone when it names no file)."""
    reason = exc.strerror or str(exc)
    return f"{exc.filename}: {reason}" if exc.filename else f"{type(exc).__name__}: {reason}"


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
    return f"{value if value != '' else chr(34) * 2} (conf/{stage}.yaml {key})"


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
        from rpihmif.hub import go_offline

        go_offline()


@app.command("make-sample")
def make_sample_cmd(
    out: Path = Arg(..., help="Folder to write the sample into (benchmark layout under OUT/twitter2015, dump at OUT/tweets.jsonl.gz)."),
    seed: int = Opt(0, "--seed", help="Seed: the same seed writes byte-identical files."),
    hard: bool = Opt(False, "--hard", help="Only the cue source shows the type cue; the other two show neutral pictures."),
) -> None:
    """Generate a small multimodal sample in the DeepKE benchmark layout, where some types only the image decides."""
    from pipeline.io.sample import make_sample
    setup_logging()
    with reported_errors():
        preflight.check_make_sample(out)
        _print_json(make_sample(out, seed=seed, hard=hard))


@app.command("data-stats")
def data_stats_cmd(
    dataset_dir: Path = Arg(..., help="A dataset folder, e.g. data/twitter2015 (text-only folders are fine)."),
    lenient: bool = Opt(False, "--lenient", help="Repair malformed BIO instead of failing.", show_default="off"),
) -> None:
    """Print JSON counts per split: tweets, tokens, entities per type, images and crops found/missing."""
    from pipeline.data_stats import data_stats
    setup_logging()
    with reported_errors():
        preflight.check_data_stats(dataset_dir)
        _print_json(data_stats(dataset_dir, lenient=lenient))


@app.command("extract-features")
def extract_features_cmd(
    config: Optional[Path] = Opt(None, "--config", help=CONFIG_HELP, show_default="conf/<stage>.yaml"),
    set_: List[str] = Opt([], "--set", help=SET_HELP, show_default="none"),
    dump: List[Path] = Opt([], "--dump", help="A tweet dump (JSONL or JSONL.gz) whose images to encode too; repeatable."),
    workers: Optional[int] = Opt(None, "--workers", help="Ray actors running the frozen CLIP encoder; 0 runs in this process, without Ray.", show_default=default("extract", "workers")),
    ray_address: Optional[str] = Opt(None, "--ray-address", help="Existing Ray cluster host:port; \"\" starts Ray embedded.", show_default=default("extract", "ray_address")),
    model: Optional[str] = Opt(None, "--model", help="Take the vision section from this checkpoint (folder, run folder or hub id): the encoder and sizes it was trained on.", show_default="the yaml's vision:"),
) -> None:
    """Run the frozen CLIP vision encoder over images and crops once; store features in the HDF5 cache."""
    from pipeline.extract.stage import run_extract
    setup_logging()
    with reported_errors():
        if model:
            from pipeline.extract.from_checkpoint import check_encoder, vision_overrides
            set_ = vision_overrides(model) + list(set_)
        cfg = stage_config("extract", config, set_, {"workers": workers, "ray_address": ray_address})
        preflight.check_extract(cfg, list(dump))
        if model:
            check_encoder(cfg, model)
        _print_json(run_extract(cfg, dumps=list(dump)).to_dict())


@app.command("train")
def train_cmd(
    config: Optional[Path] = Opt(None, "--config", help=CONFIG_HELP, show_default="conf/<stage>.yaml"),
    set_: List[str] = Opt([], "--set", help=SET_HELP, show_default="none"),
    lenient: Optional[bool] = Opt(None, "--lenient/--strict", help="Repair malformed BIO with a warning, or fail.", show_default=default("train", "lenient")),
) -> None:
    """Train text encoder + HIM + IFFE + CRF; keep the best epoch on valid; resume with --set load_path=RUN/last."""
    from pipeline.train.trainer import train
    with reported_errors():
        cfg = stage_config("train", config, set_, {"lenient": lenient})
        preflight.check_train(cfg)
        _print_json(train(cfg))


@app.command("evaluate")
def evaluate_cmd(
    checkpoint: str = Arg(..., help="A checkpoint folder (a run's best/), a run folder, or a Hugging Face Hub id."),
    split_file: Path = Arg(..., help="A CoNLL split file; its images are found through the dataset folder it sits in."),
    config: Optional[Path] = Opt(None, "--config", help=CONFIG_HELP, show_default="conf/<stage>.yaml"),
    set_: List[str] = Opt([], "--set", help=SET_HELP, show_default="none"),
    out: Optional[Path] = Opt(None, "--out", help="Write the metrics JSON here.", show_default="not written"),
    predictions: Optional[Path] = Opt(None, "--predictions", help="Write predictions here in conlleval form: token, gold, predicted per line, a blank line between tweets.", show_default="not written"),
    lenient: Optional[bool] = Opt(None, "--lenient/--strict", help="Repair malformed BIO with a warning, or fail.", show_default=default("evaluate", "lenient")),
) -> None:
    """Entity-level micro P/R/F1 (seqeval) and per type over every gold entity of SPLIT_FILE."""
    from pipeline.train.evaluate import evaluate_file
    setup_logging()
    with reported_errors():
        cfg = stage_config("evaluate", config, set_, {"lenient": lenient})
        preflight.check_evaluate(checkpoint, split_file, out, predictions)
        _print_json(evaluate_file(checkpoint, split_file, cfg, out=out, predictions=predictions))


@app.command("tag-corpus")
def tag_corpus_cmd(
    inputs: List[Path] = Arg(..., help="JSONL / JSONL.gz tweet dumps, or folders of them."),
    model: Optional[str] = Opt(None, "--model", help="Checkpoint folder, a run folder (its best/) or a Hugging Face Hub id.", show_default=default("tag", "load_path")),
    out: Optional[Path] = Opt(None, "--out", help="Output folder: data/ (Parquet parts only: read it with any Parquet reader), _state.sqlite (commit log), _rejects.jsonl.", show_default=default("tag", "out")),
    config: Optional[Path] = Opt(None, "--config", help=CONFIG_HELP, show_default="conf/<stage>.yaml"),
    set_: List[str] = Opt([], "--set", help=SET_HELP, show_default="none"),
    workers: Optional[int] = Opt(None, "--workers", help="Ray actors tagging chunks; 0 runs in this process, without Ray.", show_default=default("tag", "workers")),
    ray_address: Optional[str] = Opt(None, "--ray-address", help="Existing Ray cluster host:port; \"\" starts Ray embedded.", show_default=default("tag", "ray_address")),
    require_images: Optional[bool] = Opt(None, "--require-images", help="Reject tweets whose image is not cached.", show_default=default("tag", "require_images")),
    allow_missing_images: Optional[bool] = Opt(None, "--allow-missing-images", help="Tag text-only when the model's feature cache is missing (else exit 2).", show_default=default("tag", "allow_missing_images")),
    force: Optional[bool] = Opt(None, "--force", help="Re-tag every chunk, even those already done.", show_default=default("tag", "force")),
) -> None:
    """Tag large tweet dumps into a Parquet dataset, chunk by chunk; reruns redo only what is not done (cron-safe)."""
    from pipeline.tag.stage import run_tag
    setup_logging()
    with reported_errors():
        named = {"load_path": str(model) if model else None, "out": str(out) if out else None,
                 "workers": workers, "ray_address": ray_address, "require_images": require_images,
                 "allow_missing_images": allow_missing_images, "force": force}
        cfg = stage_config("tag", config, set_, named)
        preflight.check_tag(list(inputs), cfg)
        _print_json(run_tag(list(inputs), cfg))


@app.command("report")
def report_cmd(
    out_dir: Path = Arg(..., help="A tag-corpus output folder (Parquet parts in OUT_DIR/data/)."),
    seed: int = Opt(0, "--seed", help="Seed of the random sample of tweets: the same seed shows the same tweets."),
    sample: int = Opt(30, "--sample", min=0, help="Tweets in the random sample (and least confident: half of it)."),
    image_root: Optional[Path] = Opt(None, "--image-root", help="Folder the rows' image paths are relative to (default: from the commit log, else each dump's folder).", show_default="from the manifest"),
) -> None:
    """Write OUT_DIR/_report.html: aggregates, a random sample, the least confident tweets, crops, routing per source."""
    from pipeline.tag.report import write_report
    setup_logging()
    with reported_errors():
        preflight.check_report(out_dir, image_root)
        typer.echo(str(write_report(out_dir, seed=seed, sample_size=sample, least=max(1, sample // 2) if sample else 0,
                                    image_sample=min(sample, 12), image_root=str(image_root) if image_root else None)))


cache_app = typer.Typer(no_args_is_help=True, help="List, verify and prune the feature cache (one folder per encoder fingerprint).")
app.add_typer(cache_app, name="cache")
CACHE_DIR_HELP = "Feature-cache root; default: extract.yaml's cache_dir (\"\" = $RPIHMIF_CACHE or ~/.cache/rpihmif/features)."
CACHE_DIR_OPT = Opt(None, "--cache-dir", help=CACHE_DIR_HELP, show_default="from extract.yaml")
CACHE_CONFIG_OPT = Opt(None, "--config", help=CONFIG_HELP, show_default="pipeline/conf/extract.yaml")
CACHE_SET_OPT = Opt([], "--set", help="Override a config key of extract.yaml, e.g. --set cache_dir=C.", show_default="none")


def _cache_root(config: Optional[Path], set_: List[str], cache_dir: Optional[Path]) -> Path:
    """The cache root extract-features writes, with --config / --set cache_dir= / --cache-dir as that stage takes them."""
    return Path(stage_config("extract", config, set_, {"cache_dir": str(cache_dir) if cache_dir else None}).cache_dir)


@cache_app.command("info")
def cache_info_cmd(
    cache_dir: Optional[Path] = CACHE_DIR_OPT, config: Optional[Path] = CACHE_CONFIG_OPT, set_: List[str] = CACHE_SET_OPT,
    as_json: bool = Opt(False, "--json", help="Print JSON instead of a table.", show_default="off"),
) -> None:
    """One line per fingerprint folder: encoder, fingerprint, images, bytes, shards, last written, last read."""
    from cache import cache_info
    from cache.manage import info_table
    setup_logging()
    with reported_errors():
        data = cache_info(_cache_root(config, set_, cache_dir))
        _print_json(data) if as_json else typer.echo(info_table(data))


@cache_app.command("verify")
def cache_verify_cmd(
    cache_dir: Optional[Path] = CACHE_DIR_OPT, config: Optional[Path] = CACHE_CONFIG_OPT, set_: List[str] = CACHE_SET_OPT,
    fingerprint: Optional[str] = Opt(None, "--fingerprint", help="Verify only this fingerprint folder.", show_default="all"),
) -> None:
    """Read every shard back against its checksums and structure; exit 1 naming each broken file and the fix."""
    from cache import verify_cache
    setup_logging()
    with reported_errors():
        result = verify_cache(_cache_root(config, set_, cache_dir), fingerprint)
        for bad in result["broken"]:
            _fail(f"error: {bad['file']}: {bad['reason']}")
        if result["broken"]:
            _fail(f"{len(result['broken'])} broken file(s) of {result['shards']} shard(s) checked; fix: rerun "
                  "extract-features with the same settings (it sets damaged shards aside and recomputes their "
                  "images), or remove the folder with `cache prune --fingerprint FP`")
            raise typer.Exit(1)
        typer.echo(f"ok: {result['shards']} shard(s) under {result['cache_dir']} pass their checksums and checks")


@cache_app.command("prune")
def cache_prune_cmd(
    cache_dir: Optional[Path] = CACHE_DIR_OPT, config: Optional[Path] = CACHE_CONFIG_OPT, set_: List[str] = CACHE_SET_OPT,
    fingerprint: Optional[str] = Opt(None, "--fingerprint", help="Remove this fingerprint folder.", show_default="any"),
    unused_since: Optional[float] = Opt(None, "--unused-since", help="Remove folders neither read nor written for DAYS days.", metavar="DAYS", show_default="any"),
    keep: Optional[int] = Opt(None, "--keep", help="Keep the N most recently used folders, remove the others.", metavar="N", show_default="all"),
    dry_run: bool = Opt(False, "--dry-run", help="List what would be removed and the bytes freed; remove nothing.", show_default="off"),
) -> None:
    """Remove whole fingerprint folders matching every criterion given; never one a running stage holds (exit 3)."""
    from cache import prune_cache
    from cache.manage import prune_lines
    setup_logging()
    with reported_errors():
        result = prune_cache(_cache_root(config, set_, cache_dir), fingerprint=fingerprint,
                             unused_since_days=unused_since, keep=keep, dry_run=dry_run)
        typer.echo(prune_lines(result))


@app.command("config")
def config_cmd(
    stage: str = Arg(..., help=f"Stage whose config to print: {', '.join(STAGES)} (or {', '.join(COMMANDS)})."),
    config: Optional[Path] = Opt(None, "--config", help=CONFIG_HELP, show_default="conf/<stage>.yaml"),
    set_: List[str] = Opt([], "--set", help=SET_HELP, show_default="none"),
) -> None:
    """Print the effective config of STAGE (yaml with each key's comment) after --config and --set; exit 2 if invalid."""
    with reported_errors():
        typer.echo(render_yaml(stage_config(stage, config, set_)), nl=False)
# fmt: on


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())
