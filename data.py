"""Data for the Klear-Reasoner stack: tokenizer, the Qwen3 chat template, JSONL readers, SFT examples with loss
masks, best-fit packing, rank sharding, and the built-in demo task (DEMO.md).

Design:
- The tokenizer is the `tokenizers` library on a checkpoint's tokenizer.json; special tokens come from
  tokenizer_config.json. transformers is never imported here (the tests use it as an oracle).
- render_chat is the official Qwen3 Jinja template written out in Python for conversations without tools,
  including its rule that reasoning survives only in assistant turns after the last user query.
- An SFT example learns the LAST assistant turn only: `<think>\\n...\\n</think>\\n\\n`, the answer and the closing
  `<|im_end|>`. Earlier assistant turns are context, since the template strips their reasoning and learning
  them would teach answering without thinking (Klear's SFT data is single-turn anyway).
- pack() puts examples into fixed rows best-fit decreasing; doc_ids keep documents apart, positions restart,
  targets are already shifted (-100 where the next token is not learned).
- ShardedSampler: one seeded permutation per epoch, strided over ranks; the n_items % world_size tail of
  each epoch's permutation is dropped (so all ranks take equal steps; a different tail each shuffled epoch).
- The demo: a character tokenizer with Qwen3's special tokens, a tiny Qwen3 config, and two tasks (multi-operand
  addition with a carry trace; tiny stdin programs) whose SFT traces carry a systematic teacher bug that RL can
  fix while eval/RL gold answers are clean.

Commands:
  python data.py --demo runs/demo/data [--seed 0]                        # write the demo folder
  python data.py --sft FILE.jsonl --tokenizer DIR --seq-len 8192        # packing statistics of an SFT file
"""
import argparse
import bisect
import gzip
import json
import random
from pathlib import Path

import tokenizers
import torch

IGNORE_INDEX = -100


class Tokenizer:
    """tokenizers.Tokenizer plus the ids the trainers need; `config` is the tokenizer_config.json content."""

    def __init__(self, tok: tokenizers.Tokenizer, config: dict, source: str = "tokenizer"):
        self.tok, self.config = tok, config
        self.vocab_size = tok.get_vocab_size(with_added_tokens=True)
        # We train and sample in chat format, so generation stops at <|im_end|> even where the (base model's)
        # config names <|endoftext|> as eos.
        eos = "<|im_end|>" if tok.token_to_id("<|im_end|>") is not None else _content(config.get("eos_token"))
        pad = _content(config.get("pad_token")) or "<|endoftext|>"
        self.eos_id, self.pad_id = tok.token_to_id(eos or ""), tok.token_to_id(pad)
        if self.eos_id is None or self.pad_id is None:
            raise ValueError(f"{source}: no id for eos token {eos!r} or pad token {pad!r}")

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False).ids  # added tokens in the text are matched; no BOS

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def token_to_id(self, token: str) -> int | None:
        return self.tok.token_to_id(token)

    def save(self, folder) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.tok.save(str(folder / "tokenizer.json"))
        (folder / "tokenizer_config.json").write_text(json.dumps(self.config, indent=2, ensure_ascii=False))


def _content(token) -> str | None:
    return token.get("content") if isinstance(token, dict) else token  # old configs store AddedToken dicts


def load_tokenizer(path) -> Tokenizer:
    folder = Path(path)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"tokenizer: {folder / name} not found (a tokenizer folder needs "
                                    "tokenizer.json and tokenizer_config.json)")
    tok = tokenizers.Tokenizer.from_file(str(folder / "tokenizer.json"))
    config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    for i, spec in config.get("added_tokens_decoder", {}).items():  # both files must agree on special ids
        if tok.token_to_id(spec["content"]) != int(i):
            raise ValueError(f"{folder}: tokenizer_config.json gives {spec['content']!r} id {i}, "
                             f"tokenizer.json gives {tok.token_to_id(spec['content'])}")
    return Tokenizer(tok, config, source=str(folder))


