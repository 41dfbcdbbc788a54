"""data.py: tokenizer and chat template against transformers, JSONL errors, loss masks, packing, sharding, demo."""
import json
import random
import shutil
import tempfile
import threading

import numpy as np
import pytest
import torch
from conftest import need_shared

import data
import demo

CONVERSATIONS = [
    [{"role": "user", "content": "What is 2+2?"}],
    [{"role": "user", "content": "What is 2+2?"},
     {"role": "assistant", "reasoning_content": "\nadd\n", "content": "4"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Héllo, 你好 🙂"},
     {"role": "assistant", "content": "<think>\nthink ü\n</think>\n\n\nHi! 👋"}],
    [{"role": "user", "content": "q1"}, {"role": "assistant", "content": "<think>r1</think>a1"},
     {"role": "user", "content": "q2"}, {"role": "assistant", "reasoning_content": "r2", "content": "\na2"},
     {"role": "user", "content": "q3"}],
    [{"role": "user", "content": "q1"}, {"role": "assistant", "reasoning_content": "r1", "content": "a1"},
     {"role": "assistant", "content": "a2 without reasoning"}, {"role": "system", "content": "mid system"},
     {"role": "assistant", "reasoning_content": "r3", "content": "a3"}],
    [{"role": "system", "content": "only a system prompt"}],
]


@pytest.fixture(scope="module")
def qwen():
    return data.load_tokenizer(need_shared("qwen3-tokenizer"))


@pytest.fixture(scope="module")
def hf():
    transformers = pytest.importorskip("transformers")
    folder = need_shared("qwen3-tokenizer")
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    return tok, (folder / "chat_template.jinja").read_text()


@pytest.fixture(scope="module")
def demo_set(tmp_path_factory):
    folder = tmp_path_factory.mktemp("demo")
    stats = demo.write_demo(folder, seed=1, n_sft=400, n_rl=100, n_eval=100)
    return folder, stats, data.load_tokenizer(folder)


def _tokenise(records, tok, tmp_path) -> list[tuple[list[int], list[int]]]:
    """(ids, mask) of each SFT record the way sft.py gets them: from a token store built from a JSONL file."""
    folder = tempfile.mkdtemp(dir=tmp_path)  # a new file each time: the store key is its path, size and mtime
    src = tmp_path / folder / "records.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in records))
    s = data.build_token_store([src], tok, tmp_path / folder / "tokens")
    return [(s.ids[a:b].tolist(), s.mask[a:b].tolist()) for a, b in zip(s.offsets[:-1], s.offsets[1:])]


def _packed(examples, seq_len: int, overlong: str = "truncate") -> tuple[dict, dict]:
    """All rows and the stats of PackedRows over a TokenStore holding (ids, mask) examples (pad id 0)."""
    flat = [np.array(sum((ex[k] for ex in examples), []), dtype) for k, dtype in ((0, np.int32), (1, np.uint8))]
    offsets = np.cumsum([0] + [len(ids) for ids, _ in examples])
    store = data.TokenStore(*flat, offsets, np.array([sum(mask[1:]) for _, mask in examples]))
    rows = data.PackedRows(store, seq_len, 0, overlong)
    return rows.batch(range(len(rows))), rows.stats


def _documents(batch: dict, pad_id: int) -> list[list[int]]:
    """The token ids of every document in packed rows, padding left out."""
    docs = [batch["input_ids"][r][batch["doc_ids"][r] == d].tolist()
            for r in range(len(batch["doc_ids"])) for d in batch["doc_ids"][r].unique().tolist()]
    return [d for d in docs if set(d) != {pad_id}]


def test_qwen_tokenizer_matches_transformers(qwen, hf):
    tok, _ = hf
    assert (qwen.vocab_size, qwen.eos_id, qwen.pad_id) == (len(tok), 151645, 151643)
    texts = ["Hello world", "<|im_start|>user\nhi<|im_end|>\n", "héllo 你好 🙂 Ünïcödé", "  spaces\n\n\ttabs ",
             "<think>\nx\n</think>\n\n\\boxed{42}<|endoftext|>", "def f(x):\n    return x ** 2\n"]
    for text in texts:
        ids = qwen.encode(text)
        assert ids == tok.encode(text, add_special_tokens=False)
        assert qwen.decode(ids) == text
    assert qwen.decode(qwen.encode("<|im_start|>user<|im_end|>"), skip_special_tokens=True) == "user"
    assert qwen.tok.token_to_id("<think>") == 151667 and qwen.eos_id == qwen.tok.token_to_id("<|im_end|>")


def test_missing_or_inconsistent_tokenizer(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"{tmp_path / 'nope'}: a tokenizer folder needs tokenizer.json"):
        data.load_tokenizer(tmp_path / "nope")
    demo.demo_tokenizer().save(tmp_path)
    (tmp_path / "tokenizer_config.json").unlink()
    with pytest.raises(FileNotFoundError, match="tokenizer_config.json"):
        data.load_tokenizer(tmp_path)
    cfg = demo.demo_tokenizer().config
    cfg["added_tokens_decoder"]["3"] = {"content": "<think>", "special": False}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="'<think>' id 3"):
        data.load_tokenizer(tmp_path)


