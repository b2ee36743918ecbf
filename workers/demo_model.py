"""A deterministic random-weight Llama with a real BPE tokenizer: the demo / reference model.

No weights can be downloaded where cunliang is tried out first, yet every stage (engine,
gateway, profiler, perf-model validation) needs a model that a real vLLM serves. This
module builds one locally:

* ``LlamaForCausalLM`` with seeded random weights, saved as safetensors;
* a byte-level BPE tokenizer trained with ``tokenizers`` on a built-in English text (so
  English is split into sensible sub-words), padded with reserved special tokens to the
  model's vocabulary size, with bos/eos and a ChatML chat template so
  ``/v1/chat/completions`` works.

Generation is cached: ``manifest.json`` records the parameters and file hashes; when it
matches, :func:`generate_llama` returns at once. The model is built in a temporary
directory beside ``out_dir`` and renamed into place, so a crash never leaves a
half-written model that looks complete.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

Progress = Callable[[str, float], None]

MANIFEST = "manifest.json"
# bump when the generator changes in a way that changes the files
GENERATOR_VERSION = 1
DEMO_MODEL_NAME = "cunliang-demo"

BOS = "<|begin_of_text|>"
EOS = "<|end_of_text|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
PAD = "<|pad|>"
SPECIAL_TOKENS = (BOS, EOS, IM_START, IM_END, PAD)

# ChatML: what Qwen uses; the generation prompt opens the assistant turn.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_CORPUS_SEED_TEXT = """\
Old hardware is not waste. A data centre holds servers that were bought years ago and still
run: graphics cards from the Pascal, Volta, Turing and Ampere generations, and plain CPU
servers with many cores and a lot of memory. Each of them can answer questions, translate
text, write summaries and generate code when a language model runs on it. The question is
how much it costs, how fast it is, and whether the tokens it produces are worth the power it
draws. The operator registers every site, every node and every device. The profiler measures
memory bandwidth, matrix multiplication throughput and the real speed of inference. The cost
model turns watts, tariffs and depreciation into yuan per hour. The placement optimiser picks
where each model runs so that demand is met at the lowest cost, and the gateway sends each
request of a tenant to a healthy replica. Tokens per yuan and tokens per joule tell whether a
machine should stay in service or retire.
The quick brown fox jumps over the lazy dog. She sells sea shells by the sea shore. How are
you today? I am fine, thank you, and you? Please write a short poem about the sea. What is
the capital of France? Paris is the capital of France. Explain how a transformer works in
simple words. A transformer reads a sequence of tokens, attends to earlier tokens and
predicts the next one. Numbers such as 1, 2, 3, 10, 42, 100, 2024 and 3.14 appear in text too.
"""

_WORDS = [
    "the",
    "a",
    "an",
    "of",
    "to",
    "in",
    "and",
    "or",
    "for",
    "with",
    "on",
    "at",
    "by",
    "from",
    "about",
    "into",
    "over",
    "after",
    "before",
    "under",
    "model",
    "models",
    "token",
    "tokens",
    "server",
    "servers",
    "card",
    "cards",
    "memory",
    "power",
    "price",
    "cost",
    "yuan",
    "hour",
    "watt",
    "watts",
    "energy",
    "request",
    "requests",
    "answer",
    "answers",
    "question",
    "questions",
    "tenant",
    "tenants",
    "fast",
    "slow",
    "cheap",
    "expensive",
    "old",
    "new",
    "small",
    "large",
    "good",
    "better",
    "best",
    "fine",
    "ready",
    "healthy",
    "run",
    "runs",
    "running",
    "serve",
    "serves",
    "served",
    "measure",
    "measures",
    "measured",
    "plan",
    "plans",
    "planned",
    "data",
    "centre",
    "center",
    "site",
    "sites",
    "node",
    "nodes",
    "device",
    "devices",
    "batch",
    "batches",
    "decode",
    "prefill",
    "write",
    "writes",
    "read",
    "reads",
    "think",
    "thinks",
    "know",
    "knows",
    "learn",
    "learns",
    "make",
    "makes",
    "take",
    "takes",
    "people",
    "time",
    "year",
    "years",
    "day",
    "days",
    "week",
    "world",
    "life",
    "work",
    "place",
    "part",
    "case",
    "point",
    "number",
    "language",
    "translate",
    "summary",
    "summaries",
    "code",
    "program",
    "programs",
    "function",
    "functions",
    "value",
    "cluster",
    "replica",
    "replicas",
    "gateway",
    "engine",
    "engines",
    "scheduler",
    "profile",
    "profiles",
    "throughput",
    "latency",
    "bandwidth",
    "compute",
    "capability",
    "quantisation",
    "precision",
    "float",
    "integer",
    "weight",
    "weights",
]


@dataclass(frozen=True)
class LlamaParams:
    """Everything that determines the generated files (the cache key)."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab_size: int
    max_position: int
    seed: int
    generator_version: int = GENERATOR_VERSION

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads


