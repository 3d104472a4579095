"""The llama.cpp backend (GGUF files through llama-cpp-python).

``settings`` the field groups and their frozen views · ``gguf`` checks a file before
llama.cpp sees it · ``load`` loading and the native log · ``template`` sandboxed chat
templates · ``grammar`` JSON schema → GBNF · ``generate`` the token loop · ``backend`` the
:class:`~langchain_localllm._core.backend.Backend` verbs · ``model`` the fields the
LangChain classes inherit.

Importing this package does not import ``llama_cpp``.
"""