def test_render_chat_matches_official_template(qwen, hf):
    tok, template = hf
    for messages in CONVERSATIONS:
        for gen in (False, True):
            for thinking in (True, False):
                kw = dict(add_generation_prompt=gen, enable_thinking=thinking)
                ours = data.render_chat(messages, **kw)
                assert ours == tok.apply_chat_template(messages, chat_template=template, tokenize=False, **kw)
                theirs = tok.apply_chat_template(messages, chat_template=template, tokenize=True, return_dict=False,
                                                 **kw)
                assert qwen.encode(ours) == list(theirs)
    # the official multi-step rule: reasoning before the last user query is dropped, after it kept
    text = data.render_chat(CONVERSATIONS[3][:4])
    assert "r1" not in text and "<think>\nr2\n</think>\n\na2" in text
    with pytest.raises(ValueError, match="'tool'"):
        data.render_chat([{"role": "tool", "content": "x"}])


def test_read_jsonl_errors(tmp_path, capsys):
    p = tmp_path / "x.jsonl"
    p.write_text('{"a": 1}\n\n{bad json\n')
    with pytest.raises(ValueError, match=f"{p}:3: "):
        data.read_jsonl(p)
    assert data.read_jsonl(p, skip_bad=True) == [{"a": 1}]
    assert "skipped 1 bad line" in capsys.readouterr().out
    p.write_text('{"a": 1}\n[1, 2]\n')
    with pytest.raises(ValueError, match=f"{p}:2: expected a JSON object, got list"):
        data.read_jsonl(p)
    p.write_text("\n  \n")
    with pytest.raises(ValueError, match=f"{p}: no records"):
        data.read_jsonl(p)
    p.write_text("nope\n")
    with pytest.raises(ValueError, match=r"no records \(1 bad lines skipped\)"):
        data.read_jsonl(p, skip_bad=True)
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        data.read_jsonl(tmp_path / "missing.jsonl")


def test_sft_example_hand_checked_mask(demo_set, tmp_path):
    tok = demo_set[2]  # one token per character makes the span easy to count by hand
    record = {"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "hi"},
                           {"role": "assistant", "reasoning_content": "r", "content": "ok"}]}
    multi = {"messages": CONVERSATIONS[3][:4]}
    pr = {"prompt": "hi", "response": "<think>\nr\n</think>\n\nok"}
    (ids, mask), pr, no_system, (multi_ids, multi_mask) = _tokenise(
        [record, pr, {"messages": record["messages"][1:]}, multi], tok, tmp_path)
    # system: <|im_start|> system\n S <|im_end|> \n = 11; user: <|im_start|> user\n hi <|im_end|> \n = 10;
    # header: <|im_start|> assistant\n = 11; learned: <think> \n r \n </think> \n\n ok <|im_end|> = 10; final \n
    assert mask == [0] * 32 + [1] * 10 + [0]
    assert tok.decode([t for t, m in zip(ids, mask) if m]) == "<think>\nr\n</think>\n\nok<|im_end|>"
    assert tok.decode(ids) == data.render_chat(record["messages"])
    assert pr == no_system
    # multi-turn: only the last assistant turn is learned; the earlier one is context without its reasoning
    assert tok.decode([t for t, m in zip(multi_ids, multi_mask) if m]) == "<think>\nr2\n</think>\n\na2<|im_end|>"