def render_chat(messages: list[dict], add_generation_prompt: bool = False, enable_thinking: bool = True) -> str:
    """The official Qwen3 chat template (chat_template.jinja) for conversations without tools."""
    text = ""
    if messages and messages[0]["role"] == "system":
        text += "<|im_start|>system\n" + messages[0]["content"] + "<|im_end|>\n"
    last_query = len(messages) - 1  # the last real user query; earlier assistant turns lose their reasoning
    for i in range(len(messages) - 1, -1, -1):
        c = messages[i].get("content")
        if messages[i]["role"] == "user" and isinstance(c, str) and not (
                c.startswith("<tool_response>") and c.endswith("</tool_response>")):
            last_query = i
            break
    for i, m in enumerate(messages):
        role, content = m["role"], m.get("content") if isinstance(m.get("content"), str) else ""
        if role == "user" or (role == "system" and i > 0):
            text += f"<|im_start|>{role}\n{content}<|im_end|>\n"
        elif role == "assistant":
            reasoning = m.get("reasoning_content")
            if not isinstance(reasoning, str):
                reasoning = ""
                if "</think>" in content:
                    reasoning = content.split("</think>")[0].rstrip("\n").split("<think>")[-1].lstrip("\n")
                    content = content.split("</think>")[-1].lstrip("\n")
            if i > last_query and (i == len(messages) - 1 or reasoning):
                content = "<think>\n" + reasoning.strip("\n") + "\n</think>\n\n" + content.lstrip("\n")
            text += f"<|im_start|>assistant\n{content}<|im_end|>\n"
        elif role != "system":
            raise ValueError(f"render_chat: unsupported role {role!r} (tool calls are not supported)")
    if add_generation_prompt:
        text += "<|im_start|>assistant\n" + ("" if enable_thinking else "<think>\n\n</think>\n\n")
    return text