def _params(
    hidden: int,
    layers: int,
    heads: int,
    kv_heads: int | None,
    intermediate: int | None,
    vocab_size: int,
    max_position: int,
    seed: int,
) -> LlamaParams:
    kv = kv_heads if kv_heads is not None else heads
    if hidden <= 0 or layers <= 0 or heads <= 0 or hidden % heads:
        raise ValueError(f"hidden={hidden} must be a positive multiple of heads={heads}")
    if kv <= 0 or heads % kv:
        raise ValueError(f"heads={heads} must be a multiple of kv_heads={kv}")
    if vocab_size < 512:
        raise ValueError(f"vocab_size={vocab_size} must be >= 512 (256 bytes + merges)")
    # Llama's ratio (8/3 of hidden), rounded up to a multiple of 64 for aligned kernels
    inter = intermediate if intermediate is not None else -(-hidden * 8 // 3 // 64) * 64
    return LlamaParams(hidden, layers, heads, kv, inter, vocab_size, max_position, seed)


def training_text(seed: int = 0, sentences: int = 4000) -> str:
    """The deterministic English text the tokenizer is trained on."""
    rng = random.Random(seed)
    lines = [_CORPUS_SEED_TEXT]
    for _ in range(sentences):
        n = rng.randint(5, 14)
        sentence = " ".join(rng.choice(_WORDS) for _ in range(n))
        lines.append(sentence.capitalize() + rng.choice((".", ".", "?", "!", ",")))
    return "\n".join(lines)


def _train_tokenizer(params: LlamaParams, out_dir: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=params.vocab_size - len(SPECIAL_TOKENS),
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    text = training_text(params.seed)
    tok.train_from_iterator(text.splitlines(), trainer=trainer)
    # the text cannot yield every merge a large vocabulary asks for: pad with reserved
    # special tokens (as Llama 3 does) so tokenizer and embedding sizes agree
    missing = params.vocab_size - tok.get_vocab_size()
    tok.add_special_tokens([f"<|reserved_{i}|>" for i in range(missing)])
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    fast_cls: Any = PreTrainedTokenizerFast  # transformers is untyped
    fast = fast_cls(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        model_max_length=params.max_position,
        chat_template=CHAT_TEMPLATE,
    )
    fast.save_pretrained(str(out_dir))
    # older readers look for the template in tokenizer_config.json only
    cfg_path = out_dir / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text("utf-8"))
    cfg["chat_template"] = CHAT_TEMPLATE
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True), "utf-8")


def _build_weights(params: LlamaParams, out_dir: Path, bos_id: int, eos_ids: list[int]) -> None:
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=params.vocab_size,
        hidden_size=params.hidden,
        intermediate_size=params.intermediate,
        num_hidden_layers=params.layers,
        num_attention_heads=params.heads,
        num_key_value_heads=params.kv_heads,
        max_position_embeddings=params.max_position,
        bos_token_id=bos_id,
        eos_token_id=eos_ids,
        tie_word_embeddings=False,
    )
    torch.manual_seed(params.seed)
    model_cls: Any = LlamaForCausalLM  # transformers is untyped
    model = model_cls(config)
    model.save_pretrained(str(out_dir), safe_serialization=True)
    generation_cls: Any = GenerationConfig
    generation_cls(bos_token_id=bos_id, eos_token_id=eos_ids).save_pretrained(str(out_dir))