def test_sft_example_matches_official_ids(qwen, hf, tmp_path):
    tok, template = hf
    messages = CONVERSATIONS[2]
    [(ids, mask)] = _tokenise([{"messages": messages}], qwen, tmp_path)
    assert ids == list(tok.apply_chat_template(messages, chat_template=template, tokenize=True, return_dict=False))
    assert qwen.decode([t for t, m in zip(ids, mask) if m]) == "<think>\nthink ü\n</think>\n\nHi! 👋<|im_end|>"


def test_sft_example_errors(demo_set, tmp_path):
    tok = demo_set[2]
    for record, error in (({"prompt": "x"}, "missing field 'response'"), ({"text": "x"}, "missing field 'prompt'"),
                          ({"messages": [{"role": "user", "content": "x"}]}, "field 'messages' must be")):
        with pytest.raises(ValueError, match=f"records.jsonl:2: {error}"):
            _tokenise([{"prompt": "a", "response": "b"}, record], tok, tmp_path)


def test_pack_hand_example():
    t, stats = _packed([([1, 2, 3, 4], [0, 0, 1, 1]), ([5, 6, 7], [0, 1, 1])], seq_len=8)
    assert t["input_ids"].tolist() == [[1, 2, 3, 4, 5, 6, 7, 0]]
    assert t["targets"].tolist() == [[-100, 3, 4, -100, 6, 7, -100, -100]]  # never across the document border
    assert t["doc_ids"].tolist() == [[0, 0, 0, 0, 1, 1, 1, 2]]
    assert t["position_ids"].tolist() == [[0, 1, 2, 3, 0, 1, 2, 0]]
    assert all(v.dtype == torch.long and v.shape == (1, 8) for v in t.values())
    assert stats == {"rows": 1, "docs": 2, "truncated": 0, "skipped": 0, "tokens": 7, "loss_tokens": 4,
                     "pad_fraction": 1 / 8}


def test_pack_overlong_and_best_fit():
    long, short = (list(range(1, 11)), [1] * 10), ([1, 2, 3], [0, 1, 1])
    t, s = _packed([long, short], seq_len=8)
    assert (s["rows"], s["truncated"], s["skipped"]) == (2, 1, 0) and t["input_ids"][0].tolist() == list(range(1, 9))
    assert s["loss_tokens"] == 7 + 2 == int((t["targets"] != -100).sum())  # learned tokens up to the cut
    t, s = _packed([long, short], seq_len=8, overlong="skip")
    assert (s["rows"], s["truncated"], s["skipped"]) == (1, 0, 1)
    with pytest.raises(ValueError, match="no examples"):
        _packed([long], 8, overlong="skip")
    # best fit: 7,6,5,4,3,2,2,1 into rows of 10 fills three rows exactly
    rng = random.Random(0)
    lens = [7, 6, 5, 4, 3, 2, 2, 1]
    exs = [([rng.randint(1, 9) for _ in range(n)], [1] * n) for n in lens]
    t, s = _packed(exs, seq_len=10)
    assert s["rows"] == 3 and s["pad_fraction"] == 0
    assert sorted(_documents(t, 0)) == sorted(e[0] for e in exs)  # every document once, intact