def read_jsonl(path, skip_bad: bool = False, parse=None) -> list:
    """JSON objects of a JSONL file (blank lines ignored), each passed through parse(record) when given. A bad
    line (malformed JSON, not an object, or parse raising ValueError/KeyError/TypeError) raises an error naming
    file:line, or with skip_bad is counted, skipped and reported. A `.gz` file is read through gzip."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    out, bad = [], []
    with (gzip.open if path.suffix == ".gz" else open)(path, "rt", encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                if not isinstance(rec, dict):
                    raise ValueError(f"expected a JSON object, got {type(rec).__name__}")
                out.append(parse(rec) if parse else rec)
            except (ValueError, KeyError, TypeError) as e:  # json.JSONDecodeError is a ValueError
                if not skip_bad:
                    raise ValueError(f"{path}:{lineno}: {e}") from None
                bad.append(f"{path}:{lineno}: {e}")
    if bad:
        print(f"warning: skipped {len(bad)} bad line(s), first: {bad[0]}")
    if not out:
        raise ValueError(f"{path}: no records" + (f" ({len(bad)} bad lines skipped)" if bad else ""))
    return out


def sft_example(record: dict, tokenizer: Tokenizer) -> tuple[list[int], list[int]]:
    """Token ids of the rendered conversation and a loss mask (1 = learn) over the last assistant turn after its
    `<|im_start|>assistant\\n` header, up to and including `<|im_end|>` (not the newline after it)."""
    if "messages" in record:
        messages = record["messages"]
        if not (isinstance(messages, list) and messages and all(isinstance(m, dict) and "role" in m for m in messages)
                and messages[-1]["role"] == "assistant"):
            raise ValueError("field 'messages' must be a list of {role, content} ending with an assistant turn")
    else:
        for field in ("prompt", "response"):
            if not isinstance(record.get(field), str):
                raise ValueError(f"missing field {field!r} (or 'messages')")
        messages = [{"role": "user", "content": record["prompt"]}, {"role": "assistant", "content": record["response"]}]
    prompt, full = render_chat(messages[:-1], add_generation_prompt=True), render_chat(messages)
    # Tokenise both texts and check the prompt's ids are a prefix of the full ids: then the learned span is
    # exactly what the model must generate after the generation prompt at sampling time.
    p_ids, ids = tokenizer.encode(prompt), tokenizer.encode(full)
    if not full.startswith(prompt) or ids[:len(p_ids)] != p_ids:
        raise ValueError("the conversation before the last assistant turn does not render as its prefix")
    assert ids[-2] == tokenizer.eos_id, "the rendered turn ends with <|im_end|>\\n"
    return ids, [0] * len(p_ids) + [1] * (len(ids) - len(p_ids) - 1) + [0]


def load_sft(path, tokenizer: Tokenizer, skip_bad: bool = False) -> list[tuple[list[int], list[int]]]:
    return read_jsonl(path, skip_bad, parse=lambda r: sft_example(r, tokenizer))


def _best_fit(lengths: list[int], cap: int) -> list[list[int]]:
    """Best-fit decreasing: longest first, each into the row with the least room that still holds it."""
    bins, free = [], []  # free: sorted (room left, bin index) of rows that can still take a token
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        j = bisect.bisect_left(free, (lengths[i], -1))
        if j == len(free):
            bins.append([i])
            room, b = cap - lengths[i], len(bins) - 1
        else:
            room, b = free.pop(j)
            bins[b].append(i)
            room -= lengths[i]
        if room > 0:
            bisect.insort(free, (room, b))
    return bins


def pack(examples, seq_len: int, pad_id: int, overlong: str = "truncate") -> tuple[dict, dict]:
    """(ids, mask) examples -> rows of seq_len tokens: input_ids, targets (next token of the same document if it
    is a loss token, else -100), doc_ids (0, 1, ... per row; padding one more id) and position_ids (restarting
    per document), each (R, seq_len) long; and stats."""
    if overlong not in ("truncate", "skip"):
        raise ValueError(f"overlong must be 'truncate' or 'skip', got {overlong!r}")
    docs, truncated, skipped = [], 0, 0
    for ids, mask in examples:
        if not ids or (len(ids) > seq_len and overlong == "skip"):
            skipped += 1
            continue
        truncated += len(ids) > seq_len
        docs.append((ids[:seq_len], mask[:seq_len]))
    if not docs:
        raise ValueError(f"pack: no examples left to pack ({skipped} skipped)")
    bins = _best_fit([len(d[0]) for d in docs], seq_len)
    shape = (len(bins), seq_len)
    t = {"input_ids": torch.full(shape, pad_id), "targets": torch.full(shape, IGNORE_INDEX),
         "doc_ids": torch.zeros(shape, dtype=torch.long), "position_ids": torch.zeros(shape, dtype=torch.long)}
    for r, row in enumerate(bins):
        s = 0
        for d, i in enumerate(row + [None]):  # None: the padding tail, its own document
            ids, mask = docs[i] if i is not None else ([pad_id] * (seq_len - s), [0] * (seq_len - s))
            x, n = torch.tensor(ids, dtype=torch.long), len(ids)
            t["input_ids"][r, s:s + n] = x
            t["targets"][r, s:s + n - 1] = torch.where(torch.tensor(mask[1:], dtype=torch.bool), x[1:], IGNORE_INDEX)
            t["doc_ids"][r, s:s + n], t["position_ids"][r, s:s + n] = d, torch.arange(n)
            s += n
    tokens, loss_tokens = sum(len(d[0]) for d in docs), int((t["targets"] != IGNORE_INDEX).sum())
    stats = {"rows": len(bins), "docs": len(docs), "truncated": truncated, "skipped": skipped, "tokens": tokens,
             "loss_tokens": loss_tokens, "pad_fraction": 1 - tokens / (len(bins) * seq_len)}
    return t, stats


class ShardedSampler:
    """This rank's indices of a seeded per-epoch permutation of range(n_items), continuing across epochs.
    Each rank takes perm[rank : n_items // world_size * world_size : world_size], the short tail is dropped."""

    def __init__(self, n_items: int, rank: int, world_size: int, seed: int, shuffle: bool = True):
        if not 0 <= rank < world_size or n_items < world_size:
            raise ValueError(f"ShardedSampler: need 0 <= rank < world_size <= n_items, got rank {rank}, "
                             f"world_size {world_size}, n_items {n_items}")
        self.n_items, self.rank, self.world_size, self.seed, self.shuffle = n_items, rank, world_size, seed, shuffle
        self.per_rank = n_items // world_size
        self._epoch, self._offset, self._cache = 0, 0, (None, [])

    @property
    def epoch(self) -> int:
        return self._epoch

    def _share(self) -> list[int]:
        if self._cache[0] != self._epoch:
            order = list(range(self.n_items))
            if self.shuffle:
                random.Random(self.seed + self._epoch).shuffle(order)
            self._cache = (self._epoch, order[self.rank:self.per_rank * self.world_size:self.world_size])
        return self._cache[1]

    def next_indices(self, k: int) -> list[int]:
        out = []
        while len(out) < k:
            take = self._share()[self._offset:self._offset + k - len(out)]
            out += take
            self._offset += len(take)
            if self._offset == self.per_rank:
                self._epoch, self._offset = self._epoch + 1, 0
        return out

    def __iter__(self):  # the rest of the current epoch
        epoch = self._epoch
        while self._epoch == epoch:
            yield self.next_indices(1)[0]

    def state_dict(self) -> dict:
        return {"epoch": self._epoch, "offset": self._offset, "n_items": self.n_items,
                "world_size": self.world_size, "seed": self.seed, "shuffle": self.shuffle}

    def load_state_dict(self, state: dict) -> None:
        for key, now in self.state_dict().items():
            if key not in ("epoch", "offset") and state[key] != now:
                raise ValueError(f"ShardedSampler: cannot resume, saved {key}={state[key]} but now {now}")
        self._epoch, self._offset = state["epoch"], state["offset"]


# ----------------------------------------------------------------------------------------------- demo task
DEMO_CHARS = "\t\n" + "".join(chr(c) for c in range(32, 127))  # printable ASCII, newline, tab; one token each
DEMO_ADDED = [("<|endoftext|>", True), ("<|im_start|>", True), ("<|im_end|>", True),
              ("<think>", False), ("</think>", False), ("\\boxed{", False)]  # (token, special) as in Qwen3
MATH_SOURCE, CODE_SOURCE = "math_longcot_math_verify", "coder1_longcot"
MATH_WIDTH = 3  # demo operands have at most this many digits and are shown zero-padded to it


def demo_tokenizer() -> Tokenizer:
    """Character-level: every char its own token (unknown chars map to <unk>), plus Qwen3's special tokens."""
    vocab = {c: i for i, c in enumerate(list(DEMO_CHARS) + ["<unk>"])}  # "<unk>" text itself splits into chars
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Split(tokenizers.Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = tokenizers.decoders.Fuse()  # join the characters back without spaces
    for text, special in DEMO_ADDED:
        added = tokenizers.AddedToken(text, special=special, normalized=False)
        tok.add_special_tokens([added]) if special else tok.add_tokens([added])
    decoder = {str(i): {"content": a.content, "special": a.special} for i, a in tok.get_added_tokens_decoder().items()}
    config = {"added_tokens_decoder": decoder, "bos_token": None, "eos_token": "<|im_end|>",
              "pad_token": "<|endoftext|>", "unk_token": None, "add_bos_token": False, "model_max_length": 512,
              "clean_up_tokenization_spaces": False, "tokenizer_class": "PreTrainedTokenizerFast"}
    return Tokenizer(tok, config, source="demo tokenizer")


def demo_config(tok: Tokenizer) -> dict:
    """A 0.8M-parameter Qwen3 (DEMO.md) in HF config.json form."""
    return {"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "vocab_size": -(-tok.vocab_size // 16) * 16,
            "hidden_size": 128, "intermediate_size": 384, "num_hidden_layers": 4, "num_attention_heads": 4,
            "num_key_value_heads": 2, "head_dim": 32, "max_position_embeddings": 512, "rms_norm_eps": 1e-6,
            "rope_theta": 10000.0, "rope_scaling": None, "tie_word_embeddings": True, "hidden_act": "silu",
            "attention_bias": False, "attention_dropout": 0.0, "initializer_range": 0.02, "use_cache": True,
            "bos_token_id": tok.pad_id, "eos_token_id": tok.eos_id, "pad_token_id": tok.pad_id,
            "torch_dtype": "float32"}


def math_trace(ops: list[int], flawed: bool = False) -> tuple[str, int, bool]:
    """Units-first column trace `carry+digits=sum` over MATH_WIDTH columns, the sum, and whether a column (carry
    included) sums to exactly 10. Fixed widths (zero-padded operands, two-digit sums) put every digit a tiny
    model must read at a fixed distance from where it writes. flawed: the teacher's bug, the carry out of such a
    column is dropped (trace and answer both wrong)."""
    lines, digits, carry, ten = [], [], 0, False
    for col in range(MATH_WIDTH):
        ds = [o // 10**col % 10 for o in ops]
        s = carry + sum(ds)
        lines.append("+".join(map(str, [carry] + ds)) + f"={s:02d}")
        digits.append(s % 10)
        ten |= s == 10
        carry = 0 if flawed and s == 10 else s // 10
    return "\n".join(lines), int(str(carry) + "".join(map(str, reversed(digits)))), ten


def math_problem(rng: random.Random, p_ten: float = 0.4, max_digits: int = MATH_WIDTH) -> list[int]:
    """2-3 operands of 1..max_digits digits; a share p_ten has a column summing to 10 (where the flaw bites)."""
    want = rng.random() < p_ten
    while True:  # rejection: about a quarter of uniform problems have such a column
        ds = [rng.randint(1, max_digits) for _ in range(rng.randint(2, 3))]
        ops = [rng.randint(10 ** (d - 1) if d > 1 else 0, 10 ** d - 1) for d in ds]
        if math_trace(ops)[2] == want:
            return ops


def code_problem(rng: random.Random) -> tuple[int, int]:
    """f(x) = a*x + b with a in +-1..15, b in -99..99; the flawed sub-class is b < 0."""
    return rng.choice([a for a in range(-15, 16) if a]), rng.randint(-99, 99)


def code_text(a: int, b: int) -> tuple[str, str, str]:
    """(prompt, reasoning, program) for f(x) = a*x + b."""
    ax, bx = {1: "x", -1: "-x"}.get(a, f"{a}*x"), (f"+{b}" if b > 0 else f"-{-b}" if b < 0 else "")
    prompt = f"Read an integer x, print f(x)={ax.replace('*', '')}{bx}"
    return prompt, f"a={a}, b={b}", f"x=int(input())\nprint({ax}{bx})"


def demo_record(kind: str, problem, split: str, rng: random.Random, flaw_rate: float) -> tuple[dict, bool]:
    """One record of a split ("sft" | "rl" | "eval") and whether the teacher's flaw was applied (sft only)."""
    if kind == "math":
        prompt = "+".join(f"{o:0{MATH_WIDTH}d}" for o in problem)
        flawed = split == "sft" and math_trace(problem)[2] and rng.random() < flaw_rate
        trace, answer, _ = math_trace(problem, flawed)
        content, gold, ability = f"\\boxed{{{answer}}}", str(answer), "math"
    else:
        a, b = problem
        flawed = split == "sft" and b < 0 and rng.random() < flaw_rate  # the teacher misreads the sign of b
        prompt, (_, trace, program) = code_text(a, b)[0], code_text(a, -b if flawed else b)
        content, ability = f"```python\n{program}\n```", "code"
        xs = [rng.randint(-99, -1), rng.randint(0, 9), rng.randint(10, 99), rng.randint(-999, 999)]
        tests = [{"input": f"{x}\n", "output": f"{a * x + b}\n"} for x in xs]
        gold = json.dumps({"inputs": [t["input"] for t in tests], "outputs": [t["output"] for t in tests]})
    user = {"role": "user", "content": prompt}
    if split == "sft":
        return {"messages": [user, {"role": "assistant", "reasoning_content": trace, "content": content}]}, flawed
    if split == "rl":
        source = MATH_SOURCE if kind == "math" else CODE_SOURCE
        return {"data_source": source, "prompt": [user], "ability": ability,
                "reward_model": {"style": "rule", "ground_truth": gold}}, False
    return ({"problem": prompt, "answer": gold} if kind == "math" else {"problem": prompt, "tests": tests}), False


def _fresh(draw, seen: set):
    """A problem not drawn before (the splits must not overlap)."""
    for _ in range(100_000):
        problem = draw()
        if str(problem) not in seen:
            seen.add(str(problem))
            return problem
    raise ValueError("write_demo: ran out of distinct problems; lower the counts")


def write_demo(folder, seed: int = 0, n_sft: int = 2000, n_rl: int = 1000, n_eval: int = 200,
               flaw_rate: float = 0.6, p_ten: float = 0.4) -> dict:
    """Tokenizer, config.json and the JSONL files of the demo; counts are per flavour, problems are distinct
    across all splits (eval is held out from SFT and RL). Returns counts, including how many traces are flawed."""
    folder, rng = Path(folder), random.Random(seed)
    tok = demo_tokenizer()
    tok.save(folder)
    (folder / "config.json").write_text(json.dumps(demo_config(tok), indent=2))
    draw = {"math": lambda: math_problem(rng, p_ten), "code": lambda: code_problem(rng)}
    seen, stats = set(), {}
    files = {"sft": [], "rl_math": [], "rl_code": [], "eval_math": [], "eval_code": []}  # RL: one file per stage
    for split, n in (("eval", n_eval), ("rl", n_rl), ("sft", n_sft)):
        for kind in ("math", "code"):
            recs = [demo_record(kind, _fresh(draw[kind], seen), split, rng, flaw_rate) for _ in range(n)]
            files[split if split == "sft" else f"{split}_{kind}"] += [r for r, _ in recs]
            stats[f"{split}_{kind}"], stats[f"{split}_{kind}_flawed"] = n, sum(bad for _, bad in recs)
    for name, recs in files.items():
        if name == "sft":
            rng.shuffle(recs)  # interleave the flavours
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    return stats


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--demo", help="write the demo task into this folder")
    p.add_argument("--seed", type=int, default=0, help="demo seed")
    p.add_argument("--sft", help="an SFT JSONL file to tokenise and pack (prints packing statistics)")
    p.add_argument("--tokenizer", help="tokenizer folder for --sft")
    p.add_argument("--seq-len", type=int, default=8192, help="packed row length for --sft")
    p.add_argument("--skip-bad", action="store_true", help="skip and count bad lines instead of failing")
    args = p.parse_args()
    if args.demo:
        print(json.dumps(write_demo(args.demo, seed=args.seed)))
    if args.sft:
        tok = load_tokenizer(args.tokenizer or Path(args.sft).parent)
        print(json.dumps(pack(load_sft(args.sft, tok, args.skip_bad), args.seq_len, tok.pad_id)[1]))


if __name__ == "__main__":
    main()
