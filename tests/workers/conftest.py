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