def test_token_store_packs_every_document_and_is_built_once(demo_set, tmp_path, monkeypatch):
    folder, _, tok = demo_set
    src = tmp_path / "sft.jsonl"
    src.write_text("".join((folder / "sft.jsonl").read_text().splitlines(keepends=True)[:60]))
    store = data.build_token_store([src], tok, tmp_path / "tokens")
    assert isinstance(store.ids, np.memmap) and len(store) == 60
    docs = [tok.encode(data.render_chat(r["messages"])) for r in data.read_jsonl(src)]  # one at a time
    assert [store.ids[a:b].tolist() for a, b in zip(store.offsets[:-1], store.offsets[1:])] == docs
    rows = data.PackedRows(store, 100, tok.pad_id)
    got = rows.batch(range(len(rows)))
    assert sorted(_documents(got, tok.pad_id)) == sorted(d[:100] for d in docs)
    assert rows.stats["truncated"] > 0  # some demo examples exceed 100 tokens
    assert rows.stats["loss_tokens"] == int((got["targets"] != -100).sum())
    assert torch.equal(rows.batch([3, 0])["targets"], got["targets"][[3, 0]])  # any rows, in any order
    monkeypatch.setattr(data, "_write_store", lambda *a: pytest.fail("rebuilt an up-to-date store"))
    assert len(data.build_token_store([src], tok, tmp_path / "tokens")) == 60  # reused as it is
    monkeypatch.undo()
    with open(src, "a") as f:  # the source changed: the store is rebuilt
        f.write((folder / "sft.jsonl").read_text().splitlines(keepends=True)[60])
    assert len(data.build_token_store([src], tok, tmp_path / "tokens")) == 61
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sft.jsonl", "tokens"]  # no temp or old folders left


def test_token_store_bad_input_and_crash_keep_the_old_store(demo_set, tmp_path, monkeypatch):
    tok = demo_set[2]
    src = tmp_path / "sft.jsonl"
    src.write_text('{"prompt": "a", "response": "b"}\n{"prompt": "a"}\n{"prompt": "c", "response": "d"}\n')
    with pytest.raises(ValueError, match=f"{src}:2: missing field 'response'"):
        data.build_token_store([src], tok, tmp_path / "tokens")
    assert not (tmp_path / "tokens").exists()
    assert len(data.build_token_store([src], tok, tmp_path / "tokens", skip_bad=True)) == 2
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        data.build_token_store([tmp_path / "nope.jsonl"], tok, tmp_path / "tokens")
    src.write_text('{"prompt": "a", "response": "b"}\n' * 3)

    def crash(*args):
        raise KeyboardInterrupt  # killed mid-build
    monkeypatch.setattr(data, "_write_store", crash)
    with pytest.raises(KeyboardInterrupt):
        data.build_token_store([src], tok, tmp_path / "tokens", skip_bad=True)
    monkeypatch.undo()
    assert len(data.TokenStore.open(tmp_path / "tokens")) == 2  # the previous store is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sft.jsonl", "tokens"]


def test_token_store_waiters_and_racing_builders(demo_set, tmp_path, monkeypatch):
    tok = demo_set[2]
    src = tmp_path / "sft.jsonl"
    src.write_text('{"prompt": "a", "response": "b"}\n{"prompt": "c", "response": "dd"}\n')
    key = data._store_key([src], tok, False)
    threading.Timer(0.3, data.build_token_store, ([src], tok, tmp_path / "tokens")).start()
    assert not data.store_ready(tmp_path / "tokens", key)
    waited = data.build_token_store([src], tok, tmp_path / "tokens", wait=True, poll=0.05)  # once it is published
    assert len(waited) == 2
    other = tmp_path / ".other-builder"  # a second node finishing the same store later: the first one stays
    shutil.copytree(tmp_path / "tokens", other)
    (other / "ids.bin").write_bytes(b"")
    data._publish(other, tmp_path / "tokens", key)
    assert data.store_ready(tmp_path / "tokens", key) and len(data.TokenStore.open(tmp_path / "tokens")) == 2
    assert (tmp_path / "tokens" / "ids.bin").stat().st_size > 0
    # a builder that loses the race inside build_token_store keeps the winner's store and leaves no temp folder
    shutil.rmtree(other)
    data.build_token_store([src], tok, tmp_path / "theirs")
    shutil.rmtree(tmp_path / "tokens")
    write_store = data._write_store

    def racing(*args):  # the other node's rename lands while this one writes
        (tmp_path / "theirs").rename(tmp_path / "tokens")
        return write_store(*args)
    monkeypatch.setattr(data, "_write_store", racing)
    assert len(data.build_token_store([src], tok, tmp_path / "tokens")) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sft.jsonl", "tokens"]


