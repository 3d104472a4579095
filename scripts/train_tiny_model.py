#!/usr/bin/env python
"""Train the tiny deterministic test model from scratch on CPU.

Reads ``tests/fixtures/models/corpus.jsonl``, trains a byte-level BPE tokenizer
and a ~0.6M-parameter ``LlamaForCausalLM`` until greedy decoding reproduces
every corpus answer exactly (with a logit margin, so F16 GGUF stays exact),
then writes

* ``<out-dir>/tiny-chat/``      Hugging Face checkpoint (safetensors, tokenizer, chat template)
* ``<out-dir>/tiny-chat.gguf``  GGUF export (F16 by default) via ``scripts/export_gguf.py``

Usage::

    .venv/bin/python scripts/train_tiny_model.py [--out-dir tests/fixtures/models]

Exits non-zero if any corpus prompt does not reproduce its answer.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from jinja2.sandbox import ImmutableSandboxedEnvironment  # noqa: E402
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers  # noqa: E402

ENDOFTEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
SPECIAL_TOKENS = [ENDOFTEXT, IM_START, IM_END]  # ids 0, 1, 2
DEFAULT_SYSTEM = "You are a helpful assistant."

# ChatML with a default system prompt and Hermes/Qwen2.5-style tools. It must NOT be
# byte-identical to llama-cpp-python's builtin ChatML template (that one gets swapped
# for the builtin formatter); the default system prompt already makes it differ.
CHAT_TEMPLATE = r"""{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are a helpful assistant.' }}
    {%- endif %}
    {{- "\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>" }}
    {%- for tool in tools %}
        {{- "\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }}
    {%- else %}
        {{- '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == 'user') or (message.role == 'system' and not loop.first) or (message.role == 'assistant' and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\n' + (message.content or '') + '<|im_end|>\n' }}
    {%- elif message.role == 'assistant' %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}
            {{- '\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\n<tool_call>\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {%- if tool_call.arguments is string %}
                {{- tool_call.arguments }}
            {%- else %}
                {{- tool_call.arguments | tojson }}
            {%- endif %}
            {{- '}\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == 'tool' %}
        {%- if loop.first or (messages[loop.index0 - 1].role != 'tool') %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\n<tool_response>\n' }}
        {{- message.content }}
        {{- '\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != 'tool') %}
            {{- '<|im_end|>\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
{%- endif %}
"""

HIDDEN = 128
LAYERS = 2
HEADS = 4
KV_HEADS = 2
INTERMEDIATE = 384


def render_chat(messages: list[dict], tools: list[dict] | None = None, add_generation_prompt: bool = True) -> str:
    """Render with a plain jinja2 sandbox (same flags as transformers / llama-cpp-python)."""
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    return env.from_string(CHAT_TEMPLATE).render(
        messages=messages, tools=tools, add_generation_prompt=add_generation_prompt
    )


def check(cond: object, msg: object) -> None:
    if not cond:
        raise RuntimeError(msg)


def load_corpus(path: Path) -> list[dict]:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    for r in rows:
        if "messages" in r:
            check(r["messages"][-1]["role"] == "assistant", r)
        else:
            check("prompt" in r, r)
            check("completion" in r, r)
    return rows


def build_tokenizer(texts: list[str], vocab_size: int) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    split = re.compile("|".join(re.escape(s) for s in SPECIAL_TOKENS))
    pieces = [p for t in texts for p in split.split(t) if p]
    tok.train_from_iterator(pieces, trainer=trainer)
    tok.add_special_tokens(SPECIAL_TOKENS)
    for i, s in enumerate(SPECIAL_TOKENS):
        check(tok.token_to_id(s) == i, (s, tok.token_to_id(s)))
    return tok


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out-dir", type=Path, default=ROOT / "tests/fixtures/models")
    ap.add_argument("--corpus", type=Path, default=None, help="default: <out-dir>/corpus.jsonl")
    ap.add_argument("--vocab-size", type=int, default=1000)
    ap.add_argument("--margin", type=float, default=2.5, help="required logit lead of every target token")
    ap.add_argument("--lr", type=float, default=5e-3)
    ap.add_argument("--max-steps", type=int, default=3000)
    ap.add_argument("--gguf-type", default="f16", choices=["f16", "q8_0", "f32"])
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    t0 = time.time()
    random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.set_num_threads(2)
    torch.use_deterministic_algorithms(True)

    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        GenerationConfig,
        LlamaConfig,
        LlamaForCausalLM,
        PreTrainedTokenizerFast,
    )

    out_dir: Path = args.out_dir
    corpus_path = args.corpus or out_dir / "corpus.jsonl"
    rows = load_corpus(corpus_path)

    # ---- tokenizer -------------------------------------------------------
    texts: list[str] = []
    for r in rows:
        if "messages" in r:
            texts.append(render_chat(r["messages"], r.get("tools"), add_generation_prompt=False))
        else:
            texts.append(r["prompt"] + r["completion"])
    texts.append(render_chat([{"role": "user", "content": "hi"}], add_generation_prompt=True))
    raw_tok = build_tokenizer(texts, args.vocab_size)
    eot_id, ims_id, ime_id = (raw_tok.token_to_id(s) for s in SPECIAL_TOKENS)
    n_tok = raw_tok.get_vocab_size(with_added_tokens=True)
    vocab_size = (n_tok + 31) // 32 * 32
    for t in [*texts, "Chinese 中文 emoji 🌹👋🎂 ∑ \t\n  x"]:
        check(raw_tok.decode(raw_tok.encode(t).ids, skip_special_tokens=False) == t, t)

    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=raw_tok,
        eos_token=IM_END,
        pad_token=ENDOFTEXT,
        chat_template=CHAT_TEMPLATE,
        clean_up_tokenization_spaces=False,
        model_max_length=2048,
    )

    def enc(s: str) -> list[int]:
        return hf_tok.encode(s, add_special_tokens=False)

    # ---- training data ---------------------------------------------------
    examples = []  # (prompt_ids, target_ids, prompt_text, answer_text)
    for r in rows:
        if "messages" in r:
            msgs, tools = r["messages"], r.get("tools")
            prompt = hf_tok.apply_chat_template(msgs[:-1], tools=tools, add_generation_prompt=True, tokenize=False)
            check(prompt == render_chat(msgs[:-1], tools), "transformers/jinja2 render mismatch")
            answer = msgs[-1]["content"]
            examples.append((enc(prompt), [*enc(answer), ime_id], prompt, answer))
        else:
            examples.append((enc(r["prompt"]), [*enc(r["completion"]), eot_id], r["prompt"], r["completion"]))
    # Full-batch training, but split into length buckets (micro-batches) so that the few
    # long tool prompts do not pad every row to ~260 tokens; gradients are accumulated.
    n = len(examples)
    order = sorted(range(n), key=lambda i: len(examples[i][0]) + len(examples[i][1]))
    buckets: list[list[int]] = []
    for i in order:
        length = len(examples[i][0]) + len(examples[i][1])
        if buckets and length <= max(16, 1.5 * (len(examples[buckets[-1][0]][0]) + len(examples[buckets[-1][0]][1]))):
            buckets[-1].append(i)
        else:
            buckets.append([i])
    batches = []  # (input_ids, attention_mask, next-token targets with -100 = no loss)
    for b in buckets:
        max_len = max(len(examples[i][0]) + len(examples[i][1]) for i in b)
        input_ids = torch.full((len(b), max_len), eot_id, dtype=torch.long)
        labels = torch.full((len(b), max_len), -100, dtype=torch.long)
        attn = torch.zeros((len(b), max_len), dtype=torch.long)
        for j, i in enumerate(b):
            p, t = examples[i][0], examples[i][1]
            seq = p + t
            input_ids[j, : len(seq)] = torch.tensor(seq)
            attn[j, : len(seq)] = 1
            labels[j, len(p) : len(seq)] = torch.tensor(t)
        batches.append((input_ids, attn, labels[:, 1:]))  # position j predicts token j+1
    n_targets = sum(int((tg != -100).sum()) for _, _, tg in batches)
    print(
        f"tokenizer: {n_tok} tokens (model vocab {vocab_size}); {n} examples in {len(batches)} length buckets, "
        f"{sum(x.numel() for x, _, _ in batches)} padded tokens, {n_targets} target tokens"
    )

    # ---- model -------------------------------------------------------------
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=HIDDEN,
        intermediate_size=INTERMEDIATE,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS,
        max_position_embeddings=2048,
        rope_theta=10000.0,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        bos_token_id=None,
        eos_token_id=[ime_id, eot_id],
        pad_token_id=eot_id,
        attention_bias=False,
        mlp_bias=False,
    )
    model = LlamaForCausalLM(config).float()
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {n_params} parameters")
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.0)

    def target_margins(logits: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
        """logit(target) - max(other logits) at every target position (flattened)."""
        mask = tgt != -100
        lg = logits[mask]
        t = tgt[mask]
        tl = lg.gather(-1, t.unsqueeze(-1)).squeeze(-1)
        other = lg.scatter(-1, t.unsqueeze(-1), float("-inf")).amax(-1)
        return tl - other

    def margins() -> tuple[float, int]:
        model.eval()
        worst, rows_ok = float("inf"), 0
        with torch.no_grad():
            for x, a, tg in batches:
                logits = model(input_ids=x, attention_mask=a).logits[:, :-1].float()
                for r in range(x.shape[0]):
                    m = target_margins(logits[r : r + 1], tg[r : r + 1])
                    worst = min(worst, float(m.min()))
                    rows_ok += int(m.min() > 0)
        model.train()
        return worst, rows_ok

    model.train()
    step = 0
    while True:
        if step % 10 == 0:
            worst, ok_rows = margins()
            if step % 50 == 0 or worst >= args.margin:
                print(f"step {step:4d}  worst margin {worst:7.3f}  rows argmax-exact {ok_rows}/{n}")
            if worst >= args.margin:
                break
            if step >= args.max_steps:
                print("did not converge", file=sys.stderr)
                return 1
        opt.zero_grad(set_to_none=True)
        for x, a, tg in batches:
            # the LM head only needs the positions that carry loss
            hidden = model.model(input_ids=x, attention_mask=a).last_hidden_state[:, :-1]
            mask = tg != -100
            logits = model.lm_head(hidden[mask])
            t = tg[mask]
            ce = torch.nn.functional.cross_entropy(logits, t, reduction="sum")
            # hinge on the margin so training pushes every target token past the required lead
            tl = logits.gather(-1, t.unsqueeze(-1)).squeeze(-1)
            other = logits.scatter(-1, t.unsqueeze(-1), float("-inf")).amax(-1)
            hinge = torch.relu(args.margin + 1.0 - (tl - other)).sum()
            ((ce + hinge) / n_targets).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
    train_s = time.time() - t0
    print(f"trained {step} steps in {train_s:.1f}s")

    # ---- save ------------------------------------------------------------
    hf_dir = out_dir / "tiny-chat"
    hf_dir.mkdir(parents=True, exist_ok=True)
    for old in hf_dir.iterdir():
        old.unlink()
    model.eval()
    model.generation_config = GenerationConfig(
        eos_token_id=[ime_id, eot_id], pad_token_id=eot_id, bos_token_id=None, do_sample=False
    )
    model.save_pretrained(hf_dir, safe_serialization=True)
    try:
        hf_tok.save_pretrained(hf_dir, save_jinja_files=False)
    except TypeError:  # older transformers
        hf_tok.save_pretrained(hf_dir)
    tc_path = hf_dir / "tokenizer_config.json"
    tc = json.loads(tc_path.read_text(encoding="utf-8"))
    tc["chat_template"] = CHAT_TEMPLATE
    tc["tokenizer_class"] = "PreTrainedTokenizerFast"
    tc["eos_token"] = IM_END
    tc["pad_token"] = ENDOFTEXT
    tc["bos_token"] = None
    tc["clean_up_tokenization_spaces"] = False
    tc_path.write_text(json.dumps(tc, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    (hf_dir / "chat_template.jinja").unlink(missing_ok=True)

    # ---- verify the saved HF checkpoint ------------------------------------
    tok2 = AutoTokenizer.from_pretrained(hf_dir)
    model2 = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    model2.eval()
    check(tok2.eos_token == IM_END, tok2.eos_token)
    check(tok2.pad_token == ENDOFTEXT, tok2.pad_token)
    fails = 0
    for (p_ids, t_ids, prompt, answer), r in zip(examples, rows, strict=True):
        if "messages" in r:
            p2 = tok2.apply_chat_template(
                r["messages"][:-1], tools=r.get("tools"), add_generation_prompt=True, tokenize=False
            )
            check(p2 == prompt, (p2, prompt))
        ids = tok2.encode(prompt, add_special_tokens=False)
        check(ids == p_ids, prompt)
        with torch.no_grad():
            gen = model2.generate(
                torch.tensor([ids]),
                attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                max_new_tokens=len(t_ids) + 8,
                do_sample=False,
            )
        new = gen[0, len(ids) :].tolist()
        text = tok2.decode([i for i in new if i not in (ime_id, eot_id)], skip_special_tokens=False)
        if new != t_ids or text != answer:
            fails += 1
            print(f"MISMATCH {prompt!r}: {text!r} != {answer!r}", file=sys.stderr)
    print(f"HF generate: {n - fails}/{n} corpus prompts match")
    if fails:
        return 1

    # ---- GGUF --------------------------------------------------------------
    from export_gguf import export_llama_to_gguf

    gguf_path = out_dir / "tiny-chat.gguf"
    export_llama_to_gguf(hf_dir, gguf_path, args.gguf_type)
    print(f"wrote {gguf_path} ({gguf_path.stat().st_size} bytes)")
    print(f"special token ids: {ENDOFTEXT}={eot_id} {IM_START}={ims_id} {IM_END}={ime_id}")
    print(f"total time {time.time() - t0:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
