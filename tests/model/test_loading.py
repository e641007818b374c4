from __future__ import annotations

from pathlib import Path

import pytest

from icon2.core.errors import ModelError
from icon2.model.loading import load_source, resolve
from tests.tiny import build_tiny_model


def test_builtin_gguf_is_found_without_importing_package() -> None:
    pytest.importorskip("gguf")
    src = resolve("smollm2-135m-instruct")
    assert src.kind == "gguf"
    assert src.gguf_file is not None
    assert (Path(src.location) / src.gguf_file).is_file()


def test_local_dir_resolves(tiny_model_dir: Path) -> None:
    assert resolve(str(tiny_model_dir)).kind == "local"


def test_missing_path_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"no such model directory"):
        resolve(str(tmp_path / "absent"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match=r"has no config\.json"):
        resolve(str(tmp_path / "empty"))


def test_hub_id_while_offline_says_so() -> None:
    src = resolve("some-org/some-model-that-is-not-cached")
    assert src.kind == "hub"
    with pytest.raises(ModelError, match=r"offline \(HF_HUB_OFFLINE=1\).*local directory"):
        load_source(src)


def test_model_without_chat_template_is_refused(tmp_path: Path) -> None:
    d = build_tiny_model(tmp_path / "plain", chat_template=None)
    with pytest.raises(ModelError, match="has no chat template"):
        load_source(resolve(str(d)))
