"""Package-level contracts: the public API, lazy heavy imports, typed errors."""

from __future__ import annotations

import subprocess
import sys
from importlib import metadata

import pytest

import langchain_localllm
from langchain_localllm import errors

EXPECTED_ALL = [
    "CacheInfo",
    "ChatTemplateError",
    "ConstraintError",
    "ContextWindowExceededError",
    "GenerationError",
    "HFLocalChatModel",
    "HFLocalEmbeddings",
    "InvalidModelFileError",
    "InvalidParameterError",
    "LegacyGGMLFormatError",
    "LocalGGMLChatModel",
    "LocalGGMLEmbeddings",
    "LocalGGMLLLM",
    "LocalLLMError",
    "MissingDependencyError",
    "ModelFormatError",
    "ModelLoadError",
    "ModelNotFoundError",
    "UnsupportedContentError",
    "__version__",
    "clear_model_cache",
    "model_cache_info",
    "set_model_cache_size",
]


def test_all_is_pinned() -> None:
    assert sorted(langchain_localllm.__all__) == sorted(EXPECTED_ALL)
    for name in langchain_localllm.__all__:
        assert hasattr(langchain_localllm, name), name


def test_version_comes_from_package_metadata() -> None:
    assert langchain_localllm.__version__ == metadata.version("langchain-localllm")


def test_import_loads_no_heavy_backend() -> None:
    code = (
        "import sys, langchain_localllm\n"
        "heavy = [m for m in ('torch', 'transformers', 'llama_cpp') if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_constructing_a_model_loads_no_heavy_backend() -> None:
    code = (
        "import sys\n"
        "from langchain_localllm import HFLocalChatModel, LocalGGMLLLM\n"
        "LocalGGMLLLM(model_path='does-not-exist.gguf')\n"
        "HFLocalChatModel(model='does-not-exist')\n"
        "from langchain_localllm import LocalGGMLChatModel\n"
        "LocalGGMLChatModel(model_path='does-not-exist.gguf').bind_tools([]).with_config({})\n"
        "from langchain_localllm import HFLocalEmbeddings, LocalGGMLEmbeddings\n"
        "LocalGGMLEmbeddings(model_path='does-not-exist.gguf')\n"
        "HFLocalEmbeddings(model='does-not-exist')\n"
        "print(','.join(m for m in ('torch', 'transformers', 'llama_cpp') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_py_typed_is_shipped() -> None:
    files = metadata.files("langchain-localllm") or []
    assert any(str(f).endswith("py.typed") for f in files) or (
        __import__("pathlib").Path(langchain_localllm.__file__).with_name("py.typed").exists()
    )


def test_errors_subclass_what_callers_catch() -> None:
    from langchain_core import exceptions as lc

    assert issubclass(errors.ModelNotFoundError, FileNotFoundError)
    assert issubclass(errors.LegacyGGMLFormatError, ValueError)
    assert issubclass(errors.InvalidModelFileError, errors.ModelFormatError)
    assert issubclass(errors.ContextWindowExceededError, ValueError)
    assert issubclass(errors.MissingDependencyError, ImportError)
    for name in ("ModelNotFoundError", "ContextOverflowError"):
        if hasattr(lc, name):
            ours = errors.ModelNotFoundError if name == "ModelNotFoundError" else errors.ContextWindowExceededError
            assert issubclass(ours, getattr(lc, name))
    err = errors.ContextWindowExceededError("too long", prompt_tokens=10, context_window=8)
    assert (err.prompt_tokens, err.context_window) == (10, 8)


def test_missing_extra_names_the_pip_command(monkeypatch: pytest.MonkeyPatch) -> None:
    from langchain_localllm._core import imports as _imports

    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # makes `import llama_cpp` fail
    with pytest.raises(errors.MissingDependencyError, match=r'pip install "langchain-localllm\[llamacpp\]"'):
        _imports.import_optional("llama_cpp")
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(ImportError, match=r"langchain-localllm\[hf\]"):
        _imports.import_optional("transformers")
