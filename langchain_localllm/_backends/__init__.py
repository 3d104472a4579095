"""The backends, one subpackage each, behind :mod:`langchain_localllm._core.backend`."""