def test_sampler_shards_and_resume():
    shares = [data.ShardedSampler(10, r, 3, seed=5) for r in range(3)]
    epoch0 = [s.next_indices(3) for s in shares]
    assert all(len(set(a) & set(b)) == 0 for a in epoch0 for b in epoch0 if a is not b)
    assert len(set(sum(epoch0, []))) == 9 and all(s.epoch == 1 for s in shares)  # the tenth item dropped
    assert [s.next_indices(3) for s in shares] != epoch0  # a new permutation each epoch
    full = [data.ShardedSampler(12, r, 3, seed=5).next_indices(4) for r in range(3)]
    assert sorted(sum(full, [])) == list(range(12))  # no tail: every item once
    a = data.ShardedSampler(101, 1, 2, seed=3)
    ref = a.next_indices(37) + a.next_indices(60) + a.next_indices(30)  # crosses two epochs
    b = data.ShardedSampler(101, 1, 2, seed=3)
    head = b.next_indices(37) + b.next_indices(60)
    c = data.ShardedSampler(101, 1, 2, seed=3)
    c.load_state_dict(json.loads(json.dumps(b.state_dict())))
    assert head + c.next_indices(30) == ref and c.epoch == 2
    assert len(c.next_indices(50 - 27)) == 23 and c.epoch == 3  # the rest of the epoch
    with pytest.raises(ValueError, match="seed"):
        data.ShardedSampler(101, 1, 2, seed=4).load_state_dict(b.state_dict())


def test_demo_tokenizer_and_config(demo_set):
    folder, _, tok = demo_set
    text = demo.DEMO_CHARS + "<|im_start|>user\n  1+2\t<think>\n\\boxed{3}</think><|im_end|>\n"
    assert tok.decode(tok.encode(text)) == text
    assert len(tok.encode(demo.DEMO_CHARS)) == len(demo.DEMO_CHARS)
    for name, _ in demo.DEMO_ADDED:
        assert len(tok.encode(name)) == 1
    assert tok.decode(tok.encode("é")) == "<unk>" and tok.vocab_size == len(demo.DEMO_CHARS) + 1 + 6
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["vocab_size"] % 16 == 0 and cfg["vocab_size"] >= tok.vocab_size and cfg["eos_token_id"] == tok.eos_id
    transformers = pytest.importorskip("transformers")
    assert transformers.AutoConfig.from_pretrained(folder).model_type == "qwen3"
    theirs = transformers.AutoTokenizer.from_pretrained(folder)
    assert theirs.encode(text, add_special_tokens=False) == tok.encode(text)


def test_math_and_code_generators():
    assert demo.MATH_WIDTH == 3  # the expected traces below have three fixed-width columns
    assert demo.math_trace([347, 589, 12]) == ("0+7+9+2=18\n1+4+8+1=14\n1+3+5+0=09", 948, False)
    assert demo.math_trace([55, 5]) == ("0+5+5=10\n1+5+0=06\n0+0+0=00", 60, True)
    assert demo.math_trace([55, 5], flawed=True) == ("0+5+5=10\n0+5+0=05\n0+0+0=00", 50, True)  # carry lost
    assert demo.math_trace([5, 5], flawed=True)[1:] == (0, True)
    assert demo.code_text(3, -7) == ("Read an integer x, print f(x)=3x-7", "a=3, b=-7", "x=int(input())\nprint(3*x-7)")
    assert demo.code_text(1, 0)[2].endswith("print(x)") and demo.code_text(-1, 5)[2].endswith("print(-x+5)")


