"""Data for the Klear-Reasoner stack: tokenizer, the Qwen3 chat template, JSONL readers, SFT loss
masks, the token store, best-fit packing and rank sharding (the demo's task lives in demo.py).

- An SFT example learns its LAST assistant turn only (reasoning, answer, `<|im_end|>`): the template
  strips the reasoning of earlier turns, so learning those would teach answering without thinking.
- build_token_store tokenises the files once per node into flat memory-mapped arrays (Klear scale:
  billions of tokens); PackedRows plans best-fit rows from the lengths and builds rows on demand.

Commands:
  python data.py --sft FILE.jsonl --tokenizer DIR --seq-len 8192  # packing statistics of a file
  python data.py --sft FILE.jsonl --tokenizer DIR --cache DIR     # tokenise ahead (--data-cache)
"""
from __future__ import annotations

import argparse
import bisect
import contextlib
import gzip
import hashlib
import itertools
import json
import os
import random
import shutil
import socket
import tempfile
import time
from pathlib import Path

import numpy as np
import tokenizers
import torch

IGNORE_INDEX = -100


class Tokenizer:
    """tokenizers.Tokenizer plus the ids the trainers need; `config`: tokenizer_config.json."""

    def __init__(self, tok: tokenizers.Tokenizer, config: dict, source: str = "tokenizer"):
        self.tok, self.config = tok, config
        self.vocab_size = tok.get_vocab_size(with_added_tokens=True)
        # We train and sample in chat format, so generation stops at <|im_end|> even where the (base
        # model's) config names <|endoftext|> as eos.
        eos = "<|im_end|>" if tok.token_to_id("<|im_end|>") is not None else _content(config.get("eos_token"))
        pad = _content(config.get("pad_token")) or "<|endoftext|>"
        self.eos_id, self.pad_id = tok.token_to_id(eos or ""), tok.token_to_id(pad)
        if self.eos_id is None or self.pad_id is None:
            raise ValueError(f"{source}: no id for eos token {eos!r} or pad token {pad!r}")

    def encode(self, text: str) -> list[int]:
        # special tokens written in the text are matched; no BOS is added
        return self.tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def save(self, folder) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.tok.save(str(folder / "tokenizer.json"))
        (folder / "tokenizer_config.json").write_text(json.dumps(self.config, indent=2, ensure_ascii=False))


def _content(token) -> str | None:
    return token.get("content") if isinstance(token, dict) else token  # or an AddedToken dict


