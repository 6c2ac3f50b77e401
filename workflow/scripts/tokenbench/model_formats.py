"""One model, several formats: the weights a model entry names, in the format each engine loads.

llama.cpp loads a GGUF file; vLLM, transformers, SGLang, LMDeploy, TGI and TensorRT-LLM load a
Hugging Face folder (config.json, tokenizer and safetensors); MLC its own compiled folder. A
study that serves one model on engines of both kinds names the weights once (``models.<name>``):
the model stage resolves them in their own format and converts them for each engine that needs
another (``data/models/<model>/<format>/``), and the converted manifest records that it holds the
same weights (the source's digest and quantization) and at which precision the engine runs them.

GGUF -> Hugging Face goes through transformers' own GGUF loader (``from_pretrained(...,
gguf_file=...)``), which dequantizes every tensor; the folder is saved at ``dtype`` (bfloat16 by
default: what vLLM and transformers run on CPU and GPU alike). The conversion runs in a Python
environment that has transformers, torch and gguf, normally the engine's own: tokenbench itself
never imports torch.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

FORMATS = ("gguf", "hf", "mlc")
CONVERSIONS = {("gguf", "hf")}  # (from, to) pairs the model stage can make
DTYPES = ("bfloat16", "float16", "float32")


class ConversionError(RuntimeError):
    pass


def format_of_path(path: str | Path) -> str:
    """A model's format from its path: a .gguf file, an MLC folder, else a Hugging Face folder."""
    p = Path(path)
    if p.suffix == ".gguf":
        return "gguf"
    if (p / "mlc-chat-config.json").is_file():
        return "mlc"
    return "hf"


def needs_conversion(native: str, accepted: tuple[str, ...]) -> str | None:
    """The format to convert to for an engine accepting ``accepted``; None: it loads ``native``."""
    if native in accepted:
        return None
    for fmt in accepted:
        if (native, fmt) in CONVERSIONS:
            return fmt
    raise ConversionError(f"no conversion from {native} to any of {list(accepted)} (tokenbench converts "
                          f"{sorted(f'{a}->{b}' for a, b in CONVERSIONS)}); give the model in a format the engine loads")


# Run by the converting environment's interpreter: argv = GGUF file, output folder, dtype.
_GGUF_TO_HF = r"""
import json, os, sys
src, out, dtype = sys.argv[1:4]
import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer
folder, name = os.path.dirname(os.path.abspath(src)), os.path.basename(src)
tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=getattr(torch, dtype))
# The loader dequantizes every tensor but leaves the model marked as GGUF-quantized, and
# save_pretrained then refuses it ("The model is quantized with gguf and is not serializable"):
# the weights in memory are plain tensors of `dtype`, so the marks go before saving.
model.hf_quantizer = None
for obj in (model, model.config):
    for attr in ("is_quantized", "quantization_method", "quantization_config"):
        if attr in getattr(obj, "__dict__", {}):
            delattr(obj, attr)
model.config.dtype = getattr(torch, dtype)
model.save_pretrained(out)
tokenizer.save_pretrained(out)
print(json.dumps({"transformers": transformers.__version__, "torch": torch.__version__,
                  "parameters": sum(p.numel() for p in model.parameters())}))
"""


def gguf_to_hf(gguf: Path, out_dir: Path, python: str, dtype: str = "bfloat16", timeout_s: float = 1800) -> dict[str, Any]:
    """Convert a GGUF file into a Hugging Face folder with ``python`` (an interpreter with
    transformers, torch and gguf); returns what the converter reported (its library versions)."""
    if dtype not in DTYPES:
        raise ConversionError(f"dtype {dtype!r}: converted weights are saved as one of {list(DTYPES)}")
    tmp = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        proc = subprocess.run([python, "-c", _GGUF_TO_HF, str(gguf), str(tmp), dtype], capture_output=True,
                              text=True, timeout=timeout_s)
    except FileNotFoundError:
        raise ConversionError(f"converting {gguf.name} to a Hugging Face folder needs a Python with transformers, "
                              f"torch, gguf and accelerate; {python} does not exist") from None
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-12:])
        hint = (f"\ninstall them into that environment: {python} -m pip install transformers gguf accelerate torch"
                if any(s in tail for s in ("ModuleNotFoundError", "requires the", "is required", "pip install"))
                or "gguf" in tail.lower() else "")
        raise ConversionError(f"converting {gguf} to a Hugging Face folder with {python} failed "
                              f"(exit {proc.returncode}):\n{tail}{hint}")
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)  # all or nothing: a folder at out_dir is a finished conversion
    return json.loads(proc.stdout.strip().splitlines()[-1])


def converted_manifest(source: dict[str, Any], converted: dict[str, Any], fmt: str, dtype: str,
                       tool: dict[str, Any]) -> dict[str, Any]:
    """The manifest of converted weights: their own files and digest, the source's name, and what
    they were made from (``same_weights_as``) at which precision."""
    src_quant = (source.get("figures") or {}).get("quantization")
    return {**converted, "name": source["name"], "served_name": source["served_name"], "format": fmt,
            "source": "converted", "origin": {"converted_from": source.get("origin"), "source": source.get("source")},
            "precision": dtype,
            "precision_note": (f"{dtype}, dequantized from {source.get('format', 'gguf').upper()} {src_quant}"
                               if src_quant else dtype),
            "same_weights_as": {"sha256": source["sha256"], "format": source.get("format"),
                                "path": source["path"], "quantization": src_quant},
            "converted_with": tool}


def converter_python(binary: str) -> str:
    """The interpreter that converts for an engine: its own (a Python engine's binary is a console
    script or the interpreter itself), so the conversion uses the transformers the engine has."""
    from tokenbench.engines.catalog import python_of, resolve_binary

    return python_of(resolve_binary(binary))


def convert_model(source: dict[str, Any], fmt: str, weights_dir: Path, python: str,
                  dtype: str | None = None) -> dict[str, Any]:
    """Make ``fmt`` weights from the resolved model ``source`` (its manifest) into ``weights_dir``
    and return their manifest (files, digest and figures read from the converted files, plus what
    they were converted from). ``dtype``: the precision saved (None or auto: bfloat16)."""
    from tokenbench.models import ModelSpec, resolve_model

    native = source.get("format") or format_of_path(source["path"])
    if (native, fmt) not in CONVERSIONS:
        raise ConversionError(f"models.{source['name']}: no conversion from {native} to {fmt}")
    dtype = dtype if dtype in DTYPES else "bfloat16"
    tool = gguf_to_hf(Path(source["path"]), weights_dir, python, dtype)
    converted = resolve_model(source["name"], ModelSpec(source="local", path=str(weights_dir),
                                                        served_name=source.get("served_name"), format=fmt))
    return converted_manifest(source, converted, fmt, dtype, {**tool, "python": python})


def weights_info(manifest: dict[str, Any]) -> dict[str, Any]:
    """What an engine ran: format, precision and a label for the report ("GGUF Q4_1", "HF
    bfloat16 from GGUF Q4_1"), and the weights they are the same as where converted."""
    fmt = manifest.get("format") or format_of_path(manifest["path"])
    figures = manifest.get("figures") or {}
    precision = manifest.get("precision") or figures.get("quantization") or figures.get("dtype")
    label = " ".join(str(x) for x in (fmt.upper(), precision) if x)
    same = manifest.get("same_weights_as")
    if same:
        label += f" from {str(same.get('format') or '').upper()} {same.get('quantization') or ''}".rstrip()
    return {"format": fmt, "precision": precision, "label": label, "sha256": manifest.get("sha256"),
            "same_weights_as": same}