def _add(problem: str) -> int:  # "012+5" -> 17 (zero-padded operands are not Python literals)
    return sum(int(x) for x in problem.split("+"))


def _run(program: str, stdin: str) -> str:
    out = []
    exec(program, {"input": lambda: stdin.strip(), "print": lambda v: out.append(f"{v}\n")})
    return "".join(out)


def test_demo_files(demo_set, tmp_path):
    folder, stats, tok = demo_set
    read = {n: data.read_jsonl(folder / f"{n}.jsonl") for n in ("sft", "rl_math", "rl_code", "eval_math", "eval_code")}
    read["rl"] = read.pop("rl_math") + read.pop("rl_code")
    assert len(read["sft"]) == 800 and len(read["rl"]) == 200 and len(read["eval_math"]) == 100
    prompts = {n: {r["messages"][0]["content"] if n == "sft" else r["prompt"][0]["content"] if n == "rl"
                   else r["problem"] for r in recs} for n, recs in read.items()}
    held_out = prompts["eval_math"] | prompts["eval_code"]
    assert not held_out & (prompts["sft"] | prompts["rl"]) and not prompts["sft"] & prompts["rl"]
    for r in read["eval_math"]:
        assert int(r["answer"]) == _add(r["problem"])
    tens = sum(demo.math_trace([int(x) for x in r["problem"].split("+")])[2] for r in read["eval_math"])
    assert 0.3 <= tens / 100 <= 0.5  # the flaw matters on a good share of held-out problems
    for r in read["eval_code"][:20]:
        a, b = _coeffs(r["problem"])
        program = demo.code_text(a, b)[2]
        assert all(_run(program, t["input"]) == t["output"] for t in r["tests"]) and len(r["tests"]) == 4
        assert any(int(t["input"]) < 0 for t in r["tests"])
    rl_math = [r for r in read["rl"] if r["ability"] == "math"]
    assert all(r["data_source"] == demo.MATH_SOURCE and int(r["reward_model"]["ground_truth"]) ==
               _add(r["prompt"][0]["content"]) for r in rl_math)
    gt = json.loads(next(r for r in read["rl"] if r["ability"] == "code")["reward_model"]["ground_truth"])
    assert len(gt["inputs"]) == len(gt["outputs"]) == 4
    # the SFT traces carry the teacher's bug: math answers wrong exactly where flawed, code adds |b| for b < 0
    math = [(r["messages"][0]["content"], r["messages"][1]) for r in read["sft"] if "f(x)" not in str(r)]
    wrong = sum(turn["content"] != f"\\boxed{{{_add(q)}}}" for q, turn in math)
    assert len(math) == 400 and wrong == stats["sft_math_flawed"] and 0.1 < wrong / 400 < 0.4
    code = [(_coeffs(r["messages"][0]["content"]), r["messages"][1]) for r in read["sft"] if "f(x)" in str(r)]
    bugged = [(a, b) for (a, b), turn in code if demo.code_text(a, b)[2] not in turn["content"]]
    assert all(b < 0 and demo.code_text(a, -b)[2] in turn["content"] for (a, b), turn in code if (a, b) in bugged)
    assert len(bugged) == stats["sft_code_flawed"] and 0.15 < len(bugged) / 400 < 0.45
    assert max(len(ids) for ids, _ in _tokenise(read["sft"], tok, tmp_path)) < 160
    demo.write_demo(tmp_path, seed=1, n_sft=400, n_rl=100, n_eval=100)  # seeded: the same bytes again
    assert all((tmp_path / f).read_bytes() == (folder / f).read_bytes() for f in
               ("sft.jsonl", "rl_math.jsonl", "rl_code.jsonl", "eval_code.jsonl", "tokenizer.json",
                "tokenizer_config.json", "config.json"))


def _coeffs(problem: str) -> tuple[int, int]:
    f = problem.split("f(x)=")[1]
    head, _, tail = f.partition("x")
    a = {"": 1, "-": -1}.get(head, None)
    return (int(head) if a is None else a), (int(tail) if tail else 0)
