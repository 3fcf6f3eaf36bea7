"""Convert a GGUF checkpoint into a bfloat16 Hugging Face model directory vLLM can serve.

Usage (with the vLLM venv's interpreter; never imported by the gateway):

    python convert_gguf.py MODEL.gguf OUT_DIR

Contract: on success OUT_DIR holds model.safetensors, config.json, the tokenizer files and
chat_template.jinja, and exit status is 0. The result is written to a temporary sibling of
OUT_DIR and renamed into place only when complete, so OUT_DIR either does not exist or is a
finished conversion - an interrupted run can never be mistaken for a done one. Refuses (exit 2)
if OUT_DIR already exists.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path


def _clear_stale_partials(out_dir: Path) -> None:
    # Leftovers of killed conversions: their writer pid is gone, so nobody will finish them.
    for stale in out_dir.parent.glob(f".{out_dir.name}.partial-*"):
        pid = stale.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            shutil.rmtree(stale, ignore_errors=True)


def _ensure_chat_template(tokenizer, out: Path) -> None:
    template = getattr(tokenizer, "chat_template", None)
    if not template:
        raise SystemExit("the GGUF carries no chat template; /v1/chat/completions would fail")
    jinja = out / "chat_template.jinja"
    # Newer transformers write the template to chat_template.jinja, older ones embed it in
    # tokenizer_config.json; vLLM reads either. Write the file when neither happened.
    if not jinja.is_file() and '"chat_template"' not in (out / "tokenizer_config.json").read_text():
        jinja.write_text(template, encoding="utf-8")


def convert(gguf_file: Path, out_dir: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.monotonic()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    _clear_stale_partials(out_dir)
    partial = out_dir.parent / f".{out_dir.name}.partial-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)

    src_dir, name = str(gguf_file.parent), gguf_file.name
    print(f"loading tokenizer from {gguf_file}", flush=True)
    tokenizer = AutoTokenizer.from_pretrained(src_dir, gguf_file=name)
    print("loading and dequantising the model (bfloat16)", flush=True)
    model = AutoModelForCausalLM.from_pretrained(src_dir, gguf_file=name, dtype=torch.bfloat16)

    # save_pretrained refuses a model that still claims to be GGUF-quantised; the weights are
    # already dequantised tensors, so dropping the quantiser metadata is all that is needed.
    model.hf_quantizer = None
    model.is_quantized = False
    for config in (model.config, getattr(model, "generation_config", None)):
        if config is not None and hasattr(config, "quantization_config"):
            delattr(config, "quantization_config")

    try:
        print(f"saving to {partial}", flush=True)
        model.save_pretrained(partial, safe_serialization=True)
        tokenizer.save_pretrained(partial)
        _ensure_chat_template(tokenizer, partial)
        if not (partial / "model.safetensors").is_file():
            raise SystemExit("save_pretrained wrote no single model.safetensors")
        partial.rename(out_dir)  # atomic on one filesystem; fails if out_dir appeared meanwhile
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    print(f"done in {time.monotonic() - started:.1f} s: {out_dir}", flush=True)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    gguf_file, out_dir = Path(argv[0]).absolute(), Path(argv[1]).absolute()
    if not gguf_file.is_file():
        print(f"no such GGUF file: {gguf_file}", file=sys.stderr)
        return 2
    if out_dir.exists():
        print(f"refusing to overwrite existing {out_dir}", file=sys.stderr)
        return 2
    # No model hub is reachable here: fail fast instead of retrying the network.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    convert(gguf_file, out_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
