from __future__ import annotations

from pathlib import Path

import pytest

from workers.demo_model import ensure_demo_model


@pytest.fixture(scope="session")
def demo_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data dir holding the default demo model (generated once per session, ~5 s)."""
    data_dir = tmp_path_factory.mktemp("data")
    ensure_demo_model(data_dir)
    return data_dir


@pytest.fixture(scope="session")
def demo_model(demo_data_dir: Path) -> Path:
    return ensure_demo_model(demo_data_dir)


@pytest.fixture(scope="session")
def demo_q4_gguf(demo_model: Path) -> Path:
    """The demo model as GGUF Q4_K_M (converted + quantised once per session, ~3 s)."""
    from scheduler.domain import Quant
    from workers.gguf_convert import make_gguf

    return make_gguf(demo_model, Quant.GGUF_Q4_K_M)


@pytest.fixture(scope="session")
def exact_length_bias(demo_model: Path) -> dict[str, int]:
    """``logit_bias`` that makes every demo-model reply exactly ``max_tokens`` long on any
    CPU: bans the end-of-sequence tokens and the lone UTF-8 byte tokens that make
    llama-cpp-python overrun ``max_tokens`` (see ``partial_utf8_token_ids``)."""
    from transformers import AutoTokenizer

    from workers.demo_model import BOS, EOS, IM_END, partial_utf8_token_ids

    tok = AutoTokenizer.from_pretrained(str(demo_model))
    stops = [int(tok.convert_tokens_to_ids(t)) for t in (BOS, EOS, IM_END)]
    return {str(i): -100 for i in stops + partial_utf8_token_ids(demo_model)}