def file_hashes(directory: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    for path in sorted(directory.iterdir()):
        if path.is_file() and path.name != MANIFEST:
            out[path.name] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def read_manifest(out_dir: Path) -> dict[str, object] | None:
    """The manifest of a complete model in ``out_dir``, or None when absent or unreadable."""
    try:
        data = json.loads((out_dir / MANIFEST).read_text("utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _is_complete(out_dir: Path, params: LlamaParams) -> bool:
    manifest = read_manifest(out_dir)
    if manifest is None or manifest.get("params") != asdict(params):
        return False
    files = manifest.get("files")
    if not isinstance(files, dict):
        return False
    # sizes, not hashes: a cache hit must be instant; hashes are there for fingerprints
    sizes = manifest.get("sizes", {})
    return isinstance(sizes, dict) and all(
        (out_dir / name).is_file() and (out_dir / name).stat().st_size == sizes.get(name)
        for name in files
    )


def manifest_digest(out_dir: Path) -> str:
    """A short hash identifying the model's exact files (used in probe cache keys)."""
    manifest = read_manifest(out_dir)
    blob = json.dumps(manifest.get("files") if manifest else str(out_dir), sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def generate_llama(
    out_dir: Path,
    *,
    hidden: int = 256,
    layers: int = 4,
    heads: int = 4,
    kv_heads: int | None = None,
    intermediate: int | None = None,
    vocab_size: int = 4096,
    max_position: int = 2048,
    seed: int = 0,
    progress: Progress | None = None,
) -> Path:
    """Write a random-weight LlamaForCausalLM + tokenizer to ``out_dir``; return ``out_dir``.

    Same arguments give byte-identical files. Returns immediately when ``out_dir``
    already holds a complete model made with the same parameters; otherwise replaces
    it atomically. vLLM's CPU attention needs ``hidden / heads`` >= 64.
    """
    params = _params(hidden, layers, heads, kv_heads, intermediate, vocab_size, max_position, seed)
    report = progress or (lambda _stage, _fraction: None)
    out_dir = Path(out_dir)
    if _is_complete(out_dir, params):
        report("cached", 1.0)
        return out_dir
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the model is shared with engine processes
    try:
        report("tokenizer", 0.0)
        _train_tokenizer(params, tmp)
        from transformers import AutoTokenizer

        tok: Any = AutoTokenizer.from_pretrained(str(tmp))
        bos_id = int(tok.convert_tokens_to_ids(BOS))
        eos_ids = [int(tok.convert_tokens_to_ids(t)) for t in (EOS, IM_END)]
        report("weights", 0.3)
        _build_weights(params, tmp, bos_id, eos_ids)
        report("manifest", 0.9)
        files = file_hashes(tmp)
        manifest = {
            "params": asdict(params),
            "files": files,
            "sizes": {name: (tmp / name).stat().st_size for name in files},
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True), "utf-8")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    report("done", 1.0)
    return out_dir


def ensure_demo_model(data_dir: Path, progress: Progress | None = None) -> Path:
    """The default demo model (hidden 256, 4 layers), generated once under ``data_dir``."""
    return generate_llama(Path(data_dir) / "models" / DEMO_MODEL_NAME, progress=progress)


def partial_utf8_token_ids(model_dir: Path) -> list[int]:
    """Ids of the tokens that are one byte of a multi-byte UTF-8 character (128 here).

    A random-weight model samples them freely, and llama-cpp-python (0.3.36) does not
    count tokens against ``max_tokens`` while its output ends in an incomplete UTF-8
    sequence: a reply can run on until the context is full (HTTP 500). Tests and
    benchmarks that need exact lengths ban these ids with ``logit_bias`` on every engine.
    """
    from transformers import AutoTokenizer

    tok: Any = AutoTokenizer.from_pretrained(str(model_dir))
    return [i for i in range(len(tok)) if "\ufffd" in tok.decode([i])]
