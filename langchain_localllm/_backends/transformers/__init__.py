"""The transformers backend (Hugging Face checkpoints through transformers + torch).

``settings`` the field groups and their frozen views · ``load`` loading and wrapping
objects · ``prompt`` chat templates and token budgets · ``generate`` the token loop
(one padded ``generate``) · ``detokenize`` incremental detokenizing · ``grammar``
llguidance constraints · ``prefill`` grouped prefill for mixed-length batches · ``batch``
``batch()`` groups · ``device`` the CUDA worker thread · ``backend`` the
:class:`~langchain_localllm._core.backend.Backend` verbs.

Importing this package imports neither torch nor transformers.
"""