def load_tokenizer(path) -> Tokenizer:
    folder = Path(path)
    if not all((folder / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json")):
        raise FileNotFoundError(f"{folder}: a tokenizer folder needs tokenizer.json and tokenizer_config.json")
    tok = tokenizers.Tokenizer.from_file(str(folder / "tokenizer.json"))
    config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    for i, spec in config.get("added_tokens_decoder", {}).items():  # the files agree on special ids
        if tok.token_to_id(spec["content"]) != int(i):
            raise ValueError(f"{folder}: tokenizer_config.json gives {spec['content']!r} id {i}, "
                             f"tokenizer.json gives {tok.token_to_id(spec['content'])}")
    return Tokenizer(tok, config, source=str(folder))


def render_chat(messages: list[dict], add_generation_prompt: bool = False, enable_thinking: bool = True) -> str:
    """The official Qwen3 chat template (chat_template.jinja) for conversations without tools."""
    text = ""
    if messages and messages[0]["role"] == "system":
        text += "<|im_start|>system\n" + messages[0]["content"] + "<|im_end|>\n"
    # assistant turns before the last real user query lose their reasoning
    queries = [i for i, m in enumerate(messages) if m["role"] == "user" and isinstance(m.get("content"), str)
               and not (m["content"].startswith("<tool_response>") and m["content"].endswith("</tool_response>"))]
    last_query = queries[-1] if queries else len(messages) - 1
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


def _jsonl(path, skip_bad: bool = False, parse=None):
    """(line number, record or parse(record)) of each JSON object of a JSONL (or .gz) file. A bad
    line (malformed, not an object, or parse raising ValueError/KeyError/TypeError) raises an error
    naming file:line, or with skip_bad is skipped and counted in a warning at the end."""
    path, good, bad = Path(path), 0, []
    with (gzip.open if path.suffix == ".gz" else open)(path, "rt", encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                if not isinstance(rec, dict):
                    raise ValueError(f"expected a JSON object, got {type(rec).__name__}")
                out = parse(rec) if parse else rec
            except (ValueError, KeyError, TypeError) as e:  # json.JSONDecodeError is a ValueError
                bad.append(f"{path}:{lineno}: {e}")
                if not skip_bad:
                    raise ValueError(bad[0]) from None
                continue
            good += 1
            yield lineno, out
    if bad:
        print(f"warning: skipped {len(bad)} bad line(s), first: {bad[0]}")
    if not good:
        raise ValueError(f"{path}: no records" + (f" ({len(bad)} bad lines skipped)" if bad else ""))


def read_jsonl(path, skip_bad: bool = False, parse=None) -> list:
    """All records of a JSONL file (see _jsonl)."""
    return [rec for _, rec in _jsonl(path, skip_bad, parse)]


def _sft_texts(record: dict) -> tuple[str, str]:
    """An SFT record -> (its text up to the last assistant turn's generation prompt, the whole)."""
    if "messages" in record:
        messages = record["messages"]
        if not (isinstance(messages, list) and messages and all(isinstance(m, dict) and "role" in m for m in messages)
                and messages[-1]["role"] == "assistant"):
            raise ValueError("field 'messages' must be a list of {role, content} ending with an assistant turn")
    else:
        for field in ("prompt", "response"):
            if not isinstance(record.get(field), str):
                raise ValueError(f"missing field {field!r} (or 'messages')")
        messages = [{"role": "user", "content": record["prompt"]},
                    {"role": "assistant", "content": record["response"]}]
    prompt, full = render_chat(messages[:-1], add_generation_prompt=True), render_chat(messages)
    if not full.startswith(prompt):
        raise ValueError("the conversation before the last assistant turn does not render as its prefix")
    return prompt, full


# ---------------------------------------------------------------------------- SFT data at any scale
STORE_FORMAT = 1  # bump when render_chat or the mask rule changes: older stores are rebuilt


class TokenStore:
    """Tokenised SFT examples as flat arrays: ids (int32), mask (uint8, 1 = learned), offsets
    (n_docs + 1) and n_loss (learned tokens after the first, per document). `open` memory-maps a
    folder written by build_token_store: the ranks of a node share one copy in the page cache."""

    def __init__(self, ids: np.ndarray, mask: np.ndarray, offsets: np.ndarray, n_loss: np.ndarray):
        self.ids, self.mask, self.offsets, self.n_loss = ids, mask, offsets, n_loss

    @classmethod
    def open(cls, folder) -> TokenStore:
        folder = Path(folder)
        offsets, n_loss = np.load(folder / "offsets.npy"), np.load(folder / "n_loss.npy")
        n = int(offsets[-1])
        arrays = [np.memmap(folder / name, dtype, "r", shape=(n,)) if n else np.zeros(0, dtype)
                  for name, dtype in (("ids.bin", np.int32), ("mask.bin", np.uint8))]
        return cls(*arrays, offsets, n_loss)

    def __len__(self) -> int:
        return len(self.offsets) - 1


def _store_key(paths: list, tokenizer: Tokenizer, skip_bad: bool) -> str:
    """What a store is made from: files (path, size, mtime), tokenizer, format and skip_bad."""
    files = [[str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns] for p in map(Path, paths)]
    spec = {"format": STORE_FORMAT, "files": files, "skip_bad": skip_bad, "eos": tokenizer.eos_id,
            "tokenizer": hashlib.sha256(tokenizer.tok.to_str().encode()).hexdigest()}
    return hashlib.sha256(json.dumps(spec).encode()).hexdigest()[:20]


def store_ready(folder, key: str) -> bool:
    meta = Path(folder) / "meta.json"  # written last, in the temp folder that is renamed into place
    return meta.is_file() and json.loads(meta.read_text()).get("key") == key


def _tokenised(path, tokenizer: Tokenizer, skip_bad: bool, batch: int = 256):
    """(ids, loss mask) of each SFT record of a file, tokenised in batches (tokenizers threads
    them). The mask is 1 (learn) on what follows the generation prompt, up to and including
    `<|im_end|>` (not the newline after it): what the model generates after that prompt."""
    records = _jsonl(path, skip_bad, parse=_sft_texts)
    while chunk := list(itertools.islice(records, batch)):
        enc = tokenizer.tok.encode_batch([t for _, texts in chunk for t in texts], add_special_tokens=False)
        for j, (lineno, _) in enumerate(chunk):
            p_ids, ids = enc[2 * j].ids, enc[2 * j + 1].ids
            if ids[:len(p_ids)] != p_ids:
                why = (f"{path}:{lineno}: the conversation before the last assistant turn does not tokenise "
                       "as its prefix")
                if not skip_bad:
                    raise ValueError(why)
                print(f"warning: skipped {why}")
                continue
            assert ids[-2] == tokenizer.eos_id, "the rendered turn ends with <|im_end|>\\n"
            yield ids, [0] * len(p_ids) + [1] * (len(ids) - len(p_ids) - 1) + [0]


def build_token_store(paths: list, tokenizer: Tokenizer, folder, skip_bad: bool = False, wait: bool = False,
                      poll: float = 2.0) -> TokenStore:
    """Tokenise SFT JSONL files once into `folder` and open it; a store of the same files and
    tokenizer is reused. With `wait` (ranks that do not build) only wait until the node's builder
    publishes it. Written into a temp folder renamed into place: a crash leaves no half store, and
    of two racing builders (one per node on a shared file system) the first rename wins."""
    folder, key = Path(folder), _store_key(paths, tokenizer, skip_bad)
    while wait and not store_ready(folder, key):  # the builder of this node prints its progress
        time.sleep(poll)
    if not store_ready(folder, key):
        tmp = folder.parent / f".{folder.name}.tmp-{socket.gethostname()}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            meta = _write_store(paths, tokenizer, tmp, skip_bad)
            (tmp / "meta.json").write_text(json.dumps({"key": key, **meta}, indent=1))
            _publish(tmp, folder, key)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)  # a failed build leaves nothing behind
        print(f"token store {folder}: {json.dumps(meta)}", flush=True)
    return TokenStore.open(folder)


def _write_store(paths: list, tokenizer: Tokenizer, out: Path, skip_bad: bool) -> dict:
    offsets, n_loss, t0, shown = [0], [], time.time(), time.time()
    with open(out / "ids.bin", "wb") as f_ids, open(out / "mask.bin", "wb") as f_mask:
        for path in paths:
            for ids, mask in _tokenised(path, tokenizer, skip_bad):
                f_ids.write(np.asarray(ids, dtype=np.int32).tobytes())
                f_mask.write(bytes(mask))
                offsets.append(offsets[-1] + len(ids))
                n_loss.append(sum(mask[1:]))
                if time.time() - shown > 30:  # long jobs show progress
                    shown = time.time()
                    print(f"tokenising {path}: {len(n_loss)} examples, {offsets[-1]} tokens, "
                          f"{shown - t0:.0f} s", flush=True)
        for f in (f_ids, f_mask):
            f.flush()
            os.fsync(f.fileno())
    np.save(out / "offsets.npy", np.array(offsets, dtype=np.int64))
    np.save(out / "n_loss.npy", np.array(n_loss, dtype=np.int64))
    return {"docs": len(n_loss), "tokens": offsets[-1], "files": [str(p) for p in paths],
            "seconds": round(time.time() - t0, 1)}


def _publish(tmp: Path, folder: Path, key: str) -> None:
    """Rename the complete store `tmp` to `folder`; a stale store there is moved aside first."""
    if folder.exists() and not store_ready(folder, key):
        old = folder.parent / f".{folder.name}.old-{socket.gethostname()}-{os.getpid()}"
        with contextlib.suppress(FileNotFoundError):  # another builder may have moved it already
            os.replace(folder, old)
        shutil.rmtree(old, ignore_errors=True)
    try:
        os.replace(tmp, folder)
    # another builder's store came first: keep it if it is this data (caller drops tmp)
    except OSError:
        if not store_ready(folder, key):
            raise


def _best_fit(lengths: list[int], cap: int) -> list[list[int]]:
    """Best-fit decreasing: longest first, each into the row with the least room that holds it."""
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


class PackedRows:
    """A TokenStore's documents packed best-fit into rows of seq_len tokens (overlong ones truncated
    or skipped); `stats` counts what was packed. Only the plan is held: `batch(rows)` builds
    (len(rows), seq_len) tensors: input_ids, targets (the next token of the same document where it
    is learned, else -100), doc_ids (0, 1, ... per row; padding one more) and position_ids (from 0
    in each document)."""

    def __init__(self, store: TokenStore, seq_len: int, pad_id: int, overlong: str = "truncate"):
        assert overlong in ("truncate", "skip"), overlong
        lengths = np.diff(store.offsets)
        keep = np.nonzero((lengths > 0) & ((lengths <= seq_len) | (overlong == "truncate")))[0]
        if not len(keep):
            raise ValueError(f"pack: no examples left to pack ({len(store)} skipped)")
        cut = np.minimum(lengths[keep], seq_len)
        bins = _best_fit(cut.tolist(), seq_len)
        self.store, self.seq_len, self.pad_id = store, seq_len, pad_id
        self.docs = keep[np.concatenate(bins)]  # store document ids in row order
        self.starts = np.cumsum([0] + [len(b) for b in bins])  # row r: docs[starts[r]:starts[r+1]]
        long = keep[lengths[keep] > seq_len]  # truncated: count their learned tokens up to the cut
        lost = sum(int(store.n_loss[d]) - int(store.mask[store.offsets[d] + 1:store.offsets[d] + seq_len].sum())
                   for d in long)
        tokens = int(cut.sum())
        self.stats = {"rows": len(bins), "docs": len(keep), "truncated": len(long),
                      "skipped": len(store) - len(keep), "tokens": tokens,
                      "loss_tokens": int(store.n_loss[keep].sum()) - lost,
                      "pad_fraction": 1 - tokens / (len(bins) * seq_len)}

    def __len__(self) -> int:
        return len(self.starts) - 1

    def batch(self, rows) -> dict[str, torch.Tensor]:
        rows = [int(r) for r in rows]
        shape, s = (len(rows), self.seq_len), self.store
        t = {"input_ids": np.full(shape, self.pad_id, np.int64), "targets": np.full(shape, IGNORE_INDEX, np.int64),
             "doc_ids": np.zeros(shape, np.int64), "position_ids": np.zeros(shape, np.int64)}
        for i, r in enumerate(rows):
            at, docs = 0, self.docs[self.starts[r]:self.starts[r + 1]]
            for d, doc in enumerate(docs):
                lo = int(s.offsets[doc])
                n = min(int(s.offsets[doc + 1]) - lo, self.seq_len)
                ids, learn = s.ids[lo:lo + n], s.mask[lo:lo + n]
                t["input_ids"][i, at:at + n] = ids
                t["targets"][i, at:at + n - 1] = np.where(learn[1:] > 0, ids[1:], IGNORE_INDEX)
                t["doc_ids"][i, at:at + n], t["position_ids"][i, at:at + n] = d, np.arange(n)
                at += n
            # padding: one more document id, positions from 0
            t["doc_ids"][i, at:], t["position_ids"][i, at:] = len(docs), np.arange(self.seq_len - at)
        return {k: torch.from_numpy(v) for k, v in t.items()}


class ShardedSampler:
    """This rank's indices of a seeded per-epoch permutation of range(n_items), continuing across
    epochs: perm[rank : n_items // world_size * world_size : world_size] (the tail is dropped)."""

    def __init__(self, n_items: int, rank: int, world_size: int, seed: int):
        if n_items < world_size:
            raise ValueError(f"ShardedSampler: {n_items} items cannot be shared by {world_size} ranks")
        assert 0 <= rank < world_size, (rank, world_size)
        self.n_items, self.rank, self.world_size, self.seed = n_items, rank, world_size, seed
        self.per_rank, self.epoch, self.offset, self._share = n_items // world_size, 0, 0, (None, [])

    def next_indices(self, k: int) -> list[int]:
        out = []
        while len(out) < k:
            if self._share[0] != self.epoch:
                order = list(range(self.n_items))
                random.Random(self.seed + self.epoch).shuffle(order)
                self._share = (self.epoch, order[self.rank:self.per_rank * self.world_size:self.world_size])
            take = self._share[1][self.offset:self.offset + k - len(out)]
            out += take
            self.offset += len(take)
            if self.offset == self.per_rank:
                self.epoch, self.offset = self.epoch + 1, 0
        return out

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "offset": self.offset, "n_items": self.n_items,
                "world_size": self.world_size, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        for key, now in self.state_dict().items():
            if key not in ("epoch", "offset") and state[key] != now:
                raise ValueError(f"ShardedSampler: cannot resume, saved {key}={state[key]} but now {now}")
        self.epoch, self.offset = state["epoch"], state["offset"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sft", nargs="+", required=True, help="SFT JSONL file(s): prints their packing statistics")
    p.add_argument("--tokenizer", help="tokenizer folder (default: the first file's folder)")
    p.add_argument("--cache", help="write the token store here (sft.py --data-cache reuses it); default: temporary")
    p.add_argument("--seq-len", type=int, default=8192, help="packed row length")
    p.add_argument("--skip-bad", action="store_true", help="skip and count bad lines instead of failing")
    args = p.parse_args()
    tok = load_tokenizer(args.tokenizer or Path(args.sft[0]).parent)
    with tempfile.TemporaryDirectory() as tmp:
        store = build_token_store(args.sft, tok, args.cache or Path(tmp) / "tokens", args.skip_bad)
        print(json.dumps(PackedRows(store, args.seq_len, tok.pad_id).stats))


if __name__ == "__main__":
    main()
