"""Models: fetch one onto a connected machine (model download) and see what is cached (model list)."""

from __future__ import annotations

import click

from .output import emit, interactive, json_option, printable


@click.group(name="model")
def model() -> None:
    """Get the embedding model onto a machine, and see which models are cached.

    \b
    Examples (a machine without network: download on one with it, copy DIR over):
      speakerdb model download --to wavlm-base-plus-sv
      speakerdb --model ./wavlm-base-plus-sv enroll alice alice1.flac
      speakerdb model list
    """


@model.command(name="download")
@click.argument("model_id", metavar="[ID]", required=False)
@click.option(
    "--to",
    "to",
    metavar="DIR",
    type=click.Path(file_okay=False),
    help="Write the model's files into DIR (to copy to another machine and pass as --model DIR) "
    "instead of the local Hugging Face cache.",
)
@json_option
def download(model_id: str | None, to: str | None, as_json: bool) -> None:
    """Fetch hub model ID [default: the default model, microsoft/wavlm-base-plus-sv] into the
    local Hugging Face cache, where --model ID finds it, or into folder DIR with --to.

    Needs network (a progress bar per file on stderr at a terminal). An offline machine
    gets one error line naming what to do.

    \b
    Examples:
      speakerdb model download
      speakerdb model download microsoft/wavlm-base-plus-sv --to ./wavlm-base-plus-sv
    """
    from ..api import DEFAULT_MODEL, download_model  # huggingface_hub: not for --help

    name = model_id or DEFAULT_MODEL
    path = download_model(name, to, progress_bars=interactive() and not as_json)
    hint = f"--model {path}" if to is not None else f"--model {name}"
    emit(as_json, {"model": name, "path": str(path)}, f"downloaded {name} to {printable(str(path))}: use {hint}")


@model.command(name="list")
@json_option
def list_models(as_json: bool) -> None:
    """Show the models in the local Hugging Face cache ($HF_HUB_CACHE, else $HF_HOME/hub,
    else ~/.cache/huggingface/hub) and their size on disk.

    \b
    Example:
      speakerdb model list --json
    """
    from ..api import cached_models, model_cache_dir  # huggingface_hub: not for --help

    models = cached_models()
    if not models:
        text = f"no models in the Hugging Face cache {printable(str(model_cache_dir()))}"
    else:
        width = max(len(m.model) for m in models)
        text = "\n".join(
            f"{printable(m.model):<{width}}  {m.size_bytes / 1e6:>9.1f} MB  {m.files:>3} files  {m.last_modified}"
            for m in models
        )
    emit(as_json, [m.to_dict() for m in models], text)


COMMANDS = [model]
